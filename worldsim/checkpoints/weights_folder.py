"""The folder layout Wan2.1 and diffusers share: ``config.json`` plus ``diffusion_pytorch_model`` weights.

The weights are either one ``diffusion_pytorch_model.safetensors`` or shards
``diffusion_pytorch_model-0000i-of-0000N.safetensors`` listed by ``diffusion_pytorch_model.safetensors.index.json``
(``{"metadata": {"total_size": bytes}, "weight_map": {key: shard file}}``), the Hugging Face convention.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..atomic_files import atomic_write
from .base import CheckpointError
from .safetensors_io import read_tensors, save_tensors

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


def shard_name(i: int, n: int) -> str:
    """File name of shard ``i`` (1-based) of ``n``."""
    return f"diffusion_pytorch_model-{i:05d}-of-{n:05d}.safetensors"


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: missing; a model folder needs its config.json") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Path], Path]:
    """All tensors of the folder, the file each key came from, and the file that describes them (the single
    weights file, else the shard index)."""
    single, index = folder / WEIGHTS_NAME, folder / INDEX_NAME
    if single.is_file():
        tensors = read_tensors(single)
        return tensors, dict.fromkeys(tensors, single), single
    if not index.is_file():
        raise CheckpointError(f"{folder}: no weights; expected {WEIGHTS_NAME} or {INDEX_NAME} with its shards")
    weight_map = _read_weight_map(index)
    by_shard: dict[str, list[str]] = {}
    for key, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(key)
    tensors, files = {}, {}
    for shard, keys in sorted(by_shard.items()):
        path = folder / shard
        if not path.is_file():
            raise CheckpointError(f"{index}: names shard {shard!r} (holding e.g. key {keys[0]!r}) but {path} does not "
                                  f"exist; copy the missing shard or re-save the checkpoint")
        tensors.update(read_tensors(path, keys))
        files.update(dict.fromkeys(keys, path))
    return tensors, files, index


def _read_weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index}: not a shard index (a JSON object with a 'weight_map'): {err!r}") from err
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: 'weight_map' must map each key to a shard file name")
    return weight_map


def write_folder(folder: Path, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                 shards: int | None) -> Path:
    """Write config.json and the weights (one file, or ``shards`` files plus the index); weight files of an earlier
    save that this one did not write are removed so the folder never mixes two layouts."""
    folder.mkdir(parents=True, exist_ok=True)
    config_text = json.dumps(dict(config), indent=2, sort_keys=True) + "\n"
    atomic_write(folder / CONFIG_NAME, lambda tmp: tmp.write_text(config_text))
    if shards is None:
        save_tensors(tensors, folder / WEIGHTS_NAME)
        written = {WEIGHTS_NAME}
    else:
        groups = _split(tensors, shards)
        weight_map = {}
        for i, keys in enumerate(groups, 1):
            name = shard_name(i, len(groups))
            save_tensors({k: tensors[k] for k in keys}, folder / name)
            weight_map.update(dict.fromkeys(keys, name))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        atomic_write(folder / INDEX_NAME, lambda tmp: tmp.write_text(json.dumps(index, indent=2) + "\n"))
        written = {INDEX_NAME, *weight_map.values()}
    for stale in folder.glob("diffusion_pytorch_model*.safetensors*"):
        if stale.name not in written:
            stale.unlink()
    return folder


def _split(tensors: Mapping[str, torch.Tensor], shards: int) -> list[list[str]]:
    """Sorted keys cut into ``shards`` non-empty runs of roughly equal byte size."""
    keys = sorted(tensors)
    if not 1 <= shards <= len(keys):
        raise ValueError(f"shards must be between 1 and the number of tensors ({len(keys)}), got {shards}")
    total = sum(tensors[k].numel() * tensors[k].element_size() for k in keys)
    groups: list[list[str]] = [[]]
    done = 0
    for i, key in enumerate(keys):
        must_open = len(keys) - i <= shards - len(groups)  # one key left per shard still to open
        if groups[-1] and len(groups) < shards and (must_open or done >= total * len(groups) / shards):
            groups.append([])
        groups[-1].append(key)
        done += tensors[key].numel() * tensors[key].element_size()
    return groups
