"""Control conditioning: exact identity with no control input, and a path that learns to use controls."""

from __future__ import annotations

import pytest
import torch

from conftest import CONTROL, make_model, text
from worldsim.model.control import Controls, group_video_frames
from worldsim.model.dit import CausalWanDiT
from worldsim.sampling.session import StreamingSession


def with_controls(base: CausalWanDiT) -> CausalWanDiT:
    """The same base weights plus a (zero-initialised) control module."""
    model = CausalWanDiT(base.cfg.with_control(CONTROL)).eval()
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("control_embedding.") for k in missing)
    return model


def controls(frames: int, seed: int = 0, batch: int = 1, present=None) -> Controls:
    g = torch.Generator().manual_seed(seed)
    k = CONTROL.frames_per_latent
    return Controls(keys=(torch.rand(batch, frames, k, 4, generator=g) > 0.5).float(),
                    axes=torch.randn(batch, frames, k, 2, generator=g),
                    embedding=torch.randn(batch, frames, k, 5, generator=g), present=present)


def _train_control_path(model: CausalWanDiT, steps: int = 5) -> None:
    """A few optimisation steps that reward outputs which depend on the controls."""
    opt = torch.optim.Adam(model.control_embedding.parameters(), lr=1e-2)
    x, t, ctx = torch.randn(1, 4, 3, 4, 6), torch.full((1, 3), 500.0), text()
    target = torch.randn(1, 4, 3, 4, 6)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = (model(x, t, ctx, controls=controls(3)) - target).pow(2).mean()
        loss.backward()
        opt.step()
    model.eval()


def test_no_control_is_bit_identical_to_the_model_without_control_module():
    base = make_model()
    ctrl = with_controls(base)
    _train_control_path(ctrl)  # even after training, absent controls must not change a bit
    with torch.no_grad():
        x, t, ctx = torch.randn(1, 4, 6, 4, 6), torch.full((1, 6), 937.5), text()
        ref = base(x, t, ctx)
        assert torch.equal(ctrl(x, t, ctx), ref)
        assert torch.equal(ctrl(x, t, ctx, controls=Controls()), ref)
        assert torch.equal(ctrl(x, t, ctx, controls=controls(6, present=torch.zeros(1, 6, dtype=torch.bool))), ref)
        # streaming sessions too
        a = StreamingSession(base, ctx, latent_shape=(4, 4, 6), seed=5)
        b = StreamingSession(ctrl, ctx, latent_shape=(4, 4, 6), seed=5)
        assert all(torch.equal(a.step(), b.step()) for _ in range(3))


def test_controls_matter_after_a_few_optimisation_steps():
    model = with_controls(make_model())
    x, t, ctx = torch.randn(1, 4, 3, 4, 6), torch.full((1, 3), 500.0), text()
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx, controls=controls(3, seed=1)), model(x, t, ctx, controls=controls(3, seed=2)))
    _train_control_path(model)
    with torch.no_grad():
        a, b = model(x, t, ctx, controls=controls(3, seed=1)), model(x, t, ctx, controls=controls(3, seed=2))
        assert (a - b).abs().max() > 1e-4
        # presence gating is per latent frame: with frame-causal attention and controls only on the last frame,
        # the earlier frames are untouched to the bit
        only_last = controls(3, seed=1, present=torch.tensor([[False, False, True]]))
        gated, plain = model(x, t, ctx, chunk_frames=1, controls=only_last), model(x, t, ctx, chunk_frames=1)
        assert torch.equal(gated[:, :, :2], plain[:, :, :2])
        assert not torch.allclose(gated[:, :, 2], plain[:, :, 2])


@torch.no_grad()
def test_session_controls_per_chunk_and_shape_errors():
    model = with_controls(make_model())
    with torch.no_grad():
        for p in model.control_embedding.parameters():
            p.normal_(0, 0.1)
    s = StreamingSession(model, text(), latent_shape=(4, 4, 6), seed=0)
    out = s.step(controls=controls(3))
    assert out.shape == (1, 4, 3, 4, 6)
    with pytest.raises(ValueError, match=r"controls.keys must have shape"):
        s.step(controls=Controls(keys=torch.zeros(1, 3, 4, 3)))
    with pytest.raises(ValueError, match="no control module"):
        StreamingSession(make_model(), text(), latent_shape=(4, 4, 6)).step(controls=controls(3))


def test_group_video_frames():
    samples = torch.arange(24.0).view(1, 12, 2)
    grouped = group_video_frames(samples, 4)
    assert grouped.shape == (1, 3, 4, 2) and torch.equal(grouped[0, 1, 0], samples[0, 4])
    with pytest.raises(ValueError, match="do not group"):
        group_video_frames(samples[:, :10], 4)


def test_sessions_stepped_together_match_stepping_alone():
    """step_sessions batches streams at different positions, prompts, seeds, sinks and controls into one forward per
    denoising step; each gets what it would have got on its own (fp32; only GEMM blocking differs)."""
    model = with_controls(make_model())
    _train_control_path(model)  # controls must matter, or a mix-up would go unnoticed

    def streams():
        out = [StreamingSession(model, text(seed=i), latent_shape=(4, 4, 6), seed=10 + i, sink_frames=i % 2,
                                window_frames=6) for i in range(3)]
        for _ in range(3):  # stream 2 is three chunks ahead: its window has rolled, its RoPE positions differ
            out[2].step(controls=controls(3, seed=99))
        return out

    with torch.no_grad():
        check_together(streams)


def check_together(streams) -> None:
    from worldsim.sampling.session import step_sessions

    alone, together = streams(), streams()
    for step in range(3):
        ctrl = [controls(3, seed=10 * step + i) for i in range(3)]
        expected = [s.step(controls=c) for s, c in zip(alone, ctrl)]
        got = step_sessions(together, ctrl)
        for e, g in zip(expected, got):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(got[0], got[1])
    assert [s.frame for s in together] == [s.frame for s in alone] == [9, 9, 18]
    with pytest.raises(ValueError, match="control sources"):
        step_sessions(together[:2], [controls(3), None])
