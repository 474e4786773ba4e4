"""Training recipes: typed dataclasses read from ``configs/train/*.yaml`` plus ``key=value`` overrides.

A recipe has the shared trainer keys below and a free ``stage:`` block that the stage parses into its own
``Options`` dataclass. Overrides use dotted paths and YAML values: ``optim.lr=3e-4 data.batch_size=8``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


def _coerce_floats(obj) -> None:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; turn such values of float fields into floats."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if f.type == "float" and isinstance(v, (str, int)) and not isinstance(v, bool):
            try:
                setattr(obj, f.name, float(v))
            except ValueError as err:
                raise ValueError(f"{f.name} must be a number, got {v!r}") from err


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping
    warmup_steps: int = 0  # linear learning-rate warmup

    def __post_init__(self) -> None:
        _coerce_floats(self)
        self.betas = tuple(float(b) for b in self.betas)


@dataclass
class DataConfig:
    path: str | None = None  # dataset directory (docs/DATASET.md); --data overrides
    codec: str | None = None  # latent stages: toy codec (`worldsim train codec`) or Wan2.1_VAE.pth / a vae/ folder
    text_encoder: str | None = None  # None: the hashing embedder; else UMT5 (Wan's .pth or a text_encoder/ folder)
    tokenizer: str | None = None  # UMT5 tokenizer folder (default: google/umt5-xxl or tokenizer/ beside the encoder)
    clip_chunks: int = 2  # clip length in chunks of the model's chunk_frames latent frames
    clip_frames: int = 8  # clip length in video frames for frame stages (the codec)
    batch_size: int = 4  # per process
    val_episodes: int = 1  # episodes held out for validation (the last ones)


@dataclass
class TrainConfig:
    model: str = "toy"  # DiT preset name or YAML path (stages that build a DiT)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    stage: dict[str, Any] = field(default_factory=dict)  # stage-specific options (the stage's Options)
    out: str = "runs/train"
    max_steps: int = 1000  # optimizer steps
    max_minutes: float = 0.0  # also stop (and export) at the first step after this much training time; 0: no limit
    grad_accum: int = 1
    mixed_precision: str = "no"  # "no" | "bf16" (autocast; parameters stay fp32)
    gradient_checkpointing: bool = False
    ema_decay: float = 0.999
    ema_start: int = 0  # first step whose update feeds the EMA (the EMA starts as a copy of the weights then)
    seed: int = 0
    log_every: int = 10
    val_every: int = 200
    val_batches: int = 4
    sample_every: int = 500
    ckpt_every: int = 200
    keep_checkpoints: int = 3  # newest complete checkpoints kept; older ones are deleted
    package: bool = False  # also make OUT/final a model package for a stage that does not by default (teacher)

    def __post_init__(self) -> None:
        if isinstance(self.data, dict):
            self.data = DataConfig(**self.data)
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)
        _coerce_floats(self)
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {self.mixed_precision!r}")
        if self.grad_accum < 1 or self.max_steps < 0 or self.max_minutes < 0:
            raise ValueError("grad_accum must be >= 1, max_steps >= 0 and max_minutes >= 0")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["optim"]["betas"] = list(self.optim.betas)
        return d


def _set(d: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ValueError(f"override {dotted!r}: {p!r} is not a mapping")
    d[leaf] = value


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a recipe YAML (None: all defaults) and apply ``key=value`` overrides (values parsed as YAML)."""
    data: dict[str, Any] = {}
    if path is not None:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a training recipe must be a YAML mapping")
    data.pop("description", None)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        _set(data, key, yaml.safe_load(value))
    try:
        return TrainConfig(**data)
    except TypeError as err:
        raise ValueError(f"{path or 'recipe'}: {err}") from err
