"""Counterfactual controllability and SSIM (worldsim.world.metrics) on the toy world's own ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from worldsim.world import AXES, KEYS, World, key_row
from worldsim.world.episodes import EpisodeConfig, episode_seeds, generate_episode, themes_per_frame
from worldsim.world.metrics import (KINDS, OUTCOMES, SIGNS, counterfactual_counts, counterfactual_summary,
                                    mirror_controls, mirror_plan, ssim)

CONTEXT = 3  # frames before the scored span, as a chunk of context in the evaluation


@pytest.fixture(scope="module")
def pairs() -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]]:
    """Held-out-like episodes: (true frames, mirrored frames, keys, axes, pitch) of the span after the context,
    the mirrored rollout played by the world from the same state under the mirrored controls."""
    cfg, world, out = EpisodeConfig(frames=63), World(), []
    for seed in episode_seeds(10_000, 6):
        ep = generate_episode(seed, cfg)
        keys, axes = mirror_controls(ep.keys, ep.axes)
        themes = themes_per_frame(ep.prompts, cfg.frames)
        mirrored = world.rollout(ep.states[CONTEXT - 1], keys[CONTEXT:], axes[CONTEXT:], themes=themes[CONTEXT:])
        first = CONTEXT - 1
        np.testing.assert_array_equal(mirrored.frames[0], ep.frames[first])  # the same context frame
        out.append((ep.frames[first:], mirrored.frames, ep.keys[first:], ep.axes[first:], ep.states[first].pitch))
    return out


def pooled(pairs, swap: bool = False, same: bool = False, controls_of=None) -> dict[str, dict]:
    """Counterfactual summaries per kind over the episodes: the true pairs, or with the two rollouts swapped, or
    the true rollout twice (a model that ignores controls), or scored against another episode's controls."""
    total = {k: np.zeros((len(SIGNS), len(OUTCOMES)), np.int64) for k in KINDS}
    for i, (frames, mirrored, keys, axes, pitch) in enumerate(pairs):
        a, b = (mirrored, frames) if swap else (frames, frames if same else mirrored)
        if controls_of is not None:
            _, _, keys, axes, pitch = pairs[controls_of(i)]
        for kind, c in counterfactual_counts(a, b, keys, axes, pitch=pitch).items():
            total[kind] += c
    return {k: counterfactual_summary(c) for k, c in total.items()}


def test_mirror_controls_swaps_opposite_keys_and_negates_the_mouse():
    keys = np.stack([key_row(k) for k in (["W"], ["A", "Shift"], ["S", "D", "Space"], [])])  # [4, 6]
    axes = np.array([[0.5, -0.2], [0.0, 0.3], [-1.0, 0.0], [0.1, 0.1]], np.float32)
    mk, ma = mirror_controls(keys, axes)
    expected = np.stack([key_row(k) for k in (["S"], ["D", "Shift"], ["W", "A", "Space"], [])])
    np.testing.assert_array_equal(mk, expected)
    np.testing.assert_array_equal(ma, -axes)
    np.testing.assert_array_equal(mirror_controls(mk, ma)[0], keys)  # an involution
    with pytest.raises(ValueError, match="mirror_controls needs keys"):
        mirror_controls(keys[:, :4], axes)
    # another schema: partners that exist swap, others stay; axes flip by name
    assert mirror_plan(("W", "A", "S", "D"), ("mouse_dx",)) == ([2, 3, 0, 1], [-1.0])
    assert mirror_plan(("W", "Jump"), ("stick_x", "mouse_dy")) == ([0, 1], [1.0, -1.0])
    assert KEYS == ("W", "A", "S", "D", "Space", "Shift") and AXES == ("mouse_dx", "mouse_dy")


def test_ground_truth_scores_near_one_and_swapped_rollouts_zero(pairs):
    truth, swapped = pooled(pairs), pooled(pairs, swap=True)
    for kind in KINDS:
        t, s = truth[kind], swapped[kind]
        assert t["pairs"] >= 10 and t["detection_rate"] > 0.6, (kind, t)
        assert t["score"] > 0.95 and t["correct"] >= 0.95 * t["detected"], (kind, t)
        assert s["score"] < 0.05 and s["reversed"] >= 0.95 * s["detected"] > 0, (kind, s)  # rollouts swapped
        assert t["pairs"] == sum(t[o] for o in OUTCOMES)


def test_a_model_that_ignores_controls_scores_exactly_chance(pairs):
    """Identical rollouts (what a model that ignores the controls gives from one context and one noise): every
    detected pair moves the same way both times, so it scores 0.5 whatever its motion is, even the world's own
    (looks included: the mirrored view's horizon would differ, but both rollouts are read with the true one)."""
    assert sum(np.abs(axes[:, 1]).max() > 0.1 for *_, axes, _ in pairs) >= 2  # episodes that look up or down
    for kind, c in pooled(pairs, same=True).items():
        assert c["detected"] >= 5, (kind, c)
        assert c["same"] == c["detected"] and c["correct"] == c["reversed"] == 0
        assert c["score"] == 0.5 and set(c["score_by_sign"].values()) <= {0.5, None}


def test_scores_on_mismatched_controls_stay_near_chance(pairs):
    """Ground-truth pairs scored against another episode's controls: the motions are opposite but unrelated to
    the command, so no kind scores near the ground truth's 1 (few independent segments: a wide margin)."""
    mismatched = pooled(pairs, controls_of=lambda i: (i + 1) % len(pairs))
    for kind, c in mismatched.items():
        assert c["detected"] > 0 and c["score"] < 0.8, (kind, c)


def test_counterfactual_summary_balances_the_two_signs():
    counts = np.array([[9, 0, 0, 1],  # true command +1: 9 correct, 1 without motion
                       [0, 1, 2, 0]])  # true command -1: 1 reversed, 2 same
    c = counterfactual_summary(counts)
    assert c["pairs"] == 13 and c["detected"] == 12 and c["no_motion"] == 1
    assert c["score_by_sign"] == {"+": 1.0, "-": pytest.approx(1 / 3)}
    assert c["score"] == pytest.approx((1 + 1 / 3) / 2)  # not the pooled (9 + 1) / 12
    empty = counterfactual_summary(np.zeros((2, 4), int))
    assert empty["score"] is None and empty["detection_rate"] is None


def test_ssim():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    np.testing.assert_allclose(ssim(frames, frames), 1.0)
    noisy = [np.clip(frames + rng.normal(0, s, frames.shape), 0, 255).astype(np.uint8) for s in (5, 20, 60)]
    scores = [ssim(n, frames).mean() for n in noisy]
    assert 1 > scores[0] > scores[1] > scores[2] > 0
    # flat frames: SSIM reduces to the luminance term (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 100.0, 140.0, (0.01 * 255) ** 2
    flat = ssim(np.full((1, 16, 16, 3), a, np.uint8), np.full((1, 16, 16, 3), b, np.uint8))
    np.testing.assert_allclose(flat, (2 * a * b + c1) / (a * a + b * b + c1))
    with pytest.raises(ValueError, match="one shape"):
        ssim(frames, frames[:2])
    with pytest.raises(ValueError, match="smaller than"):
        ssim(frames[:, :8, :8], frames[:, :8, :8])
