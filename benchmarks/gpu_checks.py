"""Correctness checks that need a GPU (not part of CI): the streaming == block-causal invariant through the CUDA
kernels that CPU tests never reach (flex attention for the masked clip, SDPA/FlashAttention for the cache path).

    python benchmarks/gpu_checks.py [--preset small] [--frames 15] [--latent 16x16]
"""

from __future__ import annotations

import argparse

import torch

from worldsim.model.attention import select_backend
from worldsim.model.config import load_preset
from worldsim.model.dit import CausalWanDiT


def streaming_vs_clip(preset: str, frames: int, h: int, w: int, dtype: torch.dtype, sink: int, window: int | None) -> float:
    cfg = load_preset(preset)
    torch.manual_seed(0)
    model = CausalWanDiT(cfg).cuda().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    model = model.to(dtype)
    n = cfg.chunk_frames
    x = torch.randn(1, cfg.in_dim, frames, h, w, device="cuda", dtype=dtype)
    t = (torch.rand(1, frames // n, device="cuda") * 1000).repeat_interleave(n, 1)
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, device="cuda", dtype=dtype)
    with torch.no_grad():
        full = model(x, t, ctx, sink_frames=sink, window_frames=window)
        cache = model.new_cache(batch=1, height=h, width=w, sink_frames=sink, window_frames=window or frames)
        outs = [model.forward_chunk(x[:, :, s:s + n], t[:, s:s + n], ctx, cache, s) for s in range(0, frames, n)]
    streamed = torch.cat(outs, 2)
    return float((streamed.float() - full.float()).abs().max() / full.float().abs().max())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--frames", type=int, default=15)
    ap.add_argument("--latent", default="16x16", help="latent HxW")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    h, w = (int(v) for v in args.latent.split("x"))
    dev = torch.device("cuda")
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}")
    failures = 0
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2)):
        for sink, window in ((0, None), (3, 6)):
            err = streaming_vs_clip(args.preset, args.frames, h, w, dtype, sink, window)
            ok = err < tol
            failures += not ok
            print(f"{str(dtype):15s} sink={sink} window={window}: clip via {select_backend('auto', dev, dtype, True)}, "
                  f"chunks via {select_backend('auto', dev, dtype, False)}: max rel diff {err:.2e} "
                  f"(tolerance {tol:.0e}) {'ok' if ok else 'FAIL'}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
