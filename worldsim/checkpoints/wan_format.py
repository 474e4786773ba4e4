"""The original Wan2.1 folder (``Wan-AI/Wan2.1-T2V-1.3B``): config.json + safetensors under bare Wan names.

Wan's config.json is written by diffusers for ``WanModel``, which never stores ``text_dim``, ``patch_size``,
``qk_norm`` or ``cross_attn_norm`` (they are in its ``ignore_for_config``), so the official loader always uses the
class defaults. Here those four are read off the weights instead: for the published checkpoints this gives the
same defaults, and it also lets smaller models of the same architecture round-trip through this layout.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model.config import DiTConfig, from_wan_config, to_wan_config
from .base import Checkpoint, CheckpointError
from .weights_folder import CONFIG_NAME, read_config, read_weights, write_folder

CLASS_NAMES = ("WanModel", "CausalWanModel")  # Wan2.1 itself, and Self-Forcing's causal subclass saved the same way
# worldsim's additions to the Wan DiT
CONTROL_PREFIXES = ("control_embedding.", "reference_embedding.", "reference_warp.")


def is_wan_config(config: Mapping[str, Any]) -> bool:
    name = config.get("_class_name")
    return name in CLASS_NAMES or (name is None and {"dim", "num_heads", "num_layers"} <= config.keys())


def config_from_wan(config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], where: Path) -> DiTConfig:
    """DiTConfig from Wan's config.json, completed with the fields only the weights can tell (see module doc)."""
    try:
        cfg = from_wan_config(dict(config))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{where}: {err}") from err
    found: dict[str, Any] = {}
    if "text_embedding.0.weight" in state_dict:
        found["text_dim"] = state_dict["text_embedding.0.weight"].shape[1]
    if "patch_embedding.weight" in state_dict:
        found["patch_size"] = tuple(state_dict["patch_embedding.weight"].shape[2:])
    if cfg.num_layers:
        found["qk_norm"] = any(k.endswith(".self_attn.norm_q.weight") for k in state_dict)
        found["cross_attn_norm"] = any(k.startswith("blocks.") and k.endswith(".norm3.weight") for k in state_dict)
    try:
        return dataclasses.replace(cfg, **found)
    except ValueError as err:
        raise CheckpointError(f"{where}: the weights imply an unsupported architecture: {err}") from err


def read_wan_folder(folder: Path) -> Checkpoint:
    raw = read_config(folder)
    tensors, files, source = read_weights(folder)
    cfg = config_from_wan(raw, tensors, folder / CONFIG_NAME)
    return Checkpoint(tensors, cfg, "wan", source, {k: (f, k) for k, f in files.items()})


def base_state_dict(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
                    layout: str) -> dict[str, torch.Tensor]:
    """The Wan-named tensors to publish; control and reference weights have no place in the published layouts."""
    sd = dict(model_or_state_dict.state_dict() if isinstance(model_or_state_dict, nn.Module) else model_or_state_dict)
    control = [k for k in sd if k.startswith(CONTROL_PREFIXES)]
    if control:
        raise ValueError(f"the {layout} layout has no place for control weights ({control[0]!r}, ...); save with "
                         f"save_worldsim, or pass the state dict without the {'*, '.join(CONTROL_PREFIXES)}* keys")
    return sd


def save_wan_folder(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], cfg: DiTConfig | None,
                    directory: str | Path, shards: int | None = None) -> Path:
    """Write the published Wan2.1 layout: config.json (``to_wan_config``) and the weights as one safetensors file,
    or as ``shards`` files plus their index. ``cfg`` may be None when a model is given (its own config is used)."""
    cfg = cfg or getattr(model_or_state_dict, "cfg", None)
    if cfg is None:
        raise ValueError("save_wan_folder needs cfg when given a state dict")
    return write_folder(Path(directory), to_wan_config(cfg), base_state_dict(model_or_state_dict, "Wan2.1"), shards)
