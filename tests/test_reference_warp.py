"""The control-conditioned reference warp (model/reference_warp.py): a no-op as added, gated by controls and
reference, loadable into a checkpoint that lacks it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CONTROL, make_model, text
from worldsim.checkpoints import CheckpointError
from worldsim.checkpoints.load import load_model
from worldsim.checkpoints.worldsim_format import save_worldsim
from worldsim.model.control import Controls, reference_frames
from worldsim.model.dit import CausalWanDiT
from worldsim.train.config import load_recipe
from worldsim.train.trainer import model_config

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "train"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def with_warp(base: CausalWanDiT, hidden: int = 8) -> CausalWanDiT:
    """The same weights plus a fresh reference warp."""
    model = CausalWanDiT(dataclasses.replace(base.cfg, reference_warp=hidden)).eval()
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("reference_warp.") for k in missing)
    return model


def clip_controls(frames: int, present=None, seed: int = 0) -> Controls:
    """Random controls for a clip of ``frames`` latent frames, with each frame's reference (zeros for frame 0)."""
    g = torch.Generator().manual_seed(seed)
    k = CONTROL.frames_per_latent
    latents = torch.randn(1, 4, frames, 4, 6, generator=g)
    return Controls(keys=(torch.rand(1, frames, k, 4, generator=g) > 0.5).float(),
                    axes=torch.randn(1, frames, k, 2, generator=g), embedding=torch.randn(1, frames, k, 5, generator=g),
                    present=present, reference=reference_frames(latents, 1))


def inputs(frames: int = 3):
    g = torch.Generator().manual_seed(7)
    return torch.randn(1, 4, frames, 4, 6, generator=g), torch.full((1, frames), 500.0), text()


def train_warp(model: CausalWanDiT, steps: int = 5) -> None:
    """A few optimisation steps of the warp alone towards an arbitrary target: its output is no longer zero."""
    opt = torch.optim.Adam(model.reference_warp.parameters(), lr=1e-2)
    x, t, ctx = inputs()
    target = torch.randn_like(x)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        (model(x, t, ctx, chunk_frames=1, controls=clip_controls(3)) - target).pow(2).mean().backward()
        opt.step()
    model.eval()


@torch.no_grad()
def test_a_fresh_warp_changes_nothing_and_a_trained_one_only_frames_with_controls_and_a_reference():
    base = make_model(control=CONTROL, frame_reference=True)
    for p in base.parameters():  # a trained reference path (make_model leaves it at its zero initialisation)
        p.add_(torch.randn_like(p) * 0.05)
    model = with_warp(base)
    x, t, ctx = inputs()
    assert torch.equal(model(x, t, ctx, chunk_frames=1, controls=clip_controls(3)),
                       base(x, t, ctx, chunk_frames=1, controls=clip_controls(3)))

    with torch.enable_grad():
        train_warp(model)
    moved = model(x, t, ctx, chunk_frames=1, controls=clip_controls(3))
    plain = base(x, t, ctx, chunk_frames=1, controls=clip_controls(3))
    assert torch.equal(moved[:, :, 0], plain[:, :, 0])  # frame 0 has no reference yet (zeros): nothing to move
    assert not torch.allclose(moved[:, :, 1:], plain[:, :, 1:])
    absent = clip_controls(3, present=torch.tensor([[True, False, True]]))  # frame 1 without controls
    moved, plain = (m(x, t, ctx, chunk_frames=1, controls=absent) for m in (model, base))
    assert torch.equal(moved[:, :, :2], plain[:, :, :2])  # frame-causal: frame 1's own input is all that differs
    assert not torch.allclose(moved[:, :, 2], plain[:, :, 2])


def test_the_warp_needs_a_reference_and_controls():
    with pytest.raises(ValueError, match="reference_warp must be 0 or, with frame_reference"):
        make_model(control=CONTROL, reference_warp=8)
    with pytest.raises(ValueError, match="needs a control module"):
        make_model(frame_reference=True, reference_warp=8)


@torch.no_grad()
def test_a_checkpoint_without_the_warp_loads_into_a_model_with_one(tmp_path):
    base = make_model(control=CONTROL, frame_reference=True)
    path = save_worldsim(base, tmp_path / "base.safetensors")
    cfg = dataclasses.replace(base.cfg, reference_warp=8)
    model = load_model(path, config=cfg)
    assert model.cfg.reference_warp == 8
    x, t, ctx = inputs()
    assert torch.equal(model(x, t, ctx, chunk_frames=1, controls=clip_controls(3)),
                       base(x, t, ctx, chunk_frames=1, controls=clip_controls(3)))
    warped = save_worldsim(model, tmp_path / "warped.safetensors")  # and round-trips with its weights
    assert load_model(warped).cfg.reference_warp == 8
    with pytest.raises(CheckpointError, match="reference weights, but the config has no such module"):
        load_model(warped, config=base.cfg)


def test_a_recipe_whose_preset_has_the_warp_adds_it_to_an_init_without_one(tmp_path):
    preset = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "model" / "tiny.yaml").read_text())
    preset.update(chunk_frames=1, frame_reference=True, reference_warp=8)
    (tmp_path / "warp.yaml").write_text(yaml.safe_dump(preset))
    recipe = load_recipe(RECIPES / "teacher_micro.yaml", [f"model={tmp_path / 'warp.yaml'}"])
    with_reference = save_worldsim(make_model(control=CONTROL, frame_reference=True, chunk_frames=1),
                                   tmp_path / "reference.safetensors")
    assert model_config(recipe, with_reference).reference_warp == 8
    plain = save_worldsim(make_model(control=CONTROL), tmp_path / "plain.safetensors")
    assert model_config(recipe, plain).reference_warp == 0  # no reference frame to warp: the header stands
    assert model_config(load_recipe(RECIPES / "teacher_micro.yaml"), with_reference).reference_warp == 0
