"""Reading any supported checkpoint into Wan-named weights, and building a ``CausalWanDiT`` from it.

The model is built on the meta device and the checkpoint tensors are assigned into it (no random initialisation
of 1.4 B parameters that would be overwritten at once). Loading is strict: every key of the model must be present
with the right shape and nothing else may be there, with one exception: a model whose config has a control module
may load a checkpoint without control weights (a published text-to-video checkpoint); that module then gets its
fresh initialisation, whose zero output layer leaves the pretrained model's behaviour unchanged.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from itertools import chain
from pathlib import Path

import torch

from ..model.config import DiTConfig, load_preset
from ..model.control import ControlEmbedding
from ..model.dit import CausalWanDiT
from ..model.reference_warp import ReferenceWarp
from .base import Checkpoint, CheckpointError, key_list
from .detect import resolve
from .diffusers_format import config_from_diffusers, read_diffusers_folder
from .self_forcing import read_self_forcing_pt
from .wan_format import CONTROL_PREFIXES, config_from_wan, read_wan_folder
from .weights_folder import CONFIG_NAME, read_config
from .worldsim_format import read_worldsim, read_worldsim_config

ConfigLike = DiTConfig | str | os.PathLike
# Fields a caller may choose freely: they do not change which weights the model has or how they are used (control
# frame_reference and reference_warp add zero-initialised modules that start as no-ops).
RUNTIME_FIELDS = ("control", "chunk_frames", "text_len", "frame_reference", "reference_warp")
SHOWN = 5  # keys listed per problem in an error message


def read_checkpoint(path: str | os.PathLike, *, use_ema: bool = True) -> Checkpoint:
    """Detect the format of ``path`` and read it into a :class:`Checkpoint` (Wan names)."""
    fmt, where = resolve(path)
    if fmt == "wan":
        return read_wan_folder(where)
    if fmt == "diffusers":
        return read_diffusers_folder(where)
    if fmt == "worldsim":
        return read_worldsim(where)
    return read_self_forcing_pt(where, use_ema=use_ema)


def load_state_dict(path: str | os.PathLike, *, use_ema: bool = True
                    ) -> tuple[dict[str, torch.Tensor], DiTConfig | None, str]:
    """(state dict in Wan names, the stored config or None for a Self-Forcing ``.pt``, format name)."""
    ckpt = read_checkpoint(path, use_ema=use_ema)
    return ckpt.state_dict, ckpt.config, ckpt.format


def load_model(path: str | os.PathLike, *, config: ConfigLike | None = None, use_ema: bool = True,
               dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> CausalWanDiT:
    """Build a ``CausalWanDiT`` from any supported checkpoint, in eval mode.

    config: overrides or supplies the architecture: a DiTConfig, a preset name or YAML path, or another
    checkpoint (e.g. the Wan2.1 folder for a Self-Forcing ``.pt``, which stores none). When the checkpoint has a
    config too, both must describe the same weights; only the control module, chunk size and text length may differ.
    use_ema: for a Self-Forcing ``.pt``, take ``generator_ema`` (default) or ``generator``.
    dtype: parameter dtype, float32 unless given. device: where the parameters live.
    """
    ckpt = read_checkpoint(path, use_ema=use_ema)
    cfg = _choose_config(ckpt, config)
    with torch.device("meta"):
        model = CausalWanDiT(cfg)
    fresh = _check_fit(ckpt, {k: v.shape for k, v in model.state_dict().items()}, cfg)
    dtype = dtype or torch.float32
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in ckpt.state_dict.items()},
                          strict=not fresh, assign=True)
    if "control_embedding." in fresh:
        model.control_embedding = ControlEmbedding(cfg.control, cfg.dim).to(device=device, dtype=dtype)
    if "reference_embedding." in fresh:
        conv = model.reference_embedding
        model.reference_embedding = torch.nn.Conv3d(conv.in_channels, conv.out_channels, conv.kernel_size,
                                                     conv.stride, device=device, dtype=dtype)
        torch.nn.init.zeros_(model.reference_embedding.weight)
        torch.nn.init.zeros_(model.reference_embedding.bias)
    if "reference_warp." in fresh:
        warp = model.reference_warp
        model.reference_warp = ReferenceWarp(cfg.in_dim, warp.film[0].in_features, warp.conv_in.out_channels
                                             ).to(device=device, dtype=dtype)
    on_meta = [n for n, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if on_meta:  # state that is neither in a checkpoint nor restored here: CausalWanDiT grew something new
        raise RuntimeError(f"load_model left {key_list(on_meta)} uninitialised; teach it how to build them")
    return model.eval()


def _choose_config(ckpt: Checkpoint, config: ConfigLike | None) -> DiTConfig:
    if config is None:
        if ckpt.config is None:
            raise CheckpointError(f"{ckpt.path}: a Self-Forcing checkpoint stores no architecture config; pass "
                                  f"config= a preset name (e.g. 'wan2.1-t2v-1.3b'), a DiTConfig, or the Wan2.1 folder")
        return ckpt.config
    given = _config_from(config, ckpt.state_dict)
    if ckpt.config is not None:
        diffs = [f"{f.name}={getattr(ckpt.config, f.name)!r} in the checkpoint, {getattr(given, f.name)!r} given"
                 for f in dataclasses.fields(DiTConfig)
                 if f.name not in RUNTIME_FIELDS and getattr(ckpt.config, f.name) != getattr(given, f.name)]
        if diffs:
            raise CheckpointError(f"{ckpt.path}: the given config describes another architecture: {'; '.join(diffs)}")
    return given


def _config_from(config: ConfigLike, state_dict: Mapping[str, torch.Tensor]) -> DiTConfig:
    """A DiTConfig from what the caller passed; a Wan folder's config is completed from ``state_dict``."""
    if isinstance(config, DiTConfig):
        return config
    path = Path(config)
    if path.suffix not in (".yaml", ".yml") and path.exists():
        fmt, where = resolve(path)
        if fmt == "wan":
            return config_from_wan(read_config(where), state_dict, where / CONFIG_NAME)
        if fmt == "diffusers":
            return config_from_diffusers(read_config(where), where / CONFIG_NAME)
        if fmt == "worldsim":
            return read_worldsim_config(where)
        raise CheckpointError(f"{where}: a Self-Forcing checkpoint holds no config to take")
    try:
        return load_preset(config)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"config={str(config)!r}: {err}") from err


def _check_fit(ckpt: Checkpoint, expected: Mapping[str, torch.Size], cfg: DiTConfig) -> set[str]:
    """Raise CheckpointError unless the weights fit the model exactly; returns the prefixes of worldsim's added
    modules (control, reference) whose weights are absent as a whole (and so must be freshly initialised)."""
    got = ckpt.state_dict
    missing = expected.keys() - got.keys()
    fresh = set()
    for prefix in CONTROL_PREFIXES:
        added = {k for k in expected if k.startswith(prefix)}
        if added and added <= missing:
            fresh.add(prefix)
            missing -= added
    unexpected = sorted(got.keys() - expected.keys())
    common = sorted(expected.keys() & got.keys())
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {key_list(missing, SHOWN)}")
    if unexpected:
        hint = (" (control or reference weights, but the config has no such module)"
                if all(k.startswith(CONTROL_PREFIXES) for k in unexpected) else "")
        shown = "; ".join(ckpt.where(k) for k in unexpected[:SHOWN])
        more = " ..." if len(unexpected) > SHOWN else ""
        problems.append(f"{len(unexpected)} unexpected key(s){hint}: {shown}{more}")
    wrong = [k for k in common if tuple(got[k].shape) != tuple(expected[k])]
    problems += [f"shape mismatch for {ckpt.where(k)}: the model expects {tuple(expected[k])}, the checkpoint has "
                 f"{tuple(got[k].shape)}" for k in wrong[:SHOWN]]
    if len(wrong) > SHOWN:
        problems.append(f"... {len(wrong)} shape mismatches in all")
    problems += [f"{ckpt.where(k)} has dtype {got[k].dtype}, not a floating-point type"
                 for k in common if not got[k].is_floating_point()][:SHOWN]
    if problems:
        arch = f"dim={cfg.dim}, num_layers={cfg.num_layers}, num_heads={cfg.num_heads}"
        raise CheckpointError(f"{ckpt.path}: the {ckpt.format} checkpoint does not fit the model ({arch}); check "
                              f"that the config matches the checkpoint:\n  - " + "\n  - ".join(problems))
    return fresh
