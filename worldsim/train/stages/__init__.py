"""Training stages. ``STAGES`` maps CLI names to ``module:Class`` (imported on first use, so listing the stages
needs no torch, and the ode-init / self-forcing stages load only when asked for). The contract: :mod:`.base`."""

from __future__ import annotations

import importlib

STAGES: dict[str, str] = {
    "codec": "worldsim.train.stages.codec:CodecStage",
    "flow": "worldsim.train.stages.flow:FlowStage",
    "teacher": "worldsim.train.stages.teacher:TeacherStage",
    "ode-init": "worldsim.train.stages.ode_init:ODEInitStage",
    "self-forcing": "worldsim.train.stages.self_forcing:SelfForcingStage",
}


def stage_class(name: str):
    """The Stage subclass registered as ``name``."""
    if name not in STAGES:
        raise ValueError(f"unknown training stage {name!r}; stages: {sorted(STAGES)}")
    module, cls = STAGES[name].split(":")
    return getattr(importlib.import_module(module), cls)
