"""A diffusers ``WanTransformer3DModel`` folder (e.g. the ``transformer/`` folder of a diffusers Wan pipeline).

Same file layout as the Wan folder, but the config uses diffusers' names and the weights diffusers' module names.
Reading maps the names back with :data:`DIFFUSERS_TO_WAN`, our own table; writing uses diffusers' converter
(``convert_wan_transformer_to_diffusers``), so what we write is exactly what diffusers itself would produce, and the
tests check that the table inverts that converter on every key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model.config import DiTConfig
from .base import Checkpoint, CheckpointError
from .wan_format import base_state_dict
from .weights_folder import CONFIG_NAME, read_config, read_weights, write_folder

CLASS_NAME = "WanTransformer3DModel"
QK_NORM = "rms_norm_across_heads"  # RMSNorm over the full width of q and k, as in Wan; the only variant supported

# diffusers module (or parameter) name -> Wan name, outside the transformer blocks.
DIFFUSERS_TO_WAN_GLOBAL = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "proj_out": "head.head",
    "scale_shift_table": "head.modulation",  # parameter [1, 2, dim]
}

# The same inside ``blocks.N.``. diffusers numbers the block's LayerNorms in call order (norm1 self-attn, norm2
# cross-attn, norm3 FFN) while Wan calls the cross-attention one norm3; only that one has weights, so diffusers'
# ``norm2`` is Wan's ``norm3``.
DIFFUSERS_TO_WAN_BLOCK = {
    **{f"attn1.{d}": f"self_attn.{w}" for d, w in
       (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "o"), ("norm_q", "norm_q"), ("norm_k", "norm_k"))},
    **{f"attn2.{d}": f"cross_attn.{w}" for d, w in
       (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "o"), ("norm_q", "norm_q"), ("norm_k", "norm_k"))},
    "norm2": "norm3",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
    "scale_shift_table": "modulation",  # parameter [1, 6, dim]
}


def diffusers_to_wan_key(key: str) -> str:
    """Wan name of a diffusers ``WanTransformer3DModel`` key; KeyError for keys Wan T2V has no counterpart for
    (image or VACE branches)."""
    prefix, rest, table = "", key, DIFFUSERS_TO_WAN_GLOBAL
    parts = key.split(".")
    if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit():
        prefix, rest, table = f"blocks.{parts[1]}.", ".".join(parts[2:]), DIFFUSERS_TO_WAN_BLOCK
    if rest in table:  # a bare parameter such as scale_shift_table
        return prefix + table[rest]
    module, _, param = rest.rpartition(".")
    if module in table:
        return f"{prefix}{table[module]}.{param}"
    raise KeyError(key)


def diffusers_to_wan(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a whole diffusers state dict to Wan names (tensors are shared, not copied)."""
    return {diffusers_to_wan_key(k): v for k, v in state_dict.items()}


def is_diffusers_config(config: Mapping[str, Any]) -> bool:
    return config.get("_class_name") == CLASS_NAME


def config_from_diffusers(config: Mapping[str, Any], where: Path) -> DiTConfig:
    """DiTConfig from a ``WanTransformer3DModel`` config.json (text_len is not stored there; the default applies)."""
    image_keys = ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len")
    unsupported = {k: config[k] for k in image_keys if config.get(k) is not None}
    if unsupported:
        raise CheckpointError(f"{where}: image-conditioned Wan models are not supported ({unsupported})")
    if config.get("qk_norm") not in (QK_NORM, None):
        raise CheckpointError(f"{where}: qk_norm={config['qk_norm']!r} is not supported (only {QK_NORM!r} or null)")
    try:
        heads, head_dim = config["num_attention_heads"], config["attention_head_dim"]
        return DiTConfig(dim=heads * head_dim, num_heads=heads, ffn_dim=config["ffn_dim"], freq_dim=config["freq_dim"],
                         text_dim=config["text_dim"], num_layers=config["num_layers"],
                         patch_size=tuple(config["patch_size"]), in_dim=config["in_channels"],
                         out_dim=config["out_channels"], eps=config["eps"], qk_norm=config.get("qk_norm") is not None,
                         cross_attn_norm=config["cross_attn_norm"])
    except KeyError as err:
        raise CheckpointError(f"{where}: missing config key {err.args[0]!r}") from err
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: invalid config: {err}") from err


def diffusers_config(cfg: DiTConfig) -> dict[str, Any]:
    """The config.json diffusers writes for a ``WanTransformer3DModel`` of this shape."""
    import diffusers

    return {
        "_class_name": CLASS_NAME, "_diffusers_version": diffusers.__version__,
        "added_kv_proj_dim": None, "attention_head_dim": cfg.head_dim, "cross_attn_norm": cfg.cross_attn_norm,
        "eps": cfg.eps, "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "image_dim": None,
        "in_channels": cfg.in_dim, "num_attention_heads": cfg.num_heads, "num_layers": cfg.num_layers,
        "out_channels": cfg.out_dim, "patch_size": list(cfg.patch_size), "pos_embed_seq_len": None,
        "qk_norm": QK_NORM if cfg.qk_norm else None, "rope_max_seq_len": 1024, "text_dim": cfg.text_dim,
    }


def read_diffusers_folder(folder: Path) -> Checkpoint:
    cfg = config_from_diffusers(read_config(folder), folder / CONFIG_NAME)
    tensors, files, source = read_weights(folder)
    state_dict, stored = {}, {}
    for key, tensor in tensors.items():
        try:
            wan_key = diffusers_to_wan_key(key)
        except KeyError:
            raise CheckpointError(f"{files[key]}: key {key!r} has no Wan2.1 text-to-video counterpart "
                                  f"(image/VACE weights are not supported)") from None
        state_dict[wan_key] = tensor
        stored[wan_key] = (files[key], key)
    return Checkpoint(state_dict, cfg, "diffusers", source, stored)


def save_diffusers_folder(model_or_state_dict: nn.Module | Mapping[str, torch.Tensor], cfg: DiTConfig | None,
                          directory: str | Path, shards: int | None = None) -> Path:
    """Write a ``WanTransformer3DModel`` folder: diffusers' config.json and the weights renamed by diffusers' own
    converter, as one file or ``shards`` files plus index. ``cfg`` may be None when a model is given."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    cfg = cfg or getattr(model_or_state_dict, "cfg", None)
    if cfg is None:
        raise ValueError("save_diffusers_folder needs cfg when given a state dict")
    # the converter empties the dict it is given; base_state_dict returns a fresh one
    tensors = convert_wan_transformer_to_diffusers(base_state_dict(model_or_state_dict, "diffusers"))
    return write_folder(Path(directory), diffusers_config(cfg), tensors, shards)
