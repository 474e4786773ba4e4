"""The toy world: determinism, state round trips, controls, themes, datasets, metrics, the CLI and the player."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from worldsim.dataset import load_dataset, read_info
from worldsim.world import KEYS, THEMES, World, key_row, theme_for_prompt
from worldsim.world.episodes import EpisodeConfig, generate_episode, themes_per_frame, write_dataset
from worldsim.world.metrics import (colour_look, look_distance, motion_agreement, motion_breakdown, sharpness,
                                    stat_drift, token_grid)

NO_KEYS = np.zeros(len(KEYS), np.float32)


def _controls(n: int, pressed=(), dx: float = 0.0, dy: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    return np.repeat(key_row(pressed)[None], n, 0), np.tile(np.array([dx, dy], np.float32), (n, 1))


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def episode():
    return generate_episode(1, EpisodeConfig(frames=120))


def test_deterministic_for_a_seed(world):
    keys, axes = _controls(12, ("W", "D"), dx=0.4)
    a = world.rollout(world.start_state(7, "snow"), keys, axes)
    b = World().rollout(World().start_state(7, "snow"), keys, axes)
    assert a.frames.dtype == np.uint8 and a.frames.shape == (13, 64, 64, 3)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert a.states == b.states
    c = world.rollout(world.start_state(8, "snow"), keys, axes)
    assert not np.array_equal(a.frames, c.frames)


def test_set_state_and_render_reproduce_frames(world):
    world.reset(seed=2, theme="desert")
    frames, states = [], []
    for t in range(10):
        frames.append(world.step(key_row(["W"]), [0.3 * np.sin(t), 0.1]))
        states.append(world.state)
    for t in (0, 4, 9):
        np.testing.assert_array_equal(world.render(states[t]), frames[t])
    other = World()
    np.testing.assert_array_equal(other.set_state(states[4]), frames[4])
    np.testing.assert_array_equal(other.step(key_row(["W"]), [0.3 * np.sin(5), 0.1]), frames[5])


def test_controls_move_the_state_the_right_way(world):
    s0 = world.start_state(1, "forest")
    walk = world.rollout(s0, *_controls(5, ("W",))).states
    step = np.array([walk[1].x - walk[0].x, walk[1].y - walk[0].y])
    heading = np.array([np.cos(s0.heading), np.sin(s0.heading)])
    assert step @ heading == pytest.approx(world.config.physics.walk, rel=1e-6)  # forward along the heading
    run = world.rollout(s0, *_controls(1, ("W", "Shift"))).states[1]
    assert np.hypot(run.x - s0.x, run.y - s0.y) == pytest.approx(2 * np.linalg.norm(step))
    back = world.rollout(s0, *_controls(1, ("S",))).states[1]
    assert np.array([back.x - s0.x, back.y - s0.y]) @ heading < 0
    right = world.rollout(s0, *_controls(1, ("D",))).states[1]
    assert np.array([right.x - s0.x, right.y - s0.y]) @ np.array([-heading[1], heading[0]]) > 0
    turned = world.rollout(s0, *_controls(1, dx=0.5)).states[1]
    assert (turned.heading - s0.heading) % (2 * np.pi) == pytest.approx(0.5 * world.config.physics.turn)
    looked = world.rollout(s0, *_controls(1, dy=0.5)).states[1]
    assert looked.pitch < 0  # mouse moved down: the view tilts down
    jumped = world.rollout(s0, *_controls(3, ("Space",))).states
    assert world.eye_height(jumped[2]) > world.eye_height(s0)
    idle = world.rollout(s0, *_controls(3)).frames
    assert (idle[1:] == idle[0]).all()


def test_turning_and_walking_change_the_view(world):
    s0 = world.start_state(4, "forest")
    turn = world.rollout(s0, *_controls(1, dx=1.0)).frames
    walk = world.rollout(s0, *_controls(1, ("W",))).frames
    for frames in (turn, walk):
        assert np.abs(frames[1].astype(int) - frames[0]).mean() > 2


def test_themes_differ_and_follow_prompts(world):
    s0 = world.start_state(0, "forest")
    means = {t: world.render(replace(s0, theme=t)).reshape(-1, 3).mean(0) for t in THEMES}
    names = list(means)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(means[a] - means[b]).sum() > 30, (a, b)
    assert theme_for_prompt("a snowy field at noon") == "snow"
    assert theme_for_prompt("a volcano erupting") == "lava"
    assert theme_for_prompt("hello there") == "forest"  # no keyword: the default
    for name, theme in THEMES.items():
        assert all(theme_for_prompt(p) == name for p in theme.prompts)
    with pytest.raises(ValueError, match="unknown theme"):
        world.set_state(replace(s0, theme="moon"))


def test_episode_plan_is_varied(episode):
    keys, axes = episode.keys, episode.axes
    assert not keys[0].any() and not axes[0].any()
    idle = ~keys[1:].any(1) & (axes[1:] == 0).all(1)
    assert idle.any() and (~idle).any()
    assert (np.abs(axes[:, 0]) > 0.1).any()
    assert len({tuple(k) for k in keys}) >= 3
    starts = [p["from_frame"] for p in episode.prompts]
    assert starts[0] == 0 and all(s % 3 == 0 for s in starts)
    themes = themes_per_frame(episode.prompts, len(episode.frames))
    assert [s.theme for s in episode.states] == themes


def test_dataset_round_trip(tmp_path, world):
    cfg = EpisodeConfig(frames=40, chunk_frames=3, switches=3)
    dirs = write_dataset(tmp_path / "ds", 2, cfg, seed=5)
    info = read_info(tmp_path / "ds")
    assert info["control"] == {"keys": list(KEYS), "axes": ["mouse_dx", "mouse_dy"], "embedding_dim": 0,
                               "frames_per_latent": 1}
    episodes = load_dataset(tmp_path / "ds")
    assert len(episodes) == 2 == len(dirs)
    for ep, directory in zip(episodes, dirs):
        assert ep.frames.shape == (40, 64, 64, 3)
        assert not ep.control_present[0] and ep.control_present[1:].all()
        np.testing.assert_array_equal(ep.chunk, np.arange(40) // 3)
        assert ep.prompts[0]["mode"] == "open" and all(p["from_frame"] == 3 * p["chunk"] for p in ep.prompts)
        # the ground truth replays from the stored start state, controls and prompts
        start = world.start_state(ep.meta["world"]["start"]["seed"], ep.meta["world"]["start"]["theme"])
        assert ep.meta["world"]["start"]["x"] == start.x
        truth = world.rollout(start, ep.keys[1:], ep.axes[1:], themes=themes_per_frame(ep.prompts, 40)[1:])
        np.testing.assert_array_equal(truth.frames, ep.frames)
        saved = np.load(directory / "world.npz")
        np.testing.assert_allclose(saved["poses"], truth.poses)
    # the same seed generates the same data
    again = load_dataset(write_dataset(tmp_path / "again", 2, cfg, seed=5)[0].parent)
    for a, b in zip(episodes, again):
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.keys, b.keys)


def test_cli_dataset_and_headless_play(tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run([sys.executable, "-m", "worldsim", "world", "dataset", "--episodes", "2", "--out", str(out),
                          "--frames-per-episode", "12", "--seed", "1", "--size", "32", "--workers", "2", "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    episodes = load_dataset(out)
    assert [ep.frames.shape for ep in episodes] == [(12, 32, 32, 3)] * 2
    from worldsim.cli import main

    assert main(["world", "play", "--headless", "--frames", "5", "--fps", "0", "--scale", "2"]) == 0


def test_cli_dataset_control_mix(tmp_path, capsys):
    """--turn 0 --idle 0: keys are never held while turning (only unstuck turns and key-less segments turn)."""
    from worldsim.cli import main

    out = tmp_path / "walks"
    assert main(["world", "dataset", "--episodes", "3", "--out", str(out), "--frames-per-episode", "48", "--size", "32",
                 "--turn", "0", "--idle", "0", "--quiet"]) == 0
    keys = np.concatenate([ep.keys for ep in load_dataset(out)])
    axes = np.concatenate([ep.axes for ep in load_dataset(out)])
    moving = keys[:, :4].max(axis=1) > 0.5
    assert moving.mean() > 0.5 and not np.any(moving & (np.abs(axes[:, 0]) > 0))
    assert main(["world", "dataset", "--episodes", "1", "--out", str(tmp_path / "bad"), "--turn", "1.5"]) == 2
    assert "--turn is a probability in [0, 1], got 1.5" in capsys.readouterr().err
    assert main(["world", "dataset", "--episodes", "1", "--out", str(tmp_path / "bad"), "--backward", "-0.1"]) == 2
    assert "--backward is a probability in [0, 1], got -0.1" in capsys.readouterr().err


def test_episode_backward_sets_the_walking_direction():
    """--backward 0 never walks back, 1 never forwards; the built-in mix (None) walks forwards more than back."""
    def walks(cfg: EpisodeConfig) -> tuple[float, float]:
        keys = np.concatenate([generate_episode(seed, cfg).keys for seed in range(6)])
        return keys[:, KEYS.index("W")].sum(), keys[:, KEYS.index("S")].sum()

    for backward in (0.0, 1.0):
        forward, back = walks(EpisodeConfig(frames=96, backward=backward))
        assert (forward == 0) == (backward == 1.0) and (back == 0) == (backward == 0.0)
    forward, back = walks(EpisodeConfig(frames=96))
    assert forward > 1.5 * back > 0


def test_motion_agreement_high_on_truth_low_on_shuffled_or_still(episode):
    frames, keys, axes = episode.frames, episode.keys, episode.axes
    counts = motion_breakdown(frames, keys, axes)
    assert counts["turn"][1] >= 10 and counts["move"][1] >= 10
    assert counts["turn"][0] / counts["turn"][1] > 0.9
    assert motion_agreement(frames, keys, axes) > 0.85
    shuffled = frames[np.random.default_rng(0).permutation(len(frames))]
    assert motion_agreement(shuffled, keys, axes) < 0.4
    still = np.repeat(frames[:1], len(frames), 0)
    assert motion_agreement(still, keys, axes) == 0.0


def test_stat_drift(world):
    frames = world.rollout(world.start_state(0, "desert"), *_controls(59, ("W",), dx=0.2)).frames
    assert stat_drift(frames, frames, paired=True).moments.max() == 0
    faded = (frames * np.linspace(1, 0.3, len(frames))[:, None, None, None]).astype(np.uint8)
    drift = stat_drift(faded)
    assert drift.moments[-1] > 20 > drift.moments[0] and drift.histogram[-1] > drift.histogram[0]
    assert drift.final(8)[0] > stat_drift(frames).final(8)[0]
    with pytest.raises(ValueError, match="paired"):
        stat_drift(frames, frames[:10], paired=True)


def test_look_distance_keeps_other_views_of_the_world_and_sees_fading(world):
    """A rollout that shows another part of the same world than the ground truth drifts from it when paired frame
    by frame, but stays as close to its theme's look as the ground truth; a fading video leaves the look."""
    look = colour_look(np.concatenate([world.rollout(world.start_state(seed, "forest"), *_controls(23, dx=0.5)).frames
                                       for seed in (10, 11, 12)]))
    state = world.start_state(0, "forest")
    truth = world.rollout(state, *_controls(35, ("W",), dx=0.3)).frames  # 0.18 from the look over the last 6
    other = world.rollout(state, *_controls(35, ("S",), dx=-0.3)).frames  # 0.16
    assert stat_drift(other, truth, paired=True).histogram[-6:].mean() > 0.2  # 0.24
    assert abs(look_distance(other[-6:], look).mean() - look_distance(truth[-6:], look).mean()) < 0.05
    faded = (truth * np.linspace(1, 0.5, len(truth))[:, None, None, None]).astype(np.uint8)
    distance = look_distance(faded, look)
    assert distance[-6:].mean() > 0.6 > 0.3 > distance[:6].mean()  # 0.79, 0.22
    assert look_distance(truth, colour_look(truth)).mean() < distance[-6:].mean() / 2


def test_token_grid_sees_token_size_tiles_that_histograms_miss(world):
    """The world's frames hardly repeat at a token's period (16 px); the same frames with token-size blobs laid
    over them do, strongly, while their colour histogram stays close to the originals'."""
    frames = world.rollout(world.start_state(0, "forest"), *_controls(23, (), dx=0.5)).frames  # [24, 64, 64, 3]
    assert abs(token_grid(frames, 16).mean()) < 0.6
    y, x = np.mgrid[:64, :64]
    blobs = np.cos(2 * np.pi * x / 16) * np.cos(2 * np.pi * y / 16)  # one bump per 16x16 token, alternating
    tiled = np.clip(frames * (1 + 0.25 * blobs[None, :, :, None]), 0, 255).astype(np.uint8)
    assert token_grid(tiled, 16).mean() > token_grid(frames, 16).mean() + 1
    assert stat_drift(tiled, frames, paired=True).histogram.mean() < 0.3
    assert np.all(token_grid(np.full((2, 64, 64, 3), 90, np.uint8), 16) == 0)  # flat: no power anywhere
    with pytest.raises(ValueError, match="16-pixel period"):
        token_grid(frames[:, :40], 16)


def test_sharpness_falls_with_blur_and_not_with_a_whole_pixel_move(world):
    """A 3x3 box blur of the world's frames keeps a fraction of their detail; the same frames moved by 4 pixels
    (wrapped around: one seam) keep it; a flat frame has none."""
    frames = world.rollout(world.start_state(0, "desert"), *_controls(7, (), dx=0.5)).frames  # [8, 64, 64, 3]
    x = frames.astype(np.float32)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(padded[:, i:i + 64, j:j + 64] for i in range(3) for j in range(3)) / 9
    moved = np.roll(frames, 4, axis=2)
    detail = sharpness(frames)
    assert np.all(detail > 0.02)
    assert np.all(sharpness(blurred.round().astype(np.uint8)) < 0.8 * detail)
    np.testing.assert_allclose(sharpness(moved), detail, rtol=0.05)
    assert np.all(sharpness(np.full((2, 64, 64, 3), 90, np.uint8)) == 0)


def test_world_never_imports_torch():
    code = ("import sys, worldsim.world, worldsim.world.episodes, worldsim.world.metrics, worldsim.world.play; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
