"""worldsim's own format: one ``.safetensors`` file holding the model and its config.

Tensors use the native (Wan) names, control weights included; the header metadata carries
``{"worldsim_format": "1", "config": <DiTConfig as JSON>}``, so the file alone rebuilds the exact model (control
schema and chunk size too). Saving is atomic: a crash leaves the previous file, never half a new one.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..model.config import DiTConfig
from .base import Checkpoint, CheckpointError
from .safetensors_io import read_metadata, read_tensors, save_tensors

FORMAT_KEY = "worldsim_format"
FORMAT_VERSION = "1"


def is_worldsim_file(path: Path) -> bool:
    return path.suffix == ".safetensors" and FORMAT_KEY in read_metadata(path)


def read_worldsim_config(path: Path) -> DiTConfig:
    """The DiTConfig stored in the header, without reading the tensors."""
    meta = read_metadata(path)
    version = meta.get(FORMAT_KEY)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: worldsim format version {version!r} is not supported (this worldsim reads "
                              f"version {FORMAT_VERSION!r}); upgrade worldsim")
    try:
        return DiTConfig.from_dict(json.loads(meta["config"]))
    except (KeyError, json.JSONDecodeError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: the 'config' metadata is missing or invalid: {err!r}") from err


def read_worldsim(path: Path) -> Checkpoint:
    cfg = read_worldsim_config(path)
    tensors = read_tensors(path)
    return Checkpoint(tensors, cfg, "worldsim", path, {k: (path, k) for k in tensors})


def save_worldsim(model, path: str | Path, state_dict: dict | None = None) -> Path:
    """Save a ``CausalWanDiT`` (weights in their current dtype, and ``model.cfg``) to ``path`` atomically.

    state_dict: other weights for the same model (an EMA, a gathered FSDP state) to save instead of its own."""
    return save_tensors(model.state_dict() if state_dict is None else state_dict, Path(path), worldsim_metadata(model))


def worldsim_metadata(model) -> dict[str, str]:
    """The safetensors header that makes a file of this model's weights a worldsim checkpoint."""
    return {FORMAT_KEY: FORMAT_VERSION, "config": json.dumps(model.cfg.to_dict())}
