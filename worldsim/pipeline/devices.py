"""Device, precision and compilation choices shared by ``worldsim generate`` and the end-to-end benchmark."""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA device if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return device


def resolve_dtype(name: str, device: torch.device, *, cpu_half: bool = False) -> torch.dtype:
    """``auto``: bf16 on a GPU, fp32 on the CPU (CPU kernels for half precision are slow or missing).
    cpu_half: allow bf16/fp16 on the CPU anyway (the daemon and the latency benchmark, for experiments)."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto or one of {sorted(DTYPES)}")
    if device.type == "cpu" and name != "fp32" and not cpu_half:
        raise ValueError(f"--dtype {name} is for GPUs; use fp32 (or auto) on the CPU")
    return DTYPES[name]


def text_encoder_dtype(device: torch.device) -> torch.dtype:
    """UMT5 runs in bf16 on a GPU (its published precision; fp16 overflows in T5) and fp32 on the CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def compile_blocks(model: torch.nn.Module) -> None:
    """``torch.compile`` every transformer block's forward in place (shapes are static per chunk; the growing
    attention length while the cache fills costs a few recompiles, hence the raised limit)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for block in model.blocks:
        block.forward = torch.compile(block.forward)


def column_major_linears(model: torch.nn.Module) -> None:
    """Store every ``nn.Linear`` weight [out, in] column-major: the same values, shape and names, strides (1, out).

    For the CPU at inference: ``F.linear`` multiplies by ``weight.t()``, which is then a contiguous [in, out]
    matrix, and MKL runs that 1.3-1.6x faster than the transposed one at the few tokens a streamed chunk has
    (16 x 192 @ 192 x 512: 57 -> 42 us). Results agree to rounding: bit-equal on the CPU this was measured on, but
    MKL may pick another kernel per layout elsewhere (seen on a 2-core AMD EPYC VM: a pixel off by 1), so compare
    outputs against a model with the same layout. Training keeps the default layout."""
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.weight.data = m.weight.data.t().contiguous().t()


def channels_last_convs(module: torch.nn.Module) -> None:
    """Store every ``nn.Conv2d`` weight channels-last (the same values, shape and names): on the CPU, oneDNN then
    runs the toy codec's convolutions channels-last, 5.9 -> 3.8 ms per 64x64 decode and 2.7 -> 2.3 ms per encode on
    one thread (the reference flow does both for every moved frame; the daemon decodes every frame). Results agree
    to rounding (1e-6), so compare outputs against a module with the same layout. The codec's own training keeps
    the default; the frozen codec of a training run with a reference flow uses it."""
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
