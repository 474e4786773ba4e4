"""The teacher's control gap (validation loss under mirrored controls, relative to the true ones) on a synthetic
world whose frame is a pure function of the control: 0 before training, large once the controls are learned."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from worldsim.codecs.toy_codec import ToyCodec, ToyCodecConfig
from worldsim.dataset import DatasetWriter
from worldsim.sampling.schedule import FlowMatchSchedule
from worldsim.train.config import load_recipe
from worldsim.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread (conftest)

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "train"
KEYS = ("W", "A", "S", "D")
SIZE, SQUARE, SHIFT = 16, 4, 4  # frame and square sizes; the square sits SHIFT pixels off centre
OFFSETS = {"W": (-1, 0), "A": (0, -1), "S": (1, 0), "D": (0, 1)}  # W up, A left, S down, D right


def keyed_square(key: str | None) -> np.ndarray:
    """The frame [SIZE, SIZE, 3] uint8 for one control: a bright square SHIFT pixels from the centre towards the
    key's direction (centred with no key), on a dark background."""
    dy, dx = OFFSETS.get(key, (0, 0))
    y, x = SIZE // 2 - SQUARE // 2 + dy * SHIFT, SIZE // 2 - SQUARE // 2 + dx * SHIFT
    frame = np.full((SIZE, SIZE, 3), 30, np.uint8)
    frame[y:y + SQUARE, x:x + SQUARE] = 230
    return frame


def write_squares(root: Path, moving: bool, episodes: int = 64, frames: int = 24, seed: int = 0) -> np.ndarray:
    """Episodes of random W/A/S/D presses, one per frame (frame 0: none); returns every frame [N, H, W, 3].

    moving=False: each frame is a pure function of its key (:func:`keyed_square`). moving=True: each frame is the
    previous one rolled SHIFT pixels by its key (W up, A left, S down, D right; wrapping), from a random start: the
    key says how the next frame differs from the last, as in a game."""
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(root, {"keys": list(KEYS), "axes": ["mouse_dx"], "embedding_dim": 0, "frames_per_latent": 1},
                           fps=16.0, height=SIZE, width=SIZE)
    out = []
    for e in range(episodes):
        ep = writer.new_episode(seed=e)
        ep.add_prompt(0, 0, "a square", "open")
        frame = np.roll(keyed_square(None), tuple(rng.integers(0, SIZE, 2)), (0, 1))
        for i in range(frames):
            key = KEYS[rng.integers(len(KEYS))] if i else None
            if moving and key is not None:
                frame = np.roll(frame, tuple(SHIFT * d for d in OFFSETS[key]), (0, 1))
            elif not moving:
                frame = keyed_square(key)
            out.append(frame)
            control = None if key is None else {"keys": np.array([k == key for k in KEYS], np.float32),
                                                "axes": rng.uniform(-1, 1, 1).astype(np.float32)}
            ep.add_frame(frame, i, i // 3, control)
        ep.close()
    return np.stack(out)


def random_codec(frames: np.ndarray, path: Path) -> Path:
    """An untrained 4-channel toy codec (stride 4: 16x16 -> 4x4 latents) normalised on the frames: its latents are
    a fixed function of the image, which is all the teacher needs here."""
    torch.manual_seed(0)
    codec = ToyCodec(ToyCodecConfig(latent_channels=4, channels=(8, 8)))
    with torch.no_grad():
        codec.set_latent_stats(codec.encode_images(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255))
    return codec.save(path)


def test_control_gap_is_zero_untrained_and_large_once_controls_are_learned(tmp_path):
    frames = write_squares(tmp_path / "data", moving=False)
    codec = random_codec(frames, tmp_path / "codec.safetensors")
    steps = 400
    cfg = load_recipe(RECIPES / "teacher_micro.yaml", [
        f"data.path={tmp_path / 'data'}", f"data.codec={codec}", f"out={tmp_path / 'out'}", f"max_steps={steps}",
        "val_every=100", "log_every=100", f"ckpt_every={steps}", "data.val_episodes=2", "val_batches=4"])
    trainer = Trainer("teacher", cfg)

    before = trainer.validate()
    assert before["val/control_gap"] == 0.0  # the zero-initialised control module: mirrored controls change nothing
    assert before["val/loss_mirrored"] == before["val/loss"]
    assert trainer.validate() == before  # the same noise and timesteps every time

    trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    gap = {r["step"]: r["val/control_gap"] for r in rows if "val/control_gap" in r}
    assert sorted(gap) == [100, 200, 300, 400]
    # a model that draws the square where the key puts it: mirrored keys put it on the other side
    assert gap[400] > 2.0, gap  # measured 6.6-14.7 over four seeds of data and weights
    assert all(r["val/loss_mirrored"] > r["val/loss"] for r in rows if r["step"] == steps and "val/loss" in r)


@pytest.mark.parametrize("frame_reference", [True, False])
def test_motion_relative_to_the_last_frame_is_learned_with_the_reference_frame(tmp_path, frame_reference):
    """Where the key moves the last frame (not a fixed picture), the teacher learns the controls only when it sees
    the last clean frame in its input channels (frame_reference, chunks of one frame); through attention alone
    the gap stays at noise level."""
    frames = write_squares(tmp_path / "data", moving=True)
    codec = random_codec(frames, tmp_path / "codec.safetensors")
    preset = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny.yaml").read_text())
    preset.update(chunk_frames=1, frame_reference=frame_reference)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(preset))
    steps = 1200
    cfg = load_recipe(RECIPES / "teacher_micro.yaml", [
        f"model={tmp_path / 'model.yaml'}", f"data.path={tmp_path / 'data'}", f"data.codec={codec}",
        f"out={tmp_path / 'out'}", f"max_steps={steps}", "data.clip_chunks=6", "data.batch_size=16",
        "stage.clean_context_prob=1.0", "val_every=300", "log_every=300", f"ckpt_every={steps}",
        "data.val_episodes=2", "val_batches=4"])
    Trainer("teacher", cfg).run()
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    gap = {r["step"]: r["val/control_gap"] for r in rows if "val/control_gap" in r}
    if frame_reference:
        assert gap[steps] > 0.1, gap  # measured 0.22-0.69 over four seeds of data and weights
    else:
        assert abs(gap[steps]) < 0.05, gap  # measured 0.0001



def test_context_noise_relabels_and_renoises_the_history_the_model_sees(tmp_path):
    """With context_noise_max, a sample's clean context frames and every reference frame are the data re-noised to
    one level in [0, max] (the context frames labelled with it) and carry no loss; without it they are the data."""
    frames = write_squares(tmp_path / "data", moving=True, episodes=8, frames=12)
    codec = random_codec(frames, tmp_path / "codec.safetensors")
    preset = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny.yaml").read_text())
    preset.update(chunk_frames=1, frame_reference=True)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(preset))

    def model_inputs(level_max: float, run: str):
        """The batch's latents, the model's input clip, timesteps and references, and the clean-context mask."""
        cfg = load_recipe(RECIPES / "teacher_micro.yaml", [
            f"model={tmp_path / 'model.yaml'}", f"data.path={tmp_path / 'data'}", f"data.codec={codec}",
            f"out={tmp_path / run}", "data.clip_chunks=6", "data.batch_size=8", "stage.clean_context_prob=1.0",
            f"stage.context_noise_max={level_max}", "data.val_episodes=2"])
        trainer = Trainer("teacher", cfg)
        stage = trainer.stage
        seen = []
        stage.models["teacher"].register_forward_hook(
            lambda _m, args, kwargs, _out: seen.append((args[0], args[1], kwargs["controls"].reference)),
            with_kwargs=True)
        g = torch.Generator().manual_seed(0)
        inputs = stage._inputs(trainer.data.batch(0), dropout=False, generator=g)
        stage._flow_loss(*inputs)
        (x, t, ref), = seen
        return inputs[0], x, t, ref, inputs[3]

    x0, x, t, ref, clean = model_inputs(200.0, "noisy")
    schedule = FlowMatchSchedule(5.0)
    levels = []
    for b in range(x0.shape[0]):
        j = int(clean[b].sum())  # the context: frames 0..j-1
        level = t[b, :j]
        if j:
            assert torch.all(level == level[0]) and 0 <= float(level[0]) <= 200.0  # one level per sample, labelled
            levels.append(float(level[0]))
            assert torch.equal(x[b, :, :j], ref[b, :, 1:j + 1])  # context frames are the next frames' references
        sigma = float(schedule.sigma(t[b, :1] if j else torch.tensor([200.0])))  # no context: the level is unseen
        assert not torch.equal(ref[b, :, 1:], x0[b, :, :-1])  # references re-noised (every sample, context or not)
        assert (ref[b, :, 1:] - x0[b, :, :-1]).std().item() < 3 * sigma + 0.05  # by about that level, not more
        assert not clean[b, j:].any() and (t[b, j:] > 0).all()  # the rest is noisy, carrying the loss
    assert len(set(levels)) > 1  # drawn per sample

    x0, x, t, ref, clean = model_inputs(0.0, "clean")
    assert torch.equal(ref[:, :, 1:], x0[:, :, :-1])  # without context noise the references are the data
    assert clean.any() and (t[clean] == 0).all()
    mask = clean[:, None, :, None, None].expand_as(x)
    assert torch.equal(x[mask], x0[mask])  # and the context frames are the data, labelled 0



def test_self_forced_references_are_the_models_own_frames_made_from_the_context_before_them(tmp_path):
    """With self_forced_references = 1, the last self_forced_frames (2) context frames of every sample but the clip's
    first are the model's own samples: not the data, a function of the frames before them alone (changing the data
    from the first generated frame on changes nothing), read as the next frames' references; validation keeps the
    data."""
    import dataclasses

    frames = write_squares(tmp_path / "data", moving=True, episodes=8, frames=12)
    codec = random_codec(frames, tmp_path / "codec.safetensors")
    preset = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny.yaml").read_text())
    preset.update(chunk_frames=1, frame_reference=True)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(preset))
    cfg = load_recipe(RECIPES / "teacher_micro.yaml", [
        f"model={tmp_path / 'model.yaml'}", f"data.path={tmp_path / 'data'}", f"data.codec={codec}",
        f"out={tmp_path / 'run'}", "data.clip_chunks=6", "data.batch_size=8", "stage.clean_context_prob=1.0",
        "stage.self_forced_references=1.0", "stage.self_forced_frames=2", "data.val_episodes=2", "max_steps=2"])
    trainer = Trainer("teacher", cfg)
    stage, batch = trainer.stage, trainer.data.batch(0)

    def inputs(b, training: bool):
        torch.manual_seed(0)
        x0, history, t, clean, noise, text, controls = stage._inputs(b, dropout=training)
        return x0, history, clean, controls.reference

    x0, history, clean, ref = inputs(batch, True)
    context = clean.sum(dim=1)  # [B]: frames 0..j-1 are clean
    assert (context == 1).any() and (context >= 3).any()  # no generated frame, and a chain of two
    changed = batch.latents.clone()
    for b, j in enumerate(context.tolist()):
        first = max(j - 2, 1)  # the first generated frame (the clip's first frame is never generated)
        assert torch.equal(history[b, :, :first], x0[b, :, :first])  # older context: the data
        for f in range(first, j):
            assert (history[b, :, f] - x0[b, :, f]).abs().mean() > 0.05  # generated, not the data
        changed[b, :, first:] += 1.0
    assert torch.equal(ref[:, :, 1:], history[:, :, :-1])  # each frame's reference is the (generated) frame before
    _, history2, _, _ = inputs(dataclasses.replace(batch, latents=changed), True)
    for b, j in enumerate(context.tolist()):
        assert torch.allclose(history2[b, :, :j], history[b, :, :j], atol=1e-5)  # made from the frames before alone
    _, val_history, _, val_ref = inputs(batch, False)
    assert torch.equal(val_history, batch.latents) and torch.equal(val_ref[:, :, 1:], batch.latents[:, :, :-1])
    trainer.run()  # the training step runs with it
    with pytest.raises(ValueError, match="self_forced_references must lie in"):
        Trainer("teacher", load_recipe(RECIPES / "teacher_micro.yaml", [
            f"model={tmp_path / 'model.yaml'}", f"data.path={tmp_path / 'data'}", f"data.codec={codec}",
            f"out={tmp_path / 'bad'}", "stage.self_forced_references=1.5", "data.val_episodes=2"]))


def test_motion_weights_weigh_the_latents_that_change_and_leave_validation_unweighted(tmp_path):
    """stage.motion_weight: within each frame, the training loss moves towards the latents that change from the
    frame's reference, the frame's total weight unchanged; 1 where a frame has no reference yet; validation stays
    the plain flow loss."""
    frames = write_squares(tmp_path / "data", moving=True, episodes=8, frames=12)
    codec = random_codec(frames, tmp_path / "codec.safetensors")
    preset = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny.yaml").read_text())
    preset.update(chunk_frames=1, frame_reference=True)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(preset))

    def trainer(weight: float, run: str) -> Trainer:
        return Trainer("teacher", load_recipe(RECIPES / "teacher_micro.yaml", [
            f"model={tmp_path / 'model.yaml'}", f"data.path={tmp_path / 'data'}", f"data.codec={codec}",
            f"out={tmp_path / run}", "data.clip_chunks=6", "data.batch_size=8", "stage.clean_context_prob=1.0",
            f"stage.motion_weight={weight}", "data.val_episodes=2", "val_batches=2"]))

    with pytest.raises(ValueError, match="stage.motion_weight must be >= 0"):
        trainer(-1.0, "negative")
    with pytest.raises(ValueError, match="needs a model with frame_reference"):  # the micro recipe's tiny preset
        Trainer("teacher", load_recipe(RECIPES / "teacher_micro.yaml", [
            f"data.path={tmp_path / 'data'}", f"data.codec={codec}", f"out={tmp_path / 'plain_dit'}",
            "stage.motion_weight=1", "data.val_episodes=2"]))
    weighted, plain = trainer(4.0, "weighted"), trainer(0.0, "plain")
    stage, batch = weighted.stage, weighted.data.batch(0)
    x0 = batch.latents  # [B, C, F, H, W]
    reference = stage.referenced(batch, x0).controls.reference
    w = stage._motion_weights(x0, reference)  # [B, 1, F, H, W]
    assert w.shape == (x0.shape[0], 1, *x0.shape[2:])
    assert torch.all(w[:, :, 0] == 1)  # the clip's first frame has no reference
    moved = w[:, :, 1:]
    torch.testing.assert_close(moved.mean(dim=(3, 4)), torch.ones(moved.shape[:3]))  # each frame keeps its weight
    change = (x0 - reference).abs().mean(dim=1, keepdim=True)[:, :, 1:]
    assert torch.equal(moved > 1, change > change.mean(dim=(3, 4), keepdim=True))  # what changes weighs more
    assert moved.max() > 2  # by up to 1 + 4 x (change / the frame's mean) over 5
    assert weighted.validate() == plain.validate()  # same weights, same noise: validation ignores the weighting

    def loss(weighted_loss: bool) -> float:
        g = torch.Generator().manual_seed(0)
        return stage._flow_loss(*stage._inputs(batch, dropout=False, generator=g), weighted=weighted_loss).item()

    stage._motion_weights = lambda x0, reference: torch.full_like(x0[:, :1], 2.0)
    assert loss(True) == pytest.approx(2 * loss(False), rel=1e-5)  # the training loss takes the weights


def test_the_warp_learns_to_move_the_reference_as_the_keys_say(tmp_path):
    """stage.warp_weight: the warp is also trained to predict each frame from its reference and controls. Where a
    key rolls the last frame by one latent pixel (half a token), it soon predicts the next frame far better than the
    reference itself does (val/warp_loss against val/copy_loss); without it the option is refused."""
    frames = write_squares(tmp_path / "data", moving=True, episodes=32, frames=12)
    codec = random_codec(frames, tmp_path / "codec.safetensors")
    preset = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny.yaml").read_text())
    preset.update(chunk_frames=1, frame_reference=True, reference_warp=16)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(preset))
    steps = 300

    def recipe(run: str, *extra: str):
        return load_recipe(RECIPES / "teacher_micro.yaml", [
            f"model={tmp_path / 'model.yaml'}", f"data.path={tmp_path / 'data'}", f"data.codec={codec}",
            f"out={tmp_path / run}", "data.clip_chunks=6", "data.batch_size=8", "stage.clean_context_prob=1.0",
            "data.val_episodes=2", "val_batches=2", *extra])

    with pytest.raises(ValueError, match="stage.warp_weight must be 0, or > 0 for a model with reference_warp"):
        Trainer("teacher", load_recipe(RECIPES / "teacher_micro.yaml", [
            f"data.path={tmp_path / 'data'}", f"data.codec={codec}", f"out={tmp_path / 'no_warp'}",
            "stage.warp_weight=1", "data.val_episodes=2"]))
    trainer = Trainer("teacher", recipe("warp", "stage.warp_weight=1", f"max_steps={steps}", "val_every=300",
                                        "log_every=100", f"ckpt_every={steps}", "optim.lr=0.002"))
    before = trainer.validate()
    assert before["val/warp_loss"] == before["val/copy_loss"] > 0  # a fresh warp leaves the reference as it is
    trainer.run()
    rows = [json.loads(line) for line in (tmp_path / "warp" / "metrics.jsonl").read_text().splitlines()]
    assert all({"flow_loss", "warp_loss"} <= r.keys() for r in rows if "loss" in r)
    final = next(r for r in rows if r["step"] == steps and "val/warp_loss" in r)
    assert final["val/warp_loss"] < 0.5 * final["val/copy_loss"], final


def test_warp_only_trains_the_warp_and_nothing_else(tmp_path):
    frames = write_squares(tmp_path / "data", moving=True, episodes=8, frames=12)
    codec = random_codec(frames, tmp_path / "codec.safetensors")
    preset = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny.yaml").read_text())
    preset.update(chunk_frames=1, frame_reference=True, reference_warp=8)
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(preset))
    with pytest.raises(ValueError, match="stage.warp_only trains the reference warp: the model has none"):
        Trainer("teacher", load_recipe(RECIPES / "teacher_micro.yaml", [
            f"data.path={tmp_path / 'data'}", f"data.codec={codec}", f"out={tmp_path / 'no_warp'}",
            "stage.warp_only=true", "data.val_episodes=2"]))
    trainer = Trainer("teacher", load_recipe(RECIPES / "teacher_micro.yaml", [
        f"model={tmp_path / 'model.yaml'}", f"data.path={tmp_path / 'data'}", f"data.codec={codec}",
        f"out={tmp_path / 'out'}", "data.clip_chunks=6", "data.batch_size=8", "stage.warp_only=true",
        "max_steps=20", "ckpt_every=20", "val_every=20", "log_every=20", "data.val_episodes=2", "val_batches=2"]))
    model = trainer.stage.unwrap("teacher")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.run()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("reference_warp.") for k in changed), changed
    row = next(json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()
               if '"val/warp_loss"' in line)
    assert row["val/warp_loss"] < row["val/copy_loss"]  # 20 steps already beat copying the reference
