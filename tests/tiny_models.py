"""Tiny stand-ins for the published model files, written in the published layouts (no downloads).

- the Wan VAE as ``Wan2.1_VAE.pth`` under the ORIGINAL Wan key names (diffusers' converter renamed backwards) or as a
  diffusers ``vae/`` folder;
- the UMT5 encoder as Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` (Wan's names, bf16) or a ``text_encoder/`` folder;
- a T5 tokenizer with a tiny vocabulary (``google/umt5-xxl/`` or ``tokenizer/``);
- whole official (``Wan2.1-T2V-1.3B``) and diffusers (``-Diffusers``) folders, a Self-Forcing checkpoint, TAEHV weights.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan

from worldsim.checkpoints import save_diffusers_folder, save_self_forcing_pt, save_wan_folder
from worldsim.codecs.taehv import TAEHVConfig, TAEHVDecoder
from worldsim.model.config import DiTConfig
from worldsim.model.dit import CausalWanDiT

T5_DIM = 32
DIT = DiTConfig(dim=32, ffn_dim=64, freq_dim=32, text_dim=T5_DIM, num_heads=4, num_layers=2, in_dim=16, out_dim=16,
                text_len=16)
VAE = {"base_dim": 8, "z_dim": 16}  # channels 8..32, the real structure (4 stages, 2 res blocks)
TAEHV = TAEHVConfig(latent_channels=16, channels=(16, 16, 8, 8))
WORDS = "a cat dog fox runs walks in the park snow red blue sky city at night day over river".split()


def randomize(module: torch.nn.Module, seed: int, std: float = 0.1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module.eval()


# --- DiT ---------------------------------------------------------------------------------------------------------

def tiny_dit(seed: int = 0) -> CausalWanDiT:
    return randomize(CausalWanDiT(DIT), seed)


# --- Wan VAE -----------------------------------------------------------------------------------------------------

def tiny_vae(seed: int = 0) -> AutoencoderKLWan:
    torch.manual_seed(seed)
    return AutoencoderKLWan(**VAE).eval()  # default init: conv weights random, norms at 1


_RESNET = {"norm1.gamma": "residual.0.gamma", "conv1": "residual.2", "norm2.gamma": "residual.3.gamma",
           "conv2": "residual.6", "conv_shortcut": "shortcut"}


def _resnet_key(rest: str) -> str:
    for new, old in _RESNET.items():
        if rest == new or rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def wan_vae_original_key(key: str) -> str:
    """The name Wan's own ``WanVAE_`` gives a diffusers ``AutoencoderKLWan`` parameter (the converter backwards)."""
    fixed = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
    head, _, rest = key.partition(".")
    if head in fixed:
        return f"{fixed[head]}.{rest}"
    side, rest = key.split(".", 1)  # encoder | decoder
    for new, old in (("conv_in.", "conv1."), ("norm_out.gamma", "head.0.gamma"), ("conv_out.", "head.2.")):
        if rest.startswith(new):
            return f"{side}.{old}{rest[len(new):]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", rest):
        return f"{side}.middle.{2 * int(m.group(1))}.{_resnet_key(m.group(2))}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest):
        return f"{side}.middle.1.{m.group(1)}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(.+)", rest):
        return f"{side}.downsamples.{m.group(1)}.{_resnet_key(m.group(2))}"
    if m := re.fullmatch(r"up_blocks\.(\d)\.resnets\.(\d)\.(.+)", rest):
        return f"{side}.upsamples.{4 * int(m.group(1)) + int(m.group(2))}.{_resnet_key(m.group(3))}"
    if m := re.fullmatch(r"up_blocks\.(\d)\.upsamplers\.0\.(.+)", rest):
        return f"{side}.upsamples.{4 * int(m.group(1)) + 3}.{m.group(2)}"
    raise KeyError(key)


def wan_vae_original_state_dict(vae: AutoencoderKLWan) -> dict[str, torch.Tensor]:
    return {wan_vae_original_key(k): v.clone() for k, v in vae.state_dict().items()}


# --- UMT5 --------------------------------------------------------------------------------------------------------

def tiny_umt5(seed: int = 0):
    from transformers import UMT5Config, UMT5EncoderModel

    cfg = UMT5Config(vocab_size=len(WORDS) + 3 + 26 + 1, d_model=T5_DIM, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                     relative_attention_num_buckets=32, relative_attention_max_distance=128,
                     feed_forward_proj="gated-gelu", dropout_rate=0.0, tie_word_embeddings=False)
    model = randomize(UMT5EncoderModel(cfg), seed, std=0.3)
    with torch.no_grad():  # values exact in bf16, so the bf16 .pth and the fp32 folder hold the same weights
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return model


# transformers names -> Wan names, spelled out from Wan's published key list.
_HF_TO_WAN_BLOCK = {
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
}


def umt5_wan_state_dict(model) -> dict[str, torch.Tensor]:
    """A transformers UMT5 encoder's weights under Wan's names, in bf16 (as Wan ships them)."""
    out = {}
    for key, value in model.state_dict().items():
        if key == "encoder.embed_tokens.weight":
            continue  # the same tensor as shared.weight; Wan stores it once
        if key == "shared.weight":
            name = "token_embedding.weight"
        elif key == "encoder.final_layer_norm.weight":
            name = "norm.weight"
        else:
            m = re.fullmatch(r"encoder\.block\.(\d+)\.(.+)", key)
            name = f"blocks.{m.group(1)}.{_HF_TO_WAN_BLOCK[m.group(2)]}"
        out[name] = value.to(torch.bfloat16).clone()
    return out


def write_tokenizer(folder: Path) -> Path:
    """A T5 tokenizer (unigram, metaspace, </s> appended) over a few words, loadable by AutoTokenizer offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    folder.mkdir(parents=True, exist_ok=True)
    pieces = ["<pad>", "</s>", "<unk>"] + ["▁" + w for w in WORDS] + list("abcdefghijklmnopqrstuvwxyz") + ["▁"]
    tok = Tokenizer(models.Unigram([(p, -float(i)) for i, p in enumerate(pieces)], unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", 1)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
        "extra_ids": 0, "model_max_length": 512}))
    return folder


# --- TAEHV -------------------------------------------------------------------------------------------------------

def tiny_taehv(seed: int = 0) -> TAEHVDecoder:
    return randomize(TAEHVDecoder(TAEHV), seed, std=0.2)


def write_taehv(path: Path, seed: int = 0) -> Path:
    """TAEHV weights as taehv saves them: ``decoder.*`` plus encoder weights this decoder ignores."""
    sd = {f"decoder.{k}": v for k, v in tiny_taehv(seed).decoder.state_dict().items()}
    sd["encoder.0.weight"] = torch.zeros(64, 3, 3, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)
    return path


# --- whole folders -----------------------------------------------------------------------------------------------

def write_official_folder(root: Path, seed: int = 0, skip: tuple[str, ...] = ()) -> Path:
    """``Wan2.1-T2V-1.3B`` as published, tiny; ``skip`` leaves out files by name (for incomplete folders)."""
    root.mkdir(parents=True, exist_ok=True)
    save_wan_folder(tiny_dit(seed), None, root)
    torch.save(wan_vae_original_state_dict(tiny_vae(seed)), root / "Wan2.1_VAE.pth")
    torch.save(umt5_wan_state_dict(tiny_umt5(seed)), root / "models_t5_umt5-xxl-enc-bf16.pth")
    write_tokenizer(root / "google" / "umt5-xxl")
    for name in skip:
        target = root / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return root


def write_diffusers_folder(root: Path, seed: int = 0) -> Path:
    """``Wan2.1-T2V-1.3B-Diffusers``, tiny."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    save_diffusers_folder(tiny_dit(seed), None, root / "transformer")
    tiny_vae(seed).save_pretrained(root / "vae")
    tiny_umt5(seed).save_pretrained(root / "text_encoder")
    write_tokenizer(root / "tokenizer")
    return root


def write_self_forcing_checkpoint(path: Path, seed: int = 1) -> dict[str, torch.Tensor]:
    """A Self-Forcing ``.pt`` whose EMA weights differ from its ``generator``; returns the EMA state dict."""
    ema = tiny_dit(seed).state_dict()
    save_self_forcing_pt(tiny_dit(seed + 100).state_dict(), path, ema=ema)
    return ema
