"""The UMT5-XXL text encoder of Wan2.1, run by transformers' ``UMT5EncoderModel``.

Weights: Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` (Wan's own module names, mapped below) or a diffusers
``text_encoder/`` folder; tokenizer: ``google/umt5-xxl/`` or a diffusers ``tokenizer/`` folder. Everything loads
from local files.

Wan's encoder is a T5 v1.1 encoder: RMS norms, attention without scaling and with a relative-position bias in every
block (UMT5's layout), and a gated-GELU (tanh approximation) feed-forward ``fc2(fc1(x) * gelu(gate(x)))``. So Wan's
``gate.0`` is transformers' activated ``wi_0``, ``fc1`` its linear ``wi_1`` and ``fc2`` its ``wo``.

Prompts are cleaned as Wan does, tokenised to exactly ``text_len`` (512) positions with the end-of-sequence token,
encoded with the padding mask, and the outputs past each prompt's length are set to zero: [B, text_len, d_model].
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..checkpoints.base import CheckpointError, key_list
from ..weight_files import check_state_dict, read_weight_file
from .cleaning import clean_prompt

# Wan name -> transformers UMT5EncoderModel name, outside the blocks and inside ``blocks.{i}.``/``encoder.block.{i}.``.
WAN_TO_HF_GLOBAL = {
    "token_embedding.weight": "shared.weight",
    "norm.weight": "encoder.final_layer_norm.weight",
}
WAN_TO_HF_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",  # goes through the GELU
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
TIED_EMBEDDING = "encoder.embed_tokens.weight"  # the same tensor as shared.weight in UMT5EncoderModel
MAX_DISTANCE = 128  # Wan's relative-position max distance (T5's default)
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")


def wan_to_hf_key(key: str) -> str:
    """transformers name of a Wan T5-encoder key; KeyError for a name Wan's encoder does not have."""
    if key in WAN_TO_HF_GLOBAL:
        return WAN_TO_HF_GLOBAL[key]
    m = _BLOCK_KEY.fullmatch(key)
    if m and m.group(2) in WAN_TO_HF_BLOCK:
        return f"encoder.block.{m.group(1)}.{WAN_TO_HF_BLOCK[m.group(2)]}"
    raise KeyError(key)


def umt5_config_from_wan(state_dict: Mapping[str, torch.Tensor], where: Path):
    """The ``UMT5Config`` a Wan-format encoder state dict describes (every size read off the weights)."""
    from transformers import UMT5Config

    try:
        vocab, d_model = state_dict["token_embedding.weight"].shape
        buckets, heads = state_dict["blocks.0.pos_embedding.embedding.weight"].shape
        inner = state_dict["blocks.0.attn.q.weight"].shape[0]
        d_ff = state_dict["blocks.0.ffn.fc1.weight"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"{where}: not a Wan UMT5 encoder state dict (no {err.args[0]!r}; holds "
                              f"{key_list(state_dict)})") from None
    layers = len({m.group(1) for k in state_dict if (m := _BLOCK_KEY.fullmatch(k))})
    return UMT5Config(vocab_size=vocab, d_model=d_model, d_kv=inner // heads, d_ff=d_ff, num_layers=layers,
                      num_heads=heads, relative_attention_num_buckets=buckets,
                      relative_attention_max_distance=MAX_DISTANCE, feed_forward_proj="gated-gelu",
                      layer_norm_epsilon=1e-6, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                      tie_word_embeddings=False)


def load_umt5_encoder(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                      device: str | torch.device = "cpu"):
    """A ``UMT5EncoderModel`` in eval mode from Wan's ``.pth`` (keys mapped, loaded strictly) or a diffusers
    ``text_encoder/`` folder. CheckpointError names the file and the keys that do not fit."""
    from transformers import UMT5EncoderModel

    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: not a transformers text-encoder folder (no config.json)")
        return UMT5EncoderModel.from_pretrained(path, dtype=dtype, local_files_only=True).to(device).eval()
    wan = read_weight_file(path)
    config = umt5_config_from_wan(wan, path)
    hf = {}
    for key, tensor in wan.items():
        try:
            hf[wan_to_hf_key(key)] = tensor.to(dtype)
        except KeyError:
            hf[key] = tensor  # not a Wan encoder name: reported as unexpected, under its own name
    if "shared.weight" in hf:
        hf[TIED_EMBEDDING] = hf["shared.weight"]  # one tensor for both names, converted once
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    check_state_dict(path, f"UMT5EncoderModel ({config.num_layers} layers, d_model {config.d_model}; transformers "
                     f"names)", model.state_dict(), hf)
    model.load_state_dict(hf, strict=True, assign=True)
    model.tie_weights()
    if dtype == torch.float16:  # as from_pretrained does: T5's output projections overflow in fp16
        for name, module in model.named_modules():
            if name.rsplit(".", 1)[-1] in (model._keep_in_fp32_modules or ()):
                module.float()
    return model.to(device).eval()


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer in a local folder (``google/umt5-xxl/`` or diffusers ``tokenizer/``)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no tokenizer folder")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


class UMT5TextEncoder:
    """Prompts -> Wan text context [B, text_len, d_model], cached by cleaned prompt.

    device: where the encoder runs. offload: keep the encoder on the CPU between calls and move it to ``device``
    only to encode (a 24 GB card then holds the DiT and VAE, not 11 GiB of text encoder, while generating).
    cache_size: prompts whose embeddings are kept (on the CPU); batch_size: prompts encoded per forward.
    """

    def __init__(self, model, tokenizer, *, text_len: int = 512, device: str | torch.device | None = None,
                 offload: bool = False, cache_size: int = 256, batch_size: int = 8, identity: str = "umt5"):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.text_len = text_len
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.offload = offload
        self.cache_size = cache_size
        self.batch_size = batch_size
        self.identity = identity  # names the weights for on-disk embedding caches (the training data loader's)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.model.to("cpu" if offload else self.device)

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @torch.no_grad()
    def encode(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """[B, text_len, d_model] on ``device``, in the encoder's dtype; zero past each prompt's tokens."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        cleaned = [clean_prompt(p) for p in prompts]
        todo = list(dict.fromkeys(c for c in cleaned if c not in self._cache))
        if todo and self.offload:
            self.model.to(self.device)
        try:
            for i in range(0, len(todo), self.batch_size):
                batch = todo[i:i + self.batch_size]
                for text, emb in zip(batch, self._run(batch)):
                    self._cache[text] = emb
        finally:
            if todo and self.offload:
                self.model.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        for c in cleaned:
            self._cache.move_to_end(c)
        out = torch.stack([self._cache[c] for c in cleaned]).to(self.device)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def __call__(self, text: str) -> torch.Tensor:
        """[1, text_len, d_model] float32 on the CPU: the prompt-embedder interface the training data uses."""
        return self.encode(text).float().cpu()

    def _run(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.text_len,
                                add_special_tokens=True, return_tensors="pt")
        ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return (hidden * mask[..., None].to(hidden.dtype)).cpu()
