"""Shared fixtures: tiny Wan-shaped models with random (non-degenerate) weights, in fp32 on the CPU."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from worldsim.model.config import ControlConfig, DiTConfig, load_preset
from worldsim.model.dit import CausalWanDiT

torch.set_num_threads(2)

pytest_plugins = ["serve_helpers"]  # daemon fixtures: backend, make_daemon


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors and busy cores: a second intra-op thread only adds synchronisation, and a thread spinning while
    the daemon's other threads or a training run hold the other core stalls for seconds. Such tests run on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

CONTROL = ControlConfig(keys=("W", "A", "S", "D"), axes=("mouse_dx", "mouse_dy"), embedding_dim=5, frames_per_latent=4)


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.08) -> torch.nn.Module:
    """Give every parameter random values (Wan zero-inits the head, which would hide bugs), control path excluded."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("control_embedding"):
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def make_model(seed: int = 0, **overrides) -> CausalWanDiT:
    cfg = dataclasses.replace(load_preset("tiny"), **overrides)
    return randomize(CausalWanDiT(cfg), seed).eval()


@pytest.fixture
def tiny_cfg() -> DiTConfig:
    return load_preset("tiny")


@pytest.fixture
def model() -> CausalWanDiT:
    return make_model()


def text(batch: int = 1, seed: int = 0, cfg: DiTConfig | None = None) -> torch.Tensor:
    cfg = cfg or load_preset("tiny")
    return torch.randn(batch, cfg.text_len, cfg.text_dim, generator=torch.Generator().manual_seed(100 + seed))
