"""The one attention seam: picks FlashAttention-3, FlashAttention-2, flex or SDPA by availability and device.

All backends take ``q, k, v`` as ``[B, L, H, D]`` (the layout the DiT produces) and return ``[B, Lq, H, D]``.
Masks are frame-level (:class:`FrameMask`): a query frame either sees a key frame or not, so a mask is a small
``[Fq, Fk]`` boolean table plus the tokens per frame. SDPA expands it to a dense token mask; flex builds a
``BlockMask`` from it; FlashAttention takes no mask, so masked calls go to flex (CUDA) or SDPA.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "fa3", "fa2", "flex", "sdpa")


@dataclass(frozen=True, eq=False)
class FrameMask:
    """allowed[i, j]: query frame i may attend to key frame j. Each frame is ``tokens_per_frame`` tokens."""

    allowed: torch.Tensor  # [Fq, Fk] bool
    tokens_per_frame: int

    def dense(self) -> torch.Tensor:
        """Token-level boolean mask [Lq, Lk] for SDPA (True = attend)."""
        t = self.tokens_per_frame
        return self.allowed.repeat_interleave(t, 0).repeat_interleave(t, 1)


@functools.cache
def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_backends(device: torch.device) -> tuple[str, ...]:
    """Backends usable on ``device`` in this environment, best first."""
    return _available(device.type, device.index)


@functools.cache
def _available(device_type: str, index: int | None) -> tuple[str, ...]:
    device = torch.device(device_type, index)
    out = []
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major == 9 and _have("flash_attn_interface"):
            out.append("fa3")
        if major >= 8 and _have("flash_attn"):
            out.append("fa2")
        out.append("flex")
    out.append("sdpa")
    return tuple(out)


def select_backend(requested: str, device: torch.device, dtype: torch.dtype, masked: bool) -> str:
    """Resolve ``requested`` (one of BACKENDS) to a concrete backend for this call.

    ``auto``: FA3 → FA2 (CUDA, fp16/bf16, unmasked) → flex (CUDA, masked) → SDPA. An explicit backend that cannot
    serve the call raises with the reason, so a user never silently benchmarks the wrong kernel.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown attention backend {requested!r}; choose one of {BACKENDS}")
    avail = available_backends(device)
    half = dtype in (torch.float16, torch.bfloat16)
    if requested == "auto":
        for name in ("fa3", "fa2"):
            if name in avail and half and not masked:
                return name
        return "flex" if masked and "flex" in avail else "sdpa"
    if requested not in avail:
        raise RuntimeError(f"attention backend {requested!r} is not available on {device} (available: {avail}); "
                           "install the `flash` extra on a CUDA machine or use --attn auto")
    if requested in ("fa3", "fa2") and not half:
        raise RuntimeError(f"attention backend {requested!r} needs fp16/bf16 tensors, got {dtype}")
    if requested in ("fa3", "fa2") and masked:
        return "flex" if "flex" in avail else "sdpa"  # FlashAttention has no frame masks
    return requested


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: FrameMask | None = None,
              backend: str = "auto") -> torch.Tensor:
    """Scaled dot-product attention, default scale 1/sqrt(D). q: [B, Lq, H, D]; k, v: [B, Lk, H, D]."""
    name = select_backend(backend, q.device, q.dtype, mask is not None)
    if name == "fa3":
        import flash_attn_interface

        out = flash_attn_interface.flash_attn_func(q, k, v)
        return out[0] if isinstance(out, tuple) else out
    if name == "fa2":
        import flash_attn

        return flash_attn.flash_attn_func(q, k, v)
    if name == "flex":
        return _flex(q, k, v, mask)
    attn_mask = None if mask is None else mask.dense().to(q.device)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask)
    return out.transpose(1, 2)


def _flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: FrameMask | None) -> torch.Tensor:
    from torch.nn.attention.flex_attention import create_block_mask

    block_mask = None
    if mask is not None:
        allowed = mask.allowed.to(q.device)
        t = mask.tokens_per_frame

        def mask_mod(b, h, q_idx, kv_idx):
            return allowed[q_idx // t, kv_idx // t]

        block_mask = create_block_mask(mask_mod, None, None, q.shape[1], k.shape[1], device=q.device)
    out = _compiled_flex()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask)
    return out.transpose(1, 2)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)
