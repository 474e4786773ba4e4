"""Self-Forcing training checkpoints (``model.pt``, ``self_forcing_dmd.pt``, ``ode_init.pt``).

A torch pickle of state dicts: ``generator`` (and ``critic``) as FSDP full state dicts of the training wrapper, so
keys read ``model.<Wan key>``, plus ``generator_ema`` once EMA has started (the released DMD file holds only that);
``ode_init.pt`` may use ``model``. Depending on how FSDP, activation checkpointing and torch.compile wrapped the
modules, names can carry ``_fsdp_wrapped_module.``, ``_checkpoint_wrapped_module.`` or ``_orig_mod.``. The file
stores no architecture config: the caller supplies one (a preset or the Wan2.1 folder).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..atomic_files import atomic_write
from .base import Checkpoint, CheckpointError, key_list

log = logging.getLogger(__name__)

EMA_ORDER = ("generator_ema", "generator", "model")  # default: the EMA weights, as Self-Forcing's --use_ema
RAW_ORDER = ("generator", "model")  # use_ema=False
WRAPPER_INFIX = re.compile(r"(?:_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")
WRAPPER_PREFIX = "model."  # the DiT sits at WanDiffusionWrapper.model


def wan_key(stored: str) -> str:
    """Wan name of a stored key: wrapper infixes and the leading ``model.`` removed."""
    return WRAPPER_INFIX.sub("", stored).removeprefix(WRAPPER_PREFIX)


def read_self_forcing_pt(path: Path, use_ema: bool = True) -> Checkpoint:
    """Weights of the chosen container: ``generator_ema`` then ``generator`` then ``model`` (EMA first), or
    ``generator`` then ``model`` with ``use_ema=False``."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt pickle can fail in any way (IndexError, KeyError, ...): all mean "unreadable"
        raise CheckpointError(f"{path}: cannot read this torch checkpoint ({_reason(err)}); it is truncated or "
                              f"corrupt, or pickles objects other than tensors and containers, which are not "
                              f"unpickled for safety. Re-download or re-save it.") from err
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a dict of state dicts, got {type(data).__name__}")
    order = EMA_ORDER if use_ema else RAW_ORDER
    name = next((c for c in order if isinstance(data.get(c), Mapping)), None)
    if name is None:
        raise CheckpointError(f"{path}: none of the containers {list(order)} is present; the file holds "
                              f"{key_list(map(str, data.keys()))}")
    if use_ema and name != "generator_ema":
        log.info("%s: no generator_ema, loading %r", path, name)
    state_dict, stored = {}, {}
    for key, tensor in data[name].items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: {name}[{key!r}] is a {type(tensor).__name__}, not a tensor")
        new = wan_key(key)
        if new in state_dict:
            raise CheckpointError(f"{path}: {stored[new][1]} and {name}[{key!r}] both name the weight {new!r}")
        state_dict[new] = tensor
        stored[new] = (path, f"{name}[{key!r}]")
    return Checkpoint(state_dict, None, "self_forcing", path, stored)


def _reason(err: Exception) -> str:
    """The informative part of a torch.load error: the unpickler's own complaint (torch wraps it in advice to
    retry with weights_only=False, which would allow arbitrary code), else the first sentence."""
    text = str(err).strip()
    if "WeightsUnpickler error:" in text:
        return text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
    return text.splitlines()[0].split(". ")[0] if text else type(err).__name__


def _training_names(state_dict: Mapping[str, torch.Tensor], fsdp_infix: bool) -> dict[str, torch.Tensor]:
    """Keys as the trainer saves them: ``model.`` + Wan key, optionally with the FSDP wrapper infixes of a
    per-block-wrapped model (``model._fsdp_wrapped_module.blocks.0._fsdp_wrapped_module.<rest>``)."""
    def name(key: str) -> str:
        if fsdp_infix:
            key = "_fsdp_wrapped_module." + re.sub(r"^(blocks\.\d+\.)", r"\1_fsdp_wrapped_module.", key)
        return WRAPPER_PREFIX + key

    return {name(k): v.detach().to("cpu") for k, v in state_dict.items()}


def save_self_forcing_pt(state_dict: Mapping[str, torch.Tensor], path: str | Path,
                         ema: bool | Mapping[str, torch.Tensor] = True, fsdp_infix: bool = False) -> Path:
    """Write a Self-Forcing-style training checkpoint ``{"generator": ..., "generator_ema": ...}`` atomically.

    ema: True stores the same weights as ``generator_ema`` too, False leaves it out, a state dict stores those
    (different) weights as the EMA. fsdp_infix: spell keys as an FSDP-wrapped trainer does.
    """
    data = {"generator": _training_names(state_dict, fsdp_infix)}
    if ema is not False:
        data["generator_ema"] = _training_names(state_dict if ema is True else ema, fsdp_infix)
    return atomic_write(Path(path), lambda tmp: torch.save(data, tmp))
