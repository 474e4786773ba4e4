"""Typed configuration of the causal Wan2.1 DiT and its optional control module.

Presets live as YAML files in ``configs/model/`` at the repository root; ``load_preset("wan2.1-t2v-1.3b")``
reads one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class ControlConfig:
    """Schema of the per-video-frame controls a model accepts (reference §8.1).

    keys: named binary channels (e.g. W, A, S, D); axes: named continuous channels (e.g. mouse_dx);
    embedding_dim: width of an opaque engine vector (0 = none); frames_per_latent: video frames grouped into
    one latent frame (4 for the Wan VAE, 1 for a per-frame codec).
    """

    keys: tuple[str, ...] = ()
    axes: tuple[str, ...] = ()
    embedding_dim: int = 0
    frames_per_latent: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "axes", tuple(self.axes))
        if self.frames_per_latent < 1:
            raise ValueError(f"control.frames_per_latent must be >= 1, got {self.frames_per_latent}")
        if self.embedding_dim < 0:
            raise ValueError(f"control.embedding_dim must be >= 0, got {self.embedding_dim}")
        if not (self.keys or self.axes or self.embedding_dim):
            raise ValueError("control config declares no keys, no axes and no embedding")
        for names, what in ((self.keys, "keys"), (self.axes, "axes")):
            if len(set(names)) != len(names):
                raise ValueError(f"control.{what} has duplicate names: {list(names)}")

    @property
    def frame_dim(self) -> int:
        """Values per video frame fed to the control MLP: keys | axes | embedding | 3 presence bits."""
        return len(self.keys) + len(self.axes) + self.embedding_dim + 3


@dataclass(frozen=True)
class DiTConfig:
    """Hyperparameters of the causal Wan2.1 DiT (names follow the original Wan ``WanModel``)."""

    dim: int = 1536
    ffn_dim: int = 8960
    freq_dim: int = 256
    text_dim: int = 4096
    num_heads: int = 12
    num_layers: int = 30
    patch_size: tuple[int, int, int] = (1, 2, 2)
    in_dim: int = 16
    out_dim: int = 16
    text_len: int = 512
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    chunk_frames: int = 3  # latent frames generated per step of a streaming session (num_frame_per_block)
    control: ControlConfig | None = None
    frame_reference: bool = False  # each frame also sees the clean latent before its chunk (model/control.py)
    reference_warp: int = 0  # > 0: hidden channels of the control-conditioned warp of that frame (reference_warp.py)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(self.patch_size))
        if isinstance(self.control, dict):
            object.__setattr__(self, "control", ControlConfig(**self.control))
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head_dim {self.head_dim} must be even and >= 6 for 3-D RoPE")
        if self.patch_size[0] != 1:
            raise ValueError(f"temporal patch size must be 1 for frame-wise causality, got {self.patch_size}")
        if self.chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {self.chunk_frames}")
        if self.reference_warp < 0 or (self.reference_warp and not self.frame_reference):
            raise ValueError(f"reference_warp must be 0 or, with frame_reference, > 0; got {self.reference_warp}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patch_size"] = list(self.patch_size)
        if self.control is not None:
            d["control"]["keys"] = list(self.control.keys)
            d["control"]["axes"] = list(self.control.axes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DiTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DiT config keys: {unknown} (known: {sorted(known)})")
        return cls(**d)

    def with_control(self, control: ControlConfig | None) -> "DiTConfig":
        return dataclasses.replace(self, control=control)


# Keys of Wan's config.json (written by diffusers for ``WanModel``) and their DiTConfig names.
WAN_CONFIG_KEYS = {
    "dim": "dim",
    "ffn_dim": "ffn_dim",
    "freq_dim": "freq_dim",
    "in_dim": "in_dim",
    "out_dim": "out_dim",
    "num_heads": "num_heads",
    "num_layers": "num_layers",
    "text_len": "text_len",
    "eps": "eps",
}


def from_wan_config(wan: dict[str, Any]) -> DiTConfig:
    """Build a config from Wan2.1's ``config.json``.

    ``patch_size``, ``text_dim``, ``qk_norm`` and ``cross_attn_norm`` are never written there (diffusers ignores
    them), so the class defaults apply — which are the published 1.3B/14B values.
    """
    if wan.get("model_type", "t2v") != "t2v":
        raise ValueError(f"only Wan text-to-video models are supported, config says model_type={wan['model_type']!r}")
    kwargs = {ours: wan[theirs] for theirs, ours in WAN_CONFIG_KEYS.items() if theirs in wan}
    return DiTConfig(**kwargs)


def to_wan_config(cfg: DiTConfig) -> dict[str, Any]:
    """The ``config.json`` Wan2.1 ships (the keys diffusers writes for ``WanModel``)."""
    out: dict[str, Any] = {"_class_name": "WanModel", "_diffusers_version": "0.33.0", "model_type": "t2v"}
    out.update({theirs: getattr(cfg, ours) for theirs, ours in WAN_CONFIG_KEYS.items()})
    return out


def preset_dirs() -> list[Path]:
    """Where presets are looked up: ``configs/model`` (the checkout's, or the installed copy)."""
    from ..resources import configs_dir

    return [configs_dir() / "model"]


def load_preset(name_or_path: str | Path) -> DiTConfig:
    """Load a DiT preset by name (``configs/model/<name>.yaml``) or from a YAML path."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        candidates = [d / f"{name_or_path}.yaml" for d in preset_dirs()]
        found = [c for c in candidates if c.is_file()]
        if not found:
            names = sorted({p.stem for d in preset_dirs() if d.is_dir() for p in d.glob("*.yaml")})
            raise FileNotFoundError(f"no model preset named {name_or_path!r}; available: {names}")
        path = found[0]
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a model preset must be a YAML mapping")
    data.pop("description", None)
    try:
        return DiTConfig.from_dict(data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e


