"""Self Forcing training: the rollout streams exactly like inference, gradient reaches the student only through each
chunk's exit step (never through the cache or earlier denoising steps), the exit step is random but shared; the
ode-init and self-forcing stages train, and resume where they left off."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import CONTROL as DATA_CONTROL
from train_helpers import write_dataset

from conftest import CONTROL, make_model, randomize, text
from worldsim.checkpoints import save_worldsim
from worldsim.codecs.toy_codec import ToyCodec, ToyCodecConfig
from worldsim.model.config import ControlConfig, load_preset
from worldsim.model.dit import CausalWanDiT
from worldsim.model.control import Controls, reference_frames
from worldsim.model.reference_flow import ReferenceFlow, ReferenceFlowConfig
from worldsim.model_package import read_package
from worldsim.sampling.schedule import FlowMatchSchedule, SamplerConfig
from worldsim.sampling.session import StreamingSession
from worldsim.train.config import load_recipe
from worldsim.train.ode import ode_regression_loss, ode_trajectory
from worldsim.train.rollout import shared_randint, self_forcing_rollout
from worldsim.train.stages import self_forcing
from worldsim.train.stages.self_forcing import moment_loss
from worldsim.train.trainer import Trainer, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread (conftest)

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "train"


SHAPE = (4, 4, 6)  # latent (C, H, W)
FRAMES = 9  # three chunks


def control_model(seed: int = 0, **overrides):
    """A tiny DiT whose control path is random too (zero-initialised it would hide control bugs)."""
    model = make_model(seed, control=CONTROL, **overrides)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.control_embedding.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def controls(batch: int = 2, frames: int = FRAMES, seed: int = 0) -> Controls:
    g = torch.Generator().manual_seed(seed)
    k = CONTROL.frames_per_latent
    return Controls(keys=(torch.rand(batch, frames, k, 4, generator=g) > 0.5).float(),
                    axes=torch.randn(batch, frames, k, 2, generator=g), embedding=None)


def prompts(batch: int = 2):
    """Per-chunk prompts with a switch before the last chunk."""
    a, b = text(batch, seed=0), text(batch, seed=1)
    return [a, a, b]


def rollout(model, exit_step, seed=0, sampler=None, **kw):
    return self_forcing_rollout(model, prompts(), num_frames=FRAMES, latent_shape=SHAPE,
                                sampler=sampler or SamplerConfig(), exit_step=exit_step, controls=controls(),
                                generator=torch.Generator().manual_seed(seed), **kw)


def shift_by_keys(last: torch.Tensor, controls: Controls) -> torch.Tensor:
    """A stand-in reference flow: the last frame shifted one latent pixel right per held key, in each batch row."""
    held = controls.keys[:, 0].sum(dim=(1, 2)).long()  # [B]
    return torch.stack([row.roll(int(k), dims=-1) for row, k in zip(last, held)])


@torch.no_grad()
@pytest.mark.parametrize("context_noise, frame_reference, window, sink, move", [
    (0.0, False, None, 0, None), (0.25, False, None, 0, None), (0.25, True, None, 0, None), (0.0, True, 3, 0, None),
    (0.0, True, 3, 3, None), (0.0, True, None, 0, shift_by_keys)])
def test_rollout_equals_streaming_session(context_noise, frame_reference, window, sink, move):
    """Full denoising without grad reproduces the inference loop bit for bit (prompt switch and controls included),
    also when finished chunks enter the cache re-noised to a context timestep above 0, for a model that sees the
    last clean frame before each chunk in its input channels, through a rolling window shorter than the clip, beside
    a sink (later chunks then see the first, unlike the window alone), and with that frame moved by the
    chunk's controls first (a reference flow; the rollout then differs from one without)."""
    model = control_model(frame_reference=frame_reference)
    sampler = SamplerConfig(context_noise=context_noise)
    out = rollout(model, exit_step=3, seed=5, sampler=sampler, window_frames=window, sink_frames=sink,
                  move_reference=move).latents
    session = StreamingSession(model, prompts()[0], latent_shape=SHAPE, seed=5, window_frames=window or FRAMES,
                               sink_frames=sink, sampler=sampler, move_reference=move)
    chunks = []
    for i, ctx in enumerate(prompts()):
        if i and ctx is not prompts()[i - 1]:
            session.set_prompt(ctx, mode="soft")
        chunks.append(session.step(controls().slice_frames(3 * i, 3 * i + 3)))
    assert torch.equal(out, torch.cat(chunks, dim=2))
    if sink:
        windowed = rollout(model, exit_step=3, seed=5, sampler=sampler, window_frames=window).latents
        assert torch.equal(out[:, :, :3], windowed[:, :, :3])  # the first chunk sees nothing before it either way
        assert not torch.allclose(out[:, :, 3:], windowed[:, :, 3:], atol=1e-4)
    if move is not None:
        unmoved = rollout(model, exit_step=3, seed=5, sampler=sampler).latents
        assert torch.equal(out[:, :, :3], unmoved[:, :, :3])  # the first chunk has no reference to move
        assert not torch.allclose(out[:, :, 3:], unmoved[:, :, 3:], atol=1e-4)


def exit_inputs(model, exit_step):
    """Run a grad rollout, recording the inputs of every exit-step forward (the only ones that do not write)."""
    seen, chunk = [], model.forward_chunk

    def spy(x, t, context, cache, start_frame, controls=None, *, write=True):
        if not write:
            seen.append((x.detach().clone(), t.clone(), start_frame))
        return chunk(x, t, context, cache, start_frame, controls, write=write)

    model.forward_chunk = spy
    try:
        out = rollout(model, exit_step)
    finally:
        del model.forward_chunk
    return out, seen


def test_a_windowed_rollout_carries_gradient_only_in_its_last_window():
    """Through a rolling window of one chunk, the chunks before it run without gradient; the last one's exit step
    with it. A window that is not whole chunks within the rollout is refused."""
    model = control_model().train()
    grad_at_exit, chunk = [], model.forward_chunk

    def spy(x, t, context, cache, start_frame, controls=None, *, write=True):
        if not write:
            grad_at_exit.append((start_frame, torch.is_grad_enabled()))
        return chunk(x, t, context, cache, start_frame, controls, write=write)

    model.forward_chunk = spy
    try:
        out = rollout(model, exit_step=1, window_frames=3)
    finally:
        del model.forward_chunk
    assert grad_at_exit == [(0, False), (3, False), (6, True)]
    assert out.latents[:, :, 6:].requires_grad
    for bad in (2, 12):
        with pytest.raises(ValueError, match="window_frames"):
            rollout(model, exit_step=1, window_frames=bad)
    for bad in (-3, 2, 9):
        with pytest.raises(ValueError, match="sink_frames"):
            rollout(model, exit_step=1, window_frames=3, sink_frames=bad)


def grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("exit_step,checkpointing", [(0, False), (2, False), (3, True)])
def test_gradient_reaches_student_only_through_exit_steps(exit_step, checkpointing):
    """The rollout's parameter gradient equals that of re-running only the exit steps, each on its recorded input
    against a cache of the detached clean earlier chunks: no gradient through earlier chunks' K/V or earlier steps."""
    model = control_model().train()
    model.gradient_checkpointing = checkpointing
    weight = torch.randn(2, *SHAPE[:1], FRAMES, *SHAPE[1:], generator=torch.Generator().manual_seed(9))
    out, seen = exit_inputs(model, exit_step)
    assert [s for _, _, s in seen] == [0, 3, 6] and out.exit_step == exit_step
    got = grads(model, (out.latents * weight).sum())

    schedule, ctx, ctrl = FlowMatchSchedule(), prompts(), controls()
    clean = out.latents.detach()
    loss = 0
    for c, (x, t, start) in enumerate(seen):
        cache = model.new_cache(batch=2, height=SHAPE[1], width=SHAPE[2], sink_frames=0, window_frames=FRAMES)
        with torch.no_grad():
            for j in range(c):
                model.forward_chunk(clean[:, :, 3 * j:3 * j + 3], torch.zeros(2, 3), ctx[j], cache, 3 * j,
                                    ctrl.slice_frames(3 * j, 3 * j + 3))
        flow = model.forward_chunk(x, t, ctx[c], cache, start, ctrl.slice_frames(start, start + 3), write=False)
        loss = loss + (schedule.x0_from_flow(flow, x, float(t[0, 0])) * weight[:, :, start:start + 3]).sum()
    want = grads(model, loss)
    assert got.keys() == want.keys() and "control_embedding.mlp.0.weight" in got
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-4, atol=1e-6), name


def test_cache_never_holds_gradient():
    """Exit steps read the cache out of place, so its buffers never join the autograd graph."""
    model = control_model().train()
    seen = []
    new_cache = model.new_cache
    model.new_cache = lambda **kw: seen.append(new_cache(**kw)) or seen[-1]
    out = rollout(model, exit_step=1)
    del model.new_cache
    cache = seen[0]
    assert out.latents.requires_grad
    assert not cache.k.requires_grad and cache.k.grad_fn is None and not cache.cross_k.requires_grad
    out.latents.sum().backward()  # and backward works although every slot was overwritten after its exit step


def test_exit_step_is_random_seeded_and_shared_by_chunks():
    draws = [shared_randint(4, torch.Generator().manual_seed(0)) for _ in range(2)]
    assert draws[0] == draws[1]
    g = torch.Generator().manual_seed(0)
    assert len({shared_randint(4, g) for _ in range(30)}) == 4
    model = control_model()
    with torch.no_grad():  # different exit steps give different rollouts from the same noise
        assert not torch.allclose(rollout(model, 0).latents, rollout(model, 3).latents)
    with pytest.raises(ValueError, match="exit_step"):
        rollout(model, 4)


def test_ode_trajectory_keeps_student_timesteps_and_regression_trains():
    """Teacher states land exactly on 1000/937.5/833.3/625; regressing the student onto them lowers the loss."""
    schedule = FlowMatchSchedule()
    timesteps = schedule.sampling_timesteps(SamplerConfig())
    teacher, student = make_model(0), make_model(1).train()
    ctx = text(2)
    seen = []

    def flow(x, t):
        seen.append(float(t[0, 0]))
        return teacher(x, t, ctx)

    states = ode_trajectory(flow, torch.randn(2, 4, 6, 4, 6, generator=torch.Generator().manual_seed(0)), schedule,
                            timesteps, num_steps=8)
    assert states.shape == (5, 2, 4, 6, 4, 6) and len(seen) == 8
    assert all(any(abs(s - t) < 1e-3 for s in seen) for t in timesteps)
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)
    losses = []
    for i in range(12):
        loss = ode_regression_loss(student, states, timesteps, ctx, None, schedule, 3,
                                   generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < 0.7 * sum(losses[:3])


# ---- the stages, through the trainer ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A synthetic dataset, an untrained codec (4x4x4 latents) and a random tiny teacher with the data's controls."""
    root = tmp_path_factory.mktemp("distill")
    write_dataset(root / "data")
    ToyCodec(ToyCodecConfig(latent_channels=4, channels=(8, 8))).save(root / "codec.safetensors")
    teacher = randomize(CausalWanDiT(load_preset("tiny").with_control(ControlConfig(**DATA_CONTROL))), seed=3)
    with torch.no_grad():
        for p in teacher.control_embedding.parameters():
            p.normal_(0, 0.3, generator=torch.Generator().manual_seed(4))
    save_worldsim(teacher, root / "teacher.safetensors")
    # the toy recipes' architecture: chunks of one frame, each seeing the frame before it (frame_reference)
    ref_cfg = dataclasses.replace(teacher.cfg, chunk_frames=1, frame_reference=True)
    (root / "reference.yaml").write_text(yaml.safe_dump({**ref_cfg.to_dict(), "control": None}))
    save_worldsim(randomize(CausalWanDiT(ref_cfg), seed=5), root / "teacher_reference.safetensors")
    return root


def recipe(stage: str, root: Path, out: str, *overrides: str, reference: bool = False):
    extra = [f"model={root / 'reference.yaml'}", f"stage.teacher={root / 'teacher_reference.safetensors'}",
             "data.clip_chunks=3"] if reference else [f"stage.teacher={root / 'teacher.safetensors'}"]
    return load_recipe(RECIPES / f"{stage.replace('-', '_')}_micro.yaml",
                       [f"data.path={root / 'data'}", f"data.codec={root / 'codec.safetensors'}", *extra,
                        f"out={root / out}", *overrides])


@pytest.mark.parametrize("stage,key", [("ode-init", "loss"), ("self-forcing", "critic_loss")])
@pytest.mark.parametrize("reference", [False, True])
def test_stage_loss_falls_on_a_fixed_batch(workdir, stage, key, reference):
    tr = Trainer(stage, recipe(stage, workdir, f"fixed-{stage}-{reference}", reference=reference))
    batch = tr.data.batch(0)
    losses = []
    for i in range(12):
        torch.manual_seed(i % 2)  # the same noise every other step: the loss moves only with the weights
        with tr.acc.accumulate(*tr.stage.models.values()):
            metrics = tr.stage.step(batch, i)
        losses.append(metrics[key])
    assert losses[-2] + losses[-1] < 0.85 * (losses[0] + losses[1])
    if stage == "self-forcing":  # the generator stepped every update_ratio steps, the critic every step
        assert "dmd_loss" in metrics or "dmd_loss" in tr.stage.step(batch, 10)


@torch.no_grad()
def test_self_forcing_scores_the_last_window_of_a_long_rollout(workdir):
    """stage.window_frames: the clip is rolled out through a rolling window as served, and the scores see only its
    last window, as a clip of its own (its first frame has no reference, later ones the window's frame before them);
    a window that is not whole chunks within the clip is refused when the stage is built."""
    tr = Trainer("self-forcing", recipe("self-forcing", workdir, "window", "stage.window_frames=2", reference=True))
    batch = tr.data.batch(0)
    torch.manual_seed(0)  # the stage's rollouts draw their noise from the global generator
    x, scored = tr.stage.scored_rollout(batch, exit_step=3, grad=False)
    torch.manual_seed(0)
    full = tr.stage.rollout(batch, exit_step=3, window_frames=2)
    assert x.shape[2] == 2 and torch.equal(x, full[:, :, -2:])
    assert scored.latents.shape[2] == 2 and scored.text.shape[1] == 2 and len(scored.prompts[0]) == 2
    assert torch.equal(scored.text, batch.text[:, -2:])
    assert not scored.controls.reference[:, :, 0].any()  # a clip's start: no reference
    assert torch.equal(scored.controls.reference[:, :, 1], full[:, :, -2])
    assert torch.equal(scored.controls.keys, batch.controls.keys[:, -2:])
    with pytest.raises(ValueError, match="window_frames"):
        Trainer("self-forcing", recipe("self-forcing", workdir, "window-bad", "stage.window_frames=4", reference=True))


@torch.no_grad()
def test_self_forcing_can_score_the_last_window_as_a_continuation(workdir):
    """stage.window_start=continuation: the scores see the window's first frame with the reference the rollout fed
    it (the frame before the window), not as a clip's start; an unknown value is refused."""
    tr = Trainer("self-forcing", recipe("self-forcing", workdir, "cont", "stage.window_frames=2",
                                        "stage.window_start=continuation", reference=True))
    batch = tr.data.batch(0)
    torch.manual_seed(0)
    x, scored = tr.stage.scored_rollout(batch, exit_step=3, grad=False)
    torch.manual_seed(0)
    full = tr.stage.rollout(batch, exit_step=3, window_frames=2)
    assert torch.equal(x, full[:, :, -2:])
    assert scored.controls.reference[:, :, 0].abs().sum() > 0
    assert torch.equal(scored.controls.reference[:, :, :2], full[:, :, -3:-1])
    with pytest.raises(ValueError, match="window_start"):
        Trainer("self-forcing", recipe("self-forcing", workdir, "cont-bad", "stage.window_frames=2",
                                       "stage.window_start=both", reference=True))


def test_self_forcing_can_score_a_window_drawn_uniformly_from_the_rollout(workdir):
    """stage.window_end=uniform: each step the rollout stops at a chunk boundary drawn uniformly among those that
    leave the window room, and what it makes up to there is exactly the whole clip's rollout up to there (it is
    causal), so its last window is a window drawn from the long rollout. Without a window, or with an unknown value,
    the stage is refused."""
    tr = Trainer("self-forcing", recipe("self-forcing", workdir, "uniform", "stage.window_frames=2",
                                        "stage.window_end=uniform", "data.clip_chunks=4", reference=True))
    batch = tr.data.batch(0)
    torch.manual_seed(0)
    ends = [tr.stage.cut_at_window_end(batch).latents.shape[2] for _ in range(40)]
    assert set(ends) == {2, 3, 4}
    cut = tr.stage.cut_at_window_end(batch)
    end = cut.latents.shape[2]
    assert torch.equal(cut.latents, batch.latents[:, :, :end]) and cut.text.shape[1] == end
    assert torch.equal(cut.controls.keys, batch.controls.keys[:, :end]) and len(cut.prompts[0]) == end
    with torch.no_grad():
        torch.manual_seed(1)
        full = tr.stage.rollout(batch, exit_step=3, window_frames=2)
        torch.manual_seed(1)
        x, scored = tr.stage.scored_rollout(cut, exit_step=3, grad=False)
    assert torch.equal(x, full[:, :, end - 2:end])
    assert torch.equal(scored.latents, batch.latents[:, :, end - 2:end])
    assert 2 <= tr.stage.step(batch, 1)["rollout_frames"] <= 4
    for bad, match in ((["stage.window_end=uniform"], "needs stage.window_frames"),
                       (["stage.window_frames=2", "stage.window_end=random"], "window_end")):
        with pytest.raises(ValueError, match=match):
            Trainer("self-forcing", recipe("self-forcing", workdir, "uniform-bad", *bad, reference=True))
    with pytest.raises(ValueError, match="whole chunks"):
        batch.frames(1, 5, 1)


def test_self_forcing_data_anchor_fits_the_student_to_the_data(workdir):
    """stage.data_weight: every generator update also fits the student's flow on the real clips at the sampler's
    timesteps, after clean history (the served situation). Its held-out value is seeded (the same twice), depends on
    the data, falls as the student trains on it, and is absent without the anchor; a negative weight, or a window
    too short to hold history and a chunk to predict, is refused."""
    tr = Trainer("self-forcing", recipe("self-forcing", workdir, "anchor", "stage.window_frames=2",
                                        "stage.data_weight=20", "stage.update_ratio=1", reference=True))
    batch = tr.data.batch(0)
    before = tr.stage.validate(batch)["data_loss"]
    assert tr.stage.validate(batch)["data_loss"] == before
    shifted = dataclasses.replace(batch, latents=batch.latents + 1)
    assert tr.stage.validate(shifted)["data_loss"] != pytest.approx(before)
    for i in range(10):
        torch.manual_seed(i)
        with tr.acc.accumulate(*tr.stage.models.values()):
            metrics = tr.stage.step(batch, i)
    assert metrics["data_loss"] > 0 and tr.stage.validate(batch)["data_loss"] < 0.7 * before
    plain = Trainer("self-forcing", recipe("self-forcing", workdir, "no-anchor", "stage.window_frames=2",
                                           reference=True))
    assert "data_loss" not in plain.stage.validate(batch) and "data_loss" not in plain.stage.step(batch, 0)
    for bad in (["stage.data_weight=-1"], ["stage.data_weight=1", "stage.window_frames=1"]):
        with pytest.raises(ValueError, match="data_weight"):
            Trainer("self-forcing", recipe("self-forcing", workdir, "anchor-bad", *bad, reference=True))


def test_self_forcing_data_steps_pick_the_anchors_noise_levels(workdir, monkeypatch):
    """stage.data_steps: the anchor noises its predicted chunk only to the levels of the sampler steps named (0 the
    noisiest); every level without it; indices outside the sampler, repeated or none at all are refused."""
    seen, real = [], self_forcing.clip_flow_loss

    def recording(model, schedule, x0, history, t, clean, noise, text, controls, scored, weights=None):
        seen.append(set(t[scored.bool() & ~clean].tolist()))  # the predicted chunk's levels
        return real(model, schedule, x0, history, t, clean, noise, text, controls, scored, weights)

    monkeypatch.setattr(self_forcing, "clip_flow_loss", recording)
    levels = {}
    for name, steps in (("all", []), ("noisiest", ["stage.data_steps=[0]"]), ("low", ["stage.data_steps=[2,3]"])):
        tr = Trainer("self-forcing", recipe("self-forcing", workdir, f"steps-{name}", "stage.window_frames=2",
                                            "stage.data_weight=1", *steps, reference=True))
        seen.clear()
        for seed in range(12):
            tr.stage.data_loss(tr.data.batch(0), generator=torch.Generator().manual_seed(seed))
        levels[name] = set().union(*seen)
    timesteps = torch.tensor(tr.stage.timesteps, dtype=torch.float32).tolist()
    assert levels["all"] == set(timesteps)
    assert levels["noisiest"] == {timesteps[0]} and levels["low"] == {timesteps[2], timesteps[3]}
    for bad in ("[4]", "[1,1]", "[]", "[-1]"):
        with pytest.raises(ValueError, match="data_steps"):
            Trainer("self-forcing", recipe("self-forcing", workdir, "steps-bad", "stage.window_frames=2",
                                           "stage.data_weight=1", f"stage.data_steps={bad}", reference=True))


def test_self_forcing_moment_loss_pulls_the_windows_palette_to_the_data(workdir):
    """stage.moment_weight: the scored window's per-channel latent mean and std are fitted to the real clip's. The
    loss sees palettes, not layouts (the same pixels in another order score zero, a brighter copy does not); its
    held-out value falls as the student trains on it; absent without the term; a negative weight is refused."""
    real = torch.randn(2, 4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    shuffled = real.flatten(2)[:, :, torch.randperm(75)].view_as(real)
    assert moment_loss(shuffled, real).item() == pytest.approx(0, abs=1e-10)
    assert moment_loss(real + 0.5, real).item() == pytest.approx(0.25)
    tr = Trainer("self-forcing", recipe("self-forcing", workdir, "moments", "stage.window_frames=2",
                                        "stage.moment_weight=50", "stage.update_ratio=1", reference=True))
    batch = tr.data.batch(0)
    torch.manual_seed(0)
    before = tr.stage.validate(batch)["moment_loss"]
    for i in range(20):  # without the term (weight 1e-6) it wanders over 1.0-1.5x in these steps
        torch.manual_seed(i)
        with tr.acc.accumulate(*tr.stage.models.values()):
            metrics = tr.stage.step(batch, i)
    torch.manual_seed(0)
    assert metrics["moment_loss"] > 0 and tr.stage.validate(batch)["moment_loss"] < 0.7 * before
    plain = Trainer("self-forcing", recipe("self-forcing", workdir, "no-moments", "stage.window_frames=2",
                                           reference=True))
    assert "moment_loss" not in plain.stage.validate(batch) and "moment_loss" not in plain.stage.step(batch, 0)
    with pytest.raises(ValueError, match="moment_weight"):
        Trainer("self-forcing", recipe("self-forcing", workdir, "moments-bad", "stage.moment_weight=-1",
                                       reference=True))


def test_self_forcing_rolls_out_beside_a_sink_and_packages_it(workdir):
    """stage.sink_frames: the rollout keeps its first frames in the cache beside the rolling window, as a session
    with that sink does (the scored window then differs from one rolled out without), and the package serves with
    that window and sink. A sink without a window, or one that leaves the window no room in the clip, is refused."""
    tr = Trainer("self-forcing", recipe("self-forcing", workdir, "sink", "stage.window_frames=1",
                                        "stage.sink_frames=1", "package=true", "max_steps=1", reference=True))
    batch = tr.data.batch(0)
    with torch.no_grad():
        torch.manual_seed(0)  # the stage's rollouts draw their noise from the global generator
        x, _ = tr.stage.scored_rollout(batch, exit_step=3, grad=False)
        torch.manual_seed(0)
        sunk = tr.stage.rollout(batch, exit_step=3, window_frames=1, sink_frames=1)
        torch.manual_seed(0)
        plain = tr.stage.rollout(batch, exit_step=3, window_frames=1)
    assert torch.equal(x, sunk[:, :, -1:])
    assert torch.equal(sunk[:, :, 0], plain[:, :, 0])  # the first frame sees nothing before it either way
    assert not torch.allclose(sunk[:, :, 1:], plain[:, :, 1:], atol=1e-4)  # later ones see it through the sink
    tr.run()
    assert read_package(workdir / "sink" / "final").cache == {"sink_frames": 1, "window_frames": 1}
    for bad in (["stage.sink_frames=1"], ["stage.window_frames=2", "stage.sink_frames=2"]):
        with pytest.raises(ValueError, match="sink_frames"):
            Trainer("self-forcing", recipe("self-forcing", workdir, "sink-bad", *bad, reference=True))


def test_distillation_moves_references_by_the_reference_flow_and_packages_it(workdir):
    """stage.reference_flow: the student's rollout moves each chunk's reference by the flow, as a session serving
    the package does (the first chunk, with none, is the same as without the flow; later ones differ), the teacher
    and critic score the rollout with the flow's moves of its own frames as references, and the package names the
    flow."""
    flow = ReferenceFlow(ReferenceFlowConfig(bases=2, grid=4, hidden=8), ControlConfig(**DATA_CONTROL))
    with torch.no_grad():
        flow.fields.copy_(torch.tensor([[[[0.0]], [[4.0]]], [[[4.0]], [[0.0]]]]).expand(2, 2, 4, 4))  # 4 px
        flow.mix[2].weight.normal_(generator=torch.Generator().manual_seed(0))
    path = flow.save(workdir / "flow.safetensors")
    tr = Trainer("self-forcing", recipe("self-forcing", workdir, "flow", f"stage.reference_flow={path}",
                                        "package=true", "max_steps=2", reference=True))
    batch, stage = tr.data.batch(0), tr.stage
    with torch.no_grad():
        torch.manual_seed(0)  # the stage's rollouts draw their noise from the global generator
        x, scored = stage.scored_rollout(batch, exit_step=3, grad=False)
        assert torch.equal(scored.controls.reference, stage.move_references(batch, reference_frames(x, 1)))
        stage.reference_flow = None
        torch.manual_seed(0)
        plain = stage.rollout(batch, exit_step=3)
    assert torch.equal(x[:, :, 0], plain[:, :, 0])
    assert not torch.allclose(x[:, :, 1:], plain[:, :, 1:], atol=1e-3)
    stage.reference_flow = ReferenceFlow.load(path)
    tr.run()
    pkg = read_package(workdir / "flow" / "final")
    assert pkg.reference_flow is not None and pkg.reference_flow.read_bytes() == path.read_bytes()


@pytest.mark.parametrize("stage", ["ode-init", "self-forcing"])
def test_stage_resume_gives_the_same_next_losses(workdir, stage):
    whole = train(stage, recipe(stage, workdir, f"whole-{stage}")).out
    part = workdir / f"part-{stage}"
    train(stage, recipe(stage, workdir, part.name, "max_steps=2"))
    train(stage, recipe(stage, workdir, part.name), resume=True)
    rows = [{r["step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
             if "val/" not in "".join(r)} for out in (whole, part)]
    key = "loss" if stage == "ode-init" else "critic_loss"
    assert rows[0][3][key] == rows[1][3][key] and rows[0][4][key] == rows[1][4][key]  # bit-exact on the CPU
    assert (whole / "final" / "generator.safetensors").is_file()
