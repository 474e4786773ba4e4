"""The reference flow (worldsim/model/reference_flow.py): a fresh or idle flow moves nothing, ``worldsim train
flow`` learns how keys move the picture, its file round-trips and refuses bad ones, a package serves it (the
session's reference moves only while something is held) and the teacher trains on moved references."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import randomize
from test_train_control_gap import KEYS, OFFSETS, RECIPES, SIZE, random_codec, write_squares
from worldsim.checkpoints.base import CheckpointError
from worldsim.checkpoints.safetensors_io import read_metadata, read_tensors, save_tensors
from worldsim.cli import main
from worldsim.codecs.toy_codec import ToyCodec
from worldsim.dataset import DatasetWriter, episode_dirs, load_episode
from worldsim.model.config import ControlConfig
from worldsim.model.control import Controls
from worldsim.model.reference_flow import ReferenceFlow, ReferenceFlowConfig
from worldsim.model_package import PackageError, read_package
from worldsim.runtime import RuntimeOptions, build_runtime
from worldsim.train.calibrate import calibrate_gains
from worldsim.train.config import load_recipe
from worldsim.train.data import TrainData
from worldsim.train.stages.flow import frame_pairs
from worldsim.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread (conftest)

CONTROL = ControlConfig(keys=KEYS, axes=("mouse_dx",), frames_per_latent=1)
DEFAULT = Path(__file__).resolve().parents[1] / "worldsim" / "default_model"


def held(key: str | None, rows: int = 1, axis: float = 0.0) -> Controls:
    """Controls of ``rows`` frames, one per batch row: ``key`` held (None: nothing)."""
    keys = torch.tensor([[float(k == key) for k in KEYS]]).expand(rows, -1)
    return Controls(keys=keys[:, None, None], axes=torch.full((rows, 1, 1, 1), axis))


SHIFT = 2  # pixels a key moves the texture per frame


def write_textures(root: Path, episodes: int = 24, frames: int = 12, seed: int = 0) -> np.ndarray:
    """Episodes of a smooth random texture that each frame's key rolls SHIFT pixels (W up, A left, S down, D
    right; frame 0 and one frame in five: nothing held), as a view moves in a game."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(SIZE) * SIZE
    low = (np.abs(f)[:, None] <= 3) & (np.abs(f)[None, :] <= 3)  # periodic, smooth: shifts are unambiguous
    writer = DatasetWriter(root, {"keys": list(KEYS), "axes": ["mouse_dx"], "embedding_dim": 0, "frames_per_latent": 1},
                           fps=16.0, height=SIZE, width=SIZE)
    out = []
    for e in range(episodes):
        noise = np.fft.ifft2(np.fft.fft2(rng.normal(size=(SIZE, SIZE, 3)), axes=(0, 1)) * low[..., None], axes=(0, 1))
        frame = (127.5 + 50 * noise.real / noise.real.std()).clip(0, 255).astype(np.uint8)
        ep = writer.new_episode(seed=e)
        ep.add_prompt(0, 0, "waves", "open")
        for i in range(frames):
            key = KEYS[rng.integers(len(KEYS))] if i and rng.random() > 0.2 else None
            if key is not None:
                frame = np.roll(frame, tuple(SHIFT * d for d in OFFSETS[key]), (0, 1))
            control = None if i == 0 else {"keys": np.array([k == key for k in KEYS], np.float32),
                                           "axes": np.zeros(1, np.float32)}
            ep.add_frame(frame, i, i // 3, control)
            out.append(frame)
        ep.close()
    return np.stack(out)


def trained_flow(root: Path, steps: int = 200) -> Path:
    """``worldsim train flow`` on the rolling-texture world: OUT/final/flow.safetensors."""
    write_textures(root / "data")
    recipe = load_recipe(RECIPES / "flow_micro.yaml", [
        f"data.path={root / 'data'}", f"out={root / 'flow'}", f"max_steps={steps}", f"val_every={steps}",
        f"ckpt_every={steps}", "sample_every=0", "log_every=50", "data.batch_size=8", "data.val_episodes=4",
        "val_batches=4"])
    Trainer("flow", recipe).run()
    return root / "flow" / "final" / "flow.safetensors"


def test_a_fresh_flow_and_an_idle_row_move_nothing():
    torch.manual_seed(0)
    flow = ReferenceFlow(ReferenceFlowConfig(bases=4, grid=4, hidden=8), CONTROL)
    frames = torch.rand(2, 3, 16, 16)
    u, gate = flow.features(held("W", rows=2))
    assert torch.allclose(flow(frames, u, gate), frames, atol=1e-6)  # zero-initialised: no flow
    refs = torch.randn(2, 4, 1, 4, 4)
    assert flow.move_latents(refs, held("W", rows=2), codec=None) is refs  # nothing moves: the codec is not touched
    torch.nn.init.normal_(flow.mix[2].weight)
    torch.nn.init.normal_(flow.mix[2].bias)
    assert flow.weights(flow.features(held("W"))[0]).abs().amax() > 0
    idle = flow.weights(flow.features(held(None))[0])
    assert torch.equal(idle, torch.zeros_like(idle))  # nothing held: exactly no motion, whatever the weights
    assert flow.move_latents(refs, held(None, rows=2), codec=None) is refs
    absent = Controls(keys=held("W", rows=2).keys, axes=held("W", rows=2).axes, present=torch.zeros(2, 1, dtype=bool))
    assert flow.move_latents(refs, absent, codec=None) is refs  # controls marked absent (dropped for guidance)
    assert flow.move_latents(torch.zeros_like(refs), held("W", rows=2), codec=None).abs().sum() == 0  # no reference yet
    with pytest.raises(ValueError, match="per-frame codec"):
        ReferenceFlow(ReferenceFlowConfig(), ControlConfig(keys=KEYS, frames_per_latent=4))


def test_frame_batches_carry_each_frames_control_row(tmp_path):
    write_squares(tmp_path / "data", moving=True, episodes=3, frames=8)
    data = TrainData(tmp_path / "data", kind="frames", batch_size=2, seed=0, clip_frames=4)
    batch = data.batch(0)
    assert batch.controls.keys.shape == (2, 4, 1, 4) and batch.controls.present.shape == (2, 4)
    for b, (e, s) in enumerate(data.train_clips[i] for i in data._perms[0][:2].tolist()):
        ep = load_episode(episode_dirs(tmp_path / "data")[e])
        assert np.array_equal(batch.controls.keys[b, :, 0].numpy(), ep.keys[s:s + 4])
        assert np.array_equal(batch.controls.present[b].numpy(), ep.control_present[s:s + 4])


def test_the_flow_learns_how_each_key_moves_the_picture(tmp_path):
    """Where a key rolls the frame by 2 px, 200 steps of the flow stage predict the next frame far better than
    copying the last one, and each key's flow points its own way (W up, A left, S down, D right) by about 2 px."""
    path = trained_flow(tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "flow" / "metrics.jsonl").read_text().splitlines()]
    final = next(r for r in rows if "val/mse" in r)
    assert final["val/mse"] < 0.5 * final["val/copy_mse"], final
    flow = ReferenceFlow.load(path).requires_grad_(False)
    for key, (dy, dx) in {"W": (-1, 0), "A": (0, -1), "S": (1, 0), "D": (0, 1)}.items():
        mean = flow.flow(flow.features(held(key))[0], SIZE, SIZE)[0].mean(dim=(1, 2))  # (x, y) pixels
        assert float(mean[0]) * dx > 2 * abs(float(mean[1])) if dx else float(mean[1]) * dy > 2 * abs(float(mean[0]))
        assert abs(float(mean[0] if dx else mean[1])) > 1.5, (key, mean)
    again = load_recipe(RECIPES / "flow_micro.yaml", [f"data.path={tmp_path / 'data'}", f"out={tmp_path / 'again'}",
                                                      "data.val_episodes=4", "val_batches=4"])
    val = Trainer("flow", again, init=path).validate()  # --init continues from the file
    assert val["val/mse"] < 0.5 * val["val/copy_mse"], val
    other = ReferenceFlow(ReferenceFlowConfig(), ControlConfig(keys=("X",), frames_per_latent=1))
    with pytest.raises(ValueError, match="reads controls"):
        Trainer("flow", again, init=other.save(tmp_path / "other.safetensors"))


def test_through_codec_trains_the_flow_on_the_served_round_trip_with_the_codec_frozen(tmp_path):
    """stage.through_codec: the pair's frames are taken through the codec, the moved frame through it again (the
    loss the served path sees), the gradient reaches the flow only; without data.codec it says what to set."""
    write_textures(tmp_path / "data", episodes=6)
    codec_path = DEFAULT / "codec.safetensors"  # a trained codec: its round trip keeps some texture
    overrides = [f"data.path={tmp_path / 'data'}", f"out={tmp_path / 'flow'}", "stage.through_codec=true",
                 "max_steps=2", "sample_every=0", "data.val_episodes=2"]
    with pytest.raises(ValueError, match="set data.codec"):
        Trainer("flow", load_recipe(RECIPES / "flow_micro.yaml", overrides))
    trainer = Trainer("flow", load_recipe(RECIPES / "flow_micro.yaml", [*overrides, f"data.codec={codec_path}"]))
    stage, batch = trainer.stage, trainer.data.batch(0)
    randomize(stage.unwrap("flow"))  # a fresh flow moves nothing
    raw_before, raw_after, controls = frame_pairs(batch)
    before, after, moved = stage._moved(batch)
    codec = stage.codec
    flow = stage.unwrap("flow")
    with torch.no_grad():
        torch.testing.assert_close(before, codec(raw_before).clamp(0, 1))
        torch.testing.assert_close(after, codec(raw_after).clamp(0, 1))
        assert float(after.std(dim=(2, 3)).mean()) > 0.01  # not flat: an idle row passing unchanged is a real check
        expected = codec(flow(before, flow.features(controls)[0])).clamp(0, 1)
    torch.testing.assert_close(moved.detach(), expected)
    assert (moved.detach() - flow(raw_before, flow.features(controls)[0]).detach()).abs().amax() > 1e-3
    codec_before = {k: v.clone() for k, v in codec.state_dict().items()}
    flow_before = {k: v.clone() for k, v in flow.state_dict().items()}
    trainer.run()
    assert all(torch.equal(v, codec.state_dict()[k]) for k, v in codec_before.items())
    assert any(not torch.equal(v, flow.state_dict()[k]) for k, v in flow_before.items())

    # streamed: every frame after the clip's first is the previous moved frame moved again; idle rows pass as they are
    with pytest.raises(ValueError, match="needs stage.through_codec"):
        Trainer("flow", load_recipe(RECIPES / "flow_micro.yaml",
                                    [overrides[0], f"out={tmp_path / 'other'}", "stage.streamed=true"]))
    stage.opts.streamed = True
    before, after, moved = stage._streamed(batch)
    b, t = batch.frames.shape[:2]
    assert before.shape == after.shape == moved.shape == (b * (t - 1), *batch.frames.shape[2:])
    before, after, moved = (x.detach().unflatten(0, (b, t - 1)) for x in (before, after, moved))
    with torch.no_grad():
        torch.testing.assert_close(after, codec(batch.frames[:, 1:].flatten(0, 1)).clamp(0, 1).unflatten(0, (b, t - 1)))
        torch.testing.assert_close(before[:, 1:], moved[:, :-1])  # each step starts from the last moved frame
        keys = batch.controls.keys[:, 1:, 0]  # [B, T-1, K]
        for i, j in zip(*torch.where(keys.sum(-1) == 0)):  # nothing held: the frame passes unchanged
            torch.testing.assert_close(moved[i, j], before[i, j])
        i, j = (int(x[0]) for x in torch.where(keys.sum(-1) > 0))
        c = batch.controls
        one = Controls(*(None if x is None else x[i:i + 1, j + 1:j + 2] for x in (c.keys, c.axes, c.embedding)))
        torch.testing.assert_close(moved[i, j], codec(flow(before[i, j][None], flow.features(one)[0]))[0].clamp(0, 1))


def test_flow_files_round_trip_and_bad_ones_are_named(tmp_path):
    torch.manual_seed(0)
    flow = ReferenceFlow(ReferenceFlowConfig(bases=3, grid=4, hidden=8), CONTROL)
    torch.nn.init.normal_(flow.mix[2].weight)
    path = flow.save(tmp_path / "flow.safetensors")
    back = ReferenceFlow.load(path)
    assert back.cfg == flow.cfg and back.control == flow.control
    assert all(torch.equal(a, b) for a, b in zip(flow.state_dict().values(), back.state_dict().values()))
    (tmp_path / "bad.safetensors").write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        ReferenceFlow.load(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="not a worldsim reference flow"):
        ReferenceFlow.load(random_codec(np.zeros((2, 16, 16, 3), np.uint8), tmp_path / "codec.safetensors"))


def test_gains_scale_each_held_controls_flow_and_version_1_files_load_with_gains_1(tmp_path):
    torch.manual_seed(0)
    flow = ReferenceFlow(ReferenceFlowConfig(bases=3, grid=4, hidden=8), CONTROL)
    torch.nn.init.normal_(flow.mix[2].weight)
    def weights(key: str | None, axis: float = 0.0) -> torch.Tensor:
        return flow.weights(flow.features(held(key, axis=axis))[0])

    walk, turn, both = weights("W"), weights(None, 1.0), weights("W", 1.0)
    flow.gain[KEYS.index("W")] = 2.0
    assert torch.allclose(weights("W"), 2 * walk)
    assert torch.equal(weights(None, 1.0), turn)  # mouse_dx keeps gain 1
    assert torch.allclose(weights("W", 1.0), 1.5 * both)  # W and the mouse held alike: the mean of their gains
    idle = flow.weights(flow.features(held(None))[0])
    assert torch.equal(idle, torch.zeros_like(idle))
    back = ReferenceFlow.load(flow.save(tmp_path / "v2.safetensors", calibration={"gains": {"W": 2.0}}))
    assert torch.equal(back.gain, flow.gain)
    assert json.loads(read_metadata(tmp_path / "v2.safetensors")["calibration"]) == {"gains": {"W": 2.0}}
    meta = {**read_metadata(tmp_path / "v2.safetensors"), "version": "1"}  # a file written before gains existed
    save_tensors({k: v for k, v in read_tensors(tmp_path / "v2.safetensors").items() if k != "gain"},
                 tmp_path / "v1.safetensors", meta)
    old = ReferenceFlow.load(tmp_path / "v1.safetensors")
    assert torch.equal(old.gain, torch.ones_like(old.gain))
    assert torch.equal(old.weights(old.features(held("W"))[0]), walk)
    save_tensors(read_tensors(tmp_path / "v2.safetensors"), tmp_path / "v9.safetensors", {**meta, "version": "9"})
    with pytest.raises(CheckpointError, match="reads versions 1, 2"):
        ReferenceFlow.load(tmp_path / "v9.safetensors")


def package_with_flow(tmp_path: Path, flow: Path) -> Path:
    """The default model package with ``flow`` as its reference flow."""
    pkg = tmp_path / "pkg"
    shutil.copytree(DEFAULT, pkg)
    shutil.copyfile(flow, pkg / "reference_flow.safetensors")
    manifest = json.loads((pkg / "worldsim-model.json").read_text())
    (pkg / "worldsim-model.json").write_text(json.dumps({**manifest, "reference_flow": "reference_flow.safetensors"}))
    return pkg


def test_a_package_serves_its_flow_and_refuses_a_mismatched_one(tmp_path):
    """The runtime moves the session's reference by the package's flow: while W is held the stream differs from
    the same package served without the flow, idle it is the same; a flow of other controls or a missing file is
    named."""
    default = build_runtime(RuntimeOptions(model=str(DEFAULT)))
    torch.manual_seed(0)
    control = default.model.cfg.control
    flow = ReferenceFlow(ReferenceFlowConfig(bases=2, grid=4, hidden=8), control)
    with torch.no_grad():
        flow.fields.copy_(torch.tensor([[[[0.0]], [[4.0]]], [[[4.0]], [[0.0]]]]).expand(2, 2, 4, 4))
        flow.mix[2].weight.normal_()
    pkg = package_with_flow(tmp_path, flow.save(tmp_path / "flow.safetensors"))
    rt, plain = (build_runtime(RuntimeOptions(model=str(pkg), reference_flow=on)) for on in (True, False))
    assert rt.move_reference is not None and plain.move_reference is None
    embeds = rt.encode_prompts(["a forest"])["a forest"]

    def stream(runtime, key: int | None) -> torch.Tensor:
        s = runtime.new_session(embeds, seed=3)
        keys = torch.zeros(1, 1, 1, len(control.keys))
        if key is not None:
            keys[..., key] = 1
        c = Controls(keys=keys, axes=torch.zeros(1, 1, 1, len(control.axes)))
        return torch.cat([s.step(c) for _ in range(3)], dim=2)

    assert torch.equal(stream(rt, None), stream(plain, None))
    assert not torch.allclose(stream(rt, 0), stream(plain, 0), atol=1e-3)
    manifest = json.loads((pkg / "worldsim-model.json").read_text())
    (pkg / "worldsim-model.json").write_text(json.dumps({**manifest, "reference_flow": "missing.safetensors"}))
    with pytest.raises(PackageError, match="'reference_flow' names .*missing.safetensors, which does not exist"):
        read_package(pkg)
    other = ReferenceFlow(ReferenceFlowConfig(bases=2, grid=4, hidden=8), CONTROL)
    (pkg / "worldsim-model.json").write_text(json.dumps(manifest))
    other.save(pkg / "reference_flow.safetensors")
    with pytest.raises(PackageError, match="the reference flow reads controls"):
        build_runtime(RuntimeOptions(model=str(pkg)))


def test_the_teacher_trains_on_moved_references_and_packages_the_flow(tmp_path):
    """stage.reference_flow: each reference the DiT reads is the flow's move of the previous frame (here by 4 px,
    so it differs from the plain one wherever a key is held), in the stage's samples too, and ``package: true`` puts
    the flow in the package."""
    flow_path = trained_flow(tmp_path, steps=100)
    frames = write_textures(tmp_path / "data2", episodes=6, seed=1)
    codec = random_codec(frames, tmp_path / "codec.safetensors")
    preset = yaml.safe_load((RECIPES.parent / "model" / "tiny.yaml").read_text())
    (tmp_path / "model.yaml").write_text(yaml.safe_dump({**preset, "chunk_frames": 1, "frame_reference": True}))
    recipe = load_recipe(RECIPES / "teacher_micro.yaml", [
        f"data.path={tmp_path / 'data2'}", f"data.codec={codec}", f"out={tmp_path / 'teacher'}",
        f"model={tmp_path / 'model.yaml'}",
        "data.clip_chunks=4", "data.val_episodes=2", "max_steps=2", "package=true",
        f"stage.reference_flow={flow_path}"])
    trainer = Trainer("teacher", recipe)
    stage = trainer.stage
    batch = trainer.data.batch(0)
    moved = stage.referenced(batch, batch.latents).controls.reference
    randomize(stage.unwrap("teacher"))  # a fresh DiT's zero-initialised head and reference embedding hide the inputs
    torch.manual_seed(0)
    sample = stage.sample(batch)  # streamed as served: each reference moved by the flow
    stage.reference_flow = None
    plain = stage.referenced(batch, batch.latents).controls.reference
    torch.manual_seed(0)
    assert not torch.allclose(sample, stage.sample(batch), atol=1e-3)
    assert torch.equal(moved[:, :, 0], plain[:, :, 0]) and moved[:, :, 0].abs().sum() == 0  # no reference yet
    assert (moved[:, :, 1:] - plain[:, :, 1:]).abs().amax() > 0.1
    stage.reference_flow = ReferenceFlow.load(flow_path)
    trainer.run()
    pkg = read_package(tmp_path / "teacher" / "final")
    assert pkg.reference_flow is not None and pkg.reference_flow.read_bytes() == flow_path.read_bytes()
    with pytest.raises(ValueError, match="reads controls"):
        other = ReferenceFlow(ReferenceFlowConfig(bases=2, grid=4, hidden=8),
                              ControlConfig(keys=("X",), frames_per_latent=1))
        Trainer("teacher", load_recipe(RECIPES / "teacher_micro.yaml", [
            f"data.path={tmp_path / 'data2'}", f"data.codec={codec}", f"out={tmp_path / 'bad'}",
            f"model={tmp_path / 'model.yaml'}",
            "data.val_episodes=2", f"stage.reference_flow={other.save(tmp_path / 'other.safetensors')}"]))


def test_calibration_brings_a_slowed_flows_stream_to_the_worlds_speed(tmp_path, capsys):
    flow = ReferenceFlow.load(DEFAULT / "reference_flow.safetensors")
    codec = ToyCodec.load(DEFAULT / "codec.safetensors")
    keys = flow.control.keys
    untouched = [keys.index("Space"), keys.index("Shift"), len(keys) + flow.control.axes.index("mouse_dy")]
    flow.gain[:] = 0.5  # half speed: the stream lags the world under every command
    report = calibrate_gains(flow, codec, episodes=2, frames=6, rounds=2)
    before, after = ({(s["control"], s["mirrored"]): s for s in report[k]} for k in ("before", "after"))
    for command in (("W", False), ("S", True), ("D", False), ("A", True)):
        b, a = before[command], after[command]
        assert abs(a["stream"] - a["world"]) < 0.5 * abs(b["stream"] - b["world"]), (command, b, a)
    assert report["gains"]["W"] > 0.5 and report["gains"]["S"] > 0.5
    assert torch.equal(flow.gain[untouched], torch.full((3,), 0.5))  # no held command measures these

    out = tmp_path / "calibrated.safetensors"
    args = ["world", "calibrate-flow", "--flow", str(DEFAULT / "reference_flow.safetensors"), "--codec",
            str(DEFAULT / "codec.safetensors"), "--out", str(out), "--episodes", "1", "--frames", "4", "--rounds", "1"]
    assert main(args) == 0
    assert "round 1:" in capsys.readouterr().out
    assert json.loads(read_metadata(out)["calibration"])["rounds"] == 1
    assert main([*args[:-2], "--rounds", "0"]) == 2
    assert main([*args[:2], "--flow", str(tmp_path / "missing.safetensors"), *args[4:]]) == 1
    assert "missing.safetensors" in capsys.readouterr().err
    other = ReferenceFlow(ReferenceFlowConfig(bases=2, grid=4, hidden=4), CONTROL).save(tmp_path / "other.safetensors")
    assert main([*args[:2], "--flow", str(other), *args[4:]]) == 1  # not the toy world's controls
    assert "calibrate a flow trained on toy-world data" in capsys.readouterr().err
