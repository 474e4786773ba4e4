"""Reading one plain weights file (a torch ``.pth``/``.pt`` state dict or a ``.safetensors`` file) safely.

The published VAE, text-encoder and TAEHV files are plain state dicts. Torch files are loaded with
``weights_only=True`` (tensors and containers only, never arbitrary objects) and memory-mapped, so a 10 GiB text
encoder is not read into RAM before its tensors move to the device (files in torch's legacy, non-zip format are
read whole).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from .checkpoints.base import CheckpointError, key_list
from .checkpoints.safetensors_io import read_tensors

TORCH_SUFFIXES = (".pth", ".pt", ".bin")


def read_weight_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of ``path`` (CPU) by name; CheckpointError for a missing, unreadable or non-state-dict file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return read_tensors(path)
    if path.suffix not in TORCH_SUFFIXES:
        raise CheckpointError(f"{path}: unknown weights file type {path.suffix!r}; expected .safetensors or "
                              f"{', '.join(TORCH_SUFFIXES)}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path}: cannot read this torch file ({first}); it is truncated, corrupt, or pickles "
                              f"more than tensors. Re-download it.") from err
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path}: expected a state dict (names -> tensors), got {type(data).__name__}")
    return dict(data)


def check_state_dict(path: Path, what: str, expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor],
                     prefix: str = "") -> None:
    """Raise CheckpointError unless ``got`` has exactly the keys and shapes of ``expected`` (a model's state dict),
    naming the missing, unexpected and misshapen keys (shown with ``prefix``, as the file spells them)."""
    missing = [prefix + k for k in expected if k not in got]
    unexpected = [prefix + k for k in got if k not in expected]
    wrong = [f"{prefix}{k} {tuple(got[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in got and got[k].shape != v.shape]
    problems = [f"{len(keys)} {kind}: {key_list(keys)}" for kind, keys in
                (("missing", missing), ("unexpected", unexpected), ("misshapen", wrong)) if keys]
    if problems:
        raise CheckpointError(f"{path}: does not fit {what}: " + "; ".join(problems))
