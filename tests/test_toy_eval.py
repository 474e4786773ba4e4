"""The toy-world evaluation (worldsim.train.evaluate) on a tiny random DiT and an untrained toy codec."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from worldsim.checkpoints import load_model
from worldsim.checkpoints.worldsim_format import save_worldsim
from worldsim.codecs.toy_codec import ToyCodec, ToyCodecConfig
from worldsim.model.config import ControlConfig, DiTConfig
from worldsim.model.dit import CausalWanDiT
from worldsim.train.evaluate import (REFERENCES, EvalConfig, ModelSpec, bootstrap_interval, drift_differences,
                                     drift_ratios, episode_ratio, evaluate, format_drift, format_prompted,
                                     format_switches, format_table, held_out_episodes, theme_start)
from worldsim.world import AXES, KEYS, theme_for_prompt
from worldsim.world.metrics import KINDS, OUTCOMES
from worldsim.world.themes import THEMES

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread (conftest)


TINY = DiTConfig(dim=32, ffn_dim=64, freq_dim=32, text_dim=16, num_heads=4, num_layers=2, in_dim=8, out_dim=8,
                 text_len=8, control=ControlConfig(keys=KEYS, axes=AXES, frames_per_latent=1))


def tiny_files(root: Path, control: ControlConfig | None = TINY.control) -> tuple[Path, Path]:
    """A random DiT (non-zero head and control output, so frames respond) and an untrained 8-channel codec."""
    torch.manual_seed(0)
    model = CausalWanDiT(TINY.with_control(control))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    codec = ToyCodec(ToyCodecConfig(latent_channels=8, channels=(8, 8, 8)))
    return save_worldsim(model, root / "dit.safetensors"), codec.save(root / "codec.safetensors")


def test_evaluate_structure_and_references(tmp_path):
    dit, codec = tiny_files(tmp_path)
    cfg = EvalConfig(episodes=2, chunks=2, seed=1)  # seed 1: the episodes turn, so motion rows are scored
    out = tmp_path / "eval"
    results = evaluate([ModelSpec.parse(f"tiny={dit}:2")], codec, cfg, out=out, progress=False)

    assert set(results["references"]) == set(REFERENCES)
    model = results["models"]["tiny"]
    assert model["steps"] == 2 and len(model["timesteps"]) == 2 and model["seconds_per_chunk"] > 0
    for r in [model, *results["references"].values()]:
        assert set(r["motion"]) == {*KINDS, "all"} and set(r["counterfactual"]) == set(KINDS)
        for c in r["counterfactual"].values():
            assert c["pairs"] == sum(c[o] for o in OUTCOMES) and c["detected"] == c["pairs"] - c["no_motion"]
        for key in ("drift_moments", "drift_histogram", "mse", "ssim"):
            assert len(r[key]["per_chunk"]) == cfg.chunks
            assert all(math.isfinite(v) for v in (r[key]["first"], r[key]["early"], r[key]["late"],
                                                  *r[key]["per_chunk"]))
    assert all(math.isfinite(v) for v in model["psnr"]["per_chunk"])
    refs = results["references"]
    truth, frozen = refs["ground_truth"], refs["frozen"]
    assert truth["motion"]["all"]["rows"] > 0
    assert truth["motion"]["all"]["agreement"] > frozen["motion"]["all"]["agreement"]
    assert truth["drift_moments"]["late"] == 0 and frozen["drift_moments"]["late"] > 0
    for r in [model, *refs.values()]:  # 2 frames: one window of EvalConfig's 6
        theme = r["drift_theme"]
        assert theme["window_frames"] == 6 and theme["per_window"] == [theme["first"]] == [theme["last"]]
        assert theme["episodes"] == 2 and len(theme["per_episode"]) == 2
        assert 0 < theme["first"] < 1 and theme["ratio"] == 1 and theme["ratio_interval"] == [1, 1]
    assert truth["ssim"]["first"] == 1.0 and truth["psnr"]["first"] is None  # identical frames
    assert truth["sharpness"]["first"] == truth["sharpness"]["late"] == 1.0
    assert all(0 < r["sharpness"][k] < 5 for r in [model, *refs.values()] for k in ("first", "early", "late"))
    assert frozen["ssim"]["first"] < 1.0
    turn = truth["counterfactual"]["turn"]
    assert turn["detected"] > 0 and turn["score"] > 0.9  # the world itself follows mirrored controls
    assert all(c["detected"] == 0 for c in frozen["counterfactual"].values())
    for c in refs["ignores_controls"]["counterfactual"].values():  # identical pairs: never opposite
        assert c["correct"] == c["reversed"] == 0 and c["score"] in (None, 0.5)
    elsewhere = refs["elsewhere"]  # the world's pair swapped: every outcome of the ground truth's, reversed
    for kind, c in elsewhere["counterfactual"].items():
        assert (c["correct"], c["reversed"]) == (truth["counterfactual"][kind]["reversed"],
                                                 truth["counterfactual"][kind]["correct"])
    assert elsewhere["counterfactual"]["turn"]["score"] < 0.1 and elsewhere["drift_moments"]["late"] > 0

    assert json.loads((out / "results.json").read_text())["models"]["tiny"]["steps"] == 2
    strip = Image.open(out / "strip_tiny.png")
    # per episode, 7 scored frames, every 3rd: truth, generated, mirrored truth, generated under mirrored controls
    assert strip.size == (64 * 3, 2 * (4 * 64) + 4)
    table = format_table(results)
    assert all(name in table for name in ("tiny", "(frozen)", "(mismatched)", "(shuffled)"))
    assert set(results["drift_differences"]["drift_theme"]) == {"tiny - (ground_truth)", "tiny - (elsewhere)",
                                                                "(elsewhere) - (ground_truth)"}
    # the ground truth's paired drift has no ratio; the world elsewhere's has one (it turns away in these episodes)
    assert set(results["drift_differences"]["drift_moments"]) == {"tiny - (elsewhere)"}
    assert truth["drift_moments"]["ratio"] is None and len(model["drift_moments"]["per_episode"]) == 2
    assert model["drift_moments"]["ratio"] == pytest.approx(model["drift_moments"]["late"] /
                                                            model["drift_moments"]["early"])
    assert "tiny - (ground_truth)" in format_drift(results) and "(frozen)" in format_drift(results)

    again = evaluate([ModelSpec.parse(f"tiny={dit}:2")], codec, cfg, progress=False)
    assert again["models"]["tiny"]["mse"] == model["mse"]  # deterministic for a seed
    assert again["models"]["tiny"]["counterfactual"] == model["counterfactual"]


def test_mismatched_controls_score_each_video_once_for_fidelity_and_drift(tmp_path):
    """The mismatched reference scores each episode's video under several other episodes' controls; its frames
    (the ground truth's) count once, so its drift intervals are the ground truth's, not narrowed by copies."""
    dit, codec = tiny_files(tmp_path)
    results = evaluate([ModelSpec.parse(f"tiny={dit}:1")], codec, EvalConfig(episodes=3, chunks=1, seed=1, switches=0),
                       progress=False)
    truth, mismatched = results["references"]["ground_truth"], results["references"]["mismatched"]
    assert mismatched["drift_theme"]["per_episode"] == truth["drift_theme"]["per_episode"]
    assert len(truth["drift_theme"]["per_episode"]) == 3
    assert mismatched["counterfactual"]["turn"]["pairs"] == 2 * truth["counterfactual"]["turn"]["pairs"]


def test_paired_drift_differences_separate_what_the_models_own_intervals_do_not():
    """Episodes differ a lot (the spread both models share), the second model ends 10% further from the theme in
    every one: its own interval overlaps the first's, the paired difference's excludes 0; a model identical to the
    first differs by exactly 0."""
    rng = np.random.default_rng(0)
    first = rng.uniform(0.2, 0.6, 12)
    last = first * rng.uniform(0.8, 1.6, 12)
    a = np.stack([first, last], axis=1)
    b = np.stack([first, 1.1 * last], axis=1)
    assert bootstrap_interval(lambda idx: drift_ratios(a, idx), 1) is None
    models = {name: {"drift_theme": episode_ratio(x)} for name, x in (("a", a), ("b", b), ("same", a))}
    for x in (a, b):
        lo, hi = bootstrap_interval(lambda idx: drift_ratios(x, idx), len(x))
        assert lo < x[:, 1].mean() / x[:, 0].mean() < hi
    own_a, own_b = (models[name]["drift_theme"]["ratio_interval"] for name in ("a", "b"))
    assert own_b[0] < own_a[1]  # the models' own intervals overlap
    diffs = drift_differences(models)
    assert set(diffs) == {"b - a", "same - a", "same - b"}
    d = diffs["b - a"]
    assert d["ratio_difference"] == pytest.approx(0.1 * a[:, 1].mean() / a[:, 0].mean())
    assert 0 < d["interval"][0] < d["ratio_difference"] < d["interval"][1]
    assert diffs["same - a"]["ratio_difference"] == 0 and diffs["same - a"]["interval"] == [0, 0]
    assert diffs["same - b"]["interval"][1] < 0


def test_a_drift_ratio_with_some_episodes_at_zero_early_is_the_ratio_of_the_means():
    """A divergent reference starts at 0 in the episodes whose first frames it matches (idle ones): its ratio is
    still defined by the means, and resamples of only those episodes are left out of the interval; all zero (the
    ground truth's paired drift) has no ratio."""
    x = np.array([[0.0, 4.0], [2.0, 6.0], [1.0, 5.0], [0.0, 3.0]])
    r = episode_ratio(x)
    assert r["ratio"] == pytest.approx(18 / 3) and all(np.isfinite(r["ratio_interval"]))
    assert r["ratio_interval"][0] < r["ratio"] < r["ratio_interval"][1]
    assert episode_ratio(np.array([[0.0, 0.0], [0.0, 0.0]]))["ratio"] is None


def test_held_out_episodes_without_switches_keep_one_theme():
    """--switches 0: every held-out episode keeps its opening theme, so each counts for the theme drift."""
    themes = [{theme_for_prompt(p) for p in ep.prompts}
              for ep in held_out_episodes(EvalConfig(episodes=12, chunks=12, switches=0), 1)]
    assert all(len(t) == 1 for t in themes) and len(set.union(*themes)) > 1
    switching = held_out_episodes(EvalConfig(episodes=12, chunks=12), 1)
    assert any(len({theme_for_prompt(p) for p in ep.prompts}) > 1 for ep in switching)


def test_a_model_that_ignores_controls_scores_chance(tmp_path):
    """The control module zeroed (as a fresh checkpoint's): the true and mirrored rollouts are the same frames, so
    no pair moves in opposite directions and the score is exactly 0.5 wherever motion is detected."""
    dit, codec = tiny_files(tmp_path)
    model = load_model(dit)
    with torch.no_grad():
        model.control_embedding.mlp[2].weight.zero_()
        model.control_embedding.mlp[2].bias.zero_()
    deaf = save_worldsim(model, tmp_path / "deaf.safetensors")
    cfg = EvalConfig(episodes=1, chunks=2, seed=1)
    results = evaluate([ModelSpec.parse(f"deaf={deaf}:2")], codec, cfg, out=tmp_path / "eval", progress=False)
    assert "mismatched" not in results["references"]  # one episode: no other controls to mismatch with
    strip = np.asarray(Image.open(tmp_path / "eval" / "strip_deaf.png"))
    np.testing.assert_array_equal(strip[64:128], strip[192:256])  # generated == generated under mirrored controls
    counts = results["models"]["deaf"]["counterfactual"]
    assert counts["turn"]["pairs"] > 0
    for c in counts.values():
        assert c["correct"] == c["reversed"] == 0 and c["score"] in (None, 0.5)


def test_chunks_of_another_size_than_trained(tmp_path):
    """chunk_frames (toy_eval --chunk-latents, as the daemon's): the model generates chunks of that many latent
    frames, and the episodes' context and scored spans follow (2 chunks of 1: 3 scored frames, one strip column)."""
    dit, codec = tiny_files(tmp_path)
    cfg = EvalConfig(episodes=1, chunks=2, seed=1, chunk_frames=1)
    results = evaluate([ModelSpec.parse(f"tiny={dit}:2")], codec, cfg, out=tmp_path / "eval", progress=False)
    assert results["config"]["chunk_frames"] == 1 and len(results["models"]["tiny"]["mse"]["per_chunk"]) == 2
    assert Image.open(tmp_path / "eval" / "strip_tiny.png").size == (64, 4 * 64)  # trained chunks of 3: 3 columns


def test_the_from_a_prompt_probe_scores_every_theme_against_its_look(tmp_path):
    """Streams from each theme's prompt alone; the references bracket the metric (the world elsewhere is far closer
    to a theme's look than the other themes are), and a random model's frames are farther than the world's."""
    dit, codec = tiny_files(tmp_path)
    cfg = EvalConfig(episodes=1, chunks=2, seed=1, prompt_frames=7, prompt_streams=2)  # whole chunks of 3: 6
    results = evaluate([ModelSpec.parse(f"tiny={dit}:2")], codec, cfg, out=tmp_path / "eval", progress=False)
    probe = results["from_prompt"]
    assert probe["themes"] == list(THEMES) and probe["frames"] == 6 and probe["streams"] == 2
    refs = {name: r["mean"] for name, r in probe["references"].items()}
    assert set(refs) == {"world", "codec", "other_themes"}
    assert refs["world"] < 0.3 < 0.6 < refs["other_themes"]
    model = probe["models"]["tiny"]
    assert set(model["per_theme"]) == set(THEMES) and len(model["per_chunk"]) == 2
    assert all(0 <= v <= 1 for t in model["per_theme"].values() for v in t.values())
    assert model["early"] > refs["world"]
    grid = model["grid"]
    assert grid["period"] == 16 and set(grid["per_theme"]) == set(THEMES)  # tiny: patch 2 x codec stride 8
    assert abs(grid["world"]) < 0.6 and abs(grid["codec"]) < 0.6  # the world has no token grid, nor its codec
    strip = Image.open(tmp_path / "eval" / "prompt_tiny.png")
    assert strip.size == (6 * 64, len(THEMES) * 64 + (len(THEMES) - 1) * 4)  # one row per theme, every frame
    table = format_prompted(results)
    assert "tiny" in table and all(t in table for t in THEMES) and "token grid" in table
    start = results["from_start"]  # the same streams, each continuing from a frame of its theme's world
    assert start["from_frame"] and not probe["from_frame"] and start["references"] == probe["references"]
    assert set(start["models"]["tiny"]["per_theme"]) == set(THEMES) and len(start["models"]["tiny"]["per_chunk"]) == 2
    assert Image.open(tmp_path / "eval" / "start_tiny.png").size == strip.size
    assert format_prompted(results, "from_start").startswith("from a start frame of the theme (6 frames")
    starts = [theme_start(t, 10) for t in THEMES]
    assert all(f.shape == (64, 64, 3) for f in starts) and len({f.tobytes() for f in starts}) == len(THEMES)


def test_the_theme_switch_probe_scores_each_mode_against_the_new_and_the_old_theme(tmp_path):
    """From each theme's start frame, a switch to the next theme by each mode, scored against the new and the old
    theme's look; a strip row per mode."""
    dit, codec = tiny_files(tmp_path)
    cfg = EvalConfig(episodes=1, chunks=2, seed=1, switch_frames=3)
    results = evaluate([ModelSpec.parse(f"tiny={dit}:2")], codec, cfg, out=tmp_path / "eval", progress=False)
    probe = results["theme_switch"]
    assert probe["pairs"][0] == ["forest", "desert"] and len(probe["pairs"]) == len(THEMES)
    assert probe["after"] == 3 and probe["before"] == 48
    modes = probe["models"]["tiny"]
    assert set(modes) == {"soft", "recache", "cut"}
    assert all(0 <= m[k][span] <= 1 for m in modes.values() for k in ("to", "from") for span in ("early", "late"))
    assert Image.open(tmp_path / "eval" / "switch_tiny.png").size[1] == 3 * 64 + 2 * 4  # one row per mode
    assert "recache" in format_switches(results) and "forest->desert" in format_switches(results)


def test_model_spec_and_schema_check(tmp_path):
    assert ModelSpec.parse("s=runs/a.safetensors:4") == ModelSpec("s", Path("runs/a.safetensors"), 4)
    assert ModelSpec.parse("t=C:/x.safetensors").steps == 4
    with pytest.raises(ValueError, match="NAME=PATH"):
        ModelSpec.parse("runs/a.safetensors")
    dit, codec = tiny_files(tmp_path, ControlConfig(keys=("W",), frames_per_latent=1))
    with pytest.raises(ValueError, match="control schema"):
        evaluate([ModelSpec("bad", dit)], codec, EvalConfig(episodes=1, chunks=2), progress=False)


def test_a_model_package_is_evaluated_with_its_own_sampler(tmp_path):
    """A package (worldsim/model_package.py) evaluates exactly as its DiT does with the package's sampler."""
    from worldsim.model_package import write_package

    dit, codec = tiny_files(tmp_path)
    h = w = 64  # the toy world's frames; the codec's stride 8 gives 8x8 latents
    write_package(tmp_path, dit=dit, codec={"kind": "toy", "path": str(codec)},
                  text_encoder={"kind": "hashing", "text_len": TINY.text_len, "text_dim": TINY.text_dim},
                  geometry={"height": h, "width": w, "fps": 16, "latent_shape": [8, h // 8, w // 8],
                            "spatial_stride": 8, "temporal_stride": 1},
                  sampler={"shift": 3.0, "denoising_steps": [1000, 500]}, cache={}, provenance={})
    cfg = EvalConfig(episodes=1, chunks=2, seed=1, shift=3.0)
    from_package = evaluate([ModelSpec.parse(f"pkg={tmp_path}")], codec, cfg, progress=False)["models"]["pkg"]
    from_dit = evaluate([ModelSpec.parse(f"dit={dit}:2")], codec, cfg, progress=False)["models"]["dit"]
    assert from_package["timesteps"] == from_dit["timesteps"] and from_package["mse"] == from_dit["mse"]
    other = tmp_path / "other_codec.safetensors"
    other.write_bytes(codec.read_bytes()[:-4] + b"\0\0\0\0")  # a different codec file (its last weight changed)
    with pytest.raises(ValueError, match="the package's codec .* is not the evaluation's"):
        evaluate([ModelSpec.parse(f"pkg={tmp_path}")], other, cfg, progress=False)
