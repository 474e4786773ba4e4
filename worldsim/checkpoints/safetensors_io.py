"""Reading and writing single ``.safetensors`` files, with library errors turned into :class:`CheckpointError`.

safetensors reports a truncated or corrupt file as e.g. "Error while deserializing header: incomplete metadata,
file not fully covered" without saying which file; these helpers say which file and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..atomic_files import atomic_write
from .base import CheckpointError


def _unreadable(path: Path, err: Exception) -> CheckpointError:
    return CheckpointError(f"{path}: cannot read this safetensors file ({err}); it is truncated, corrupt or not a "
                           f"safetensors file. Re-download or re-save it.")


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors header (empty if none), without reading any tensor."""
    try:
        with safe_open(path, framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, err) from err


def read_tensors(path: Path, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of ``path`` on the CPU: all of them, or exactly ``keys`` (a missing one is an error naming it)."""
    try:
        with safe_open(path, framework="pt") as f:
            present = set(f.keys())
            wanted = sorted(present) if keys is None else list(keys)
            absent = [k for k in wanted if k not in present]
            if absent:
                raise CheckpointError(f"{path}: the shard index places key {absent[0]!r} in this file but it is not "
                                      f"there ({len(absent)} such key(s)); the shard is stale or from another save")
            return {k: f.get_tensor(k) for k in wanted}
    except (SafetensorError, OSError) as err:
        raise _unreadable(path, err) from err


def save_tensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``tensors`` (moved to the CPU, made contiguous) to ``path`` atomically."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"format": "pt", **(metadata or {})}
    return atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=meta))
