"""End-to-end generation benchmark: the 1.3B architecture with random weights, streaming chunks through the DiT and
then through the Wan VAE or TAEHV decoder, as ``worldsim generate`` does (without writing an mp4).

    python benchmarks/e2e_generate.py                      # wan2.1-t2v-1.3b, 832x480, chunk 3, 4 steps, CUDA bf16
    python benchmarks/e2e_generate.py --compile --json runs/e2e.json
    python benchmarks/e2e_generate.py --preset small --height 64 --width 64 --vae-base-dim 8 \\
        --taehv-channels 16,16,8,8 --chunks 4 --warmup 1      # a quick CPU check

Reported per mode (denoise only, + Wan VAE, + TAEHV): frames per second over all measured chunks and at the
full-window median, first-frame latency (fresh session until the first chunk's frames are on the host), and peak
GPU memory. Prompt embeddings are random (no text encoder is loaded: with ``--offload-text-encoder``, UMT5 rests on
the CPU while frames are made, so these peaks are what a card must hold). Needs only torch, diffusers, pyyaml,
tqdm, safetensors and this repository.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from worldsim.codecs.base import frames_for_chunk, to_uint8
from worldsim.codecs.taehv import TAEHVConfig, TAEHVDecoder, TAEHVStreamingDecoder
from worldsim.codecs.wan_vae import WanVAEDecoder
from worldsim.model.attention import BACKENDS, select_backend
from worldsim.model.dit import count_parameters
from worldsim.pipeline.devices import synchronize
from worldsim.runtime import RuntimeOptions, build_runtime

MODES = ("denoise", "wan", "taehv")
CARD_GIB = 24


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="e2e_generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="wan2.1-t2v-1.3b", help="DiT preset (default wan2.1-t2v-1.3b)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--chunks", type=int, default=14, help="measured chunks per mode (default 14: the 21-frame "
                                                          "window fills after 7)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up chunks per mode on a separate session (default 2)")
    p.add_argument("--window", type=int, default=21, help="rolling window in latent frames (default 21)")
    p.add_argument("--sink", type=int, default=0)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="auto: bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--attn", default="auto", choices=BACKENDS)
    p.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks")
    p.add_argument("--vae-base-dim", type=int, default=96, help="Wan VAE width (96 = Wan2.1; smaller for CPU checks)")
    p.add_argument("--taehv-channels", default="256,128,64,64", help="TAEHV decoder widths (taew2_1: 256,128,64,64)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--json", type=Path, help="write conditions and results here")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - set(MODES):
        p.error(f"--modes must be a subset of {MODES}")
    if args.chunks < 1 or args.warmup < 0:
        p.error("--chunks must be >= 1 and --warmup >= 0")
    return args


def build_decoder(mode: str, args, device, dtype):
    from diffusers import AutoencoderKLWan

    if mode == "denoise":
        return None
    torch.manual_seed(0)
    if mode == "wan":
        with torch.device(device):
            return WanVAEDecoder(torch.nn.Module.to(AutoencoderKLWan(base_dim=args.vae_base_dim), dtype=dtype).eval())
    channels = tuple(int(c) for c in args.taehv_channels.split(","))
    with torch.device(device):
        return TAEHVStreamingDecoder(TAEHVDecoder(TAEHVConfig(channels=channels)).to(dtype).eval())


def run(make_session, decoder, chunks: int, device, desc: str | None = None) -> dict:
    """Stream ``chunks`` chunks from a fresh session (decoding each when a decoder is given); per-chunk wall times."""
    synchronize(device)
    t0 = time.perf_counter()
    session = make_session()
    if decoder is not None:
        decoder.reset()
    times, frames, resident, first_frame_s = [], 0, [], None
    for k in tqdm(range(chunks), desc=desc, unit="chunk", file=sys.stderr, disable=desc is None):
        synchronize(device)
        t = time.perf_counter()
        latents = session.step()
        if decoder is not None:
            frames += to_uint8(decoder.decode(latents)[0]).shape[0]  # frames on the host, as a writer gets them
        else:
            frames += frames_for_chunk(latents.shape[2], 4, first=k == 0)
        synchronize(device)
        end = time.perf_counter()
        times.append(end - t)
        resident.append(session.cache.resident_frames)
        if first_frame_s is None:
            first_frame_s = end - t0
    full = [t for t, r in zip(times, resident) if r == session.cache.capacity_frames]
    per_chunk_frames = 4 * session.chunk_frames
    return {"chunks": chunks, "frames": frames, "seconds": sum(times), "fps": frames / sum(times),
            "median_chunk_s": statistics.median(times),
            "full_window_fps": per_chunk_frames / statistics.median(full) if full else None,
            "first_frame_s": first_frame_s, "chunk_s": times}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:  # the model as worldsim serve and generate load it: the preset with random weights, no control module
        runtime = build_runtime(RuntimeOptions(preset=args.preset, height=args.height, width=args.width,
                                               device=args.device, dtype=args.dtype, attn=args.attn,
                                               compile=args.compile, window_frames=args.window, sink_frames=args.sink,
                                               keys=(), axes=()))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    model, device, dtype, cfg = runtime.model, runtime.device, runtime.dtype, runtime.model.cfg
    backend = select_backend(args.attn, device, dtype, masked=False)
    prompt = torch.randn(1, cfg.text_len, cfg.text_dim, device=device, dtype=dtype)

    def make_session():
        return runtime.new_session(prompt, seed=0)

    cond = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "dtype": str(dtype),
            "preset": args.preset, "params": f"{count_parameters(model):,}", "video": f"{args.width}x{args.height}",
            "chunk_frames": cfg.chunk_frames, "steps": "4 denoise + 1 clean re-run", "window": args.window,
            "sink": args.sink, "attention": backend, "compile": args.compile, "vae_base_dim": args.vae_base_dim,
            "taehv_channels": args.taehv_channels, "torch": torch.__version__, "text_encoder": "not loaded"}
    results = {}
    for mode in args.modes:
        decoder = build_decoder(mode, args, device, dtype)
        if args.warmup:
            run(make_session, decoder, args.warmup, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        results[mode] = run(make_session, decoder, args.chunks, device, desc=mode)
        if device.type == "cuda":
            results[mode]["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        del decoder

    print("conditions: " + ", ".join(f"{k}={v}" for k, v in cond.items()))
    print(f"\n{'mode':<9}{'fps':>8}{'full-window fps':>17}{'median chunk ms':>17}{'first frame s':>15}"
          f"{'peak GPU GiB':>14}")
    for mode, r in results.items():
        fw = f"{r['full_window_fps']:.2f}" if r["full_window_fps"] else "-"
        peak = f"{r['peak_gpu_gib']:.2f}" if "peak_gpu_gib" in r else "-"
        print(f"{mode:<9}{r['fps']:>8.2f}{fw:>17}{1e3 * r['median_chunk_s']:>17.1f}{r['first_frame_s']:>15.3f}"
              f"{peak:>14}")
    peaks = [r["peak_gpu_gib"] for r in results.values() if "peak_gpu_gib" in r]
    if peaks:
        verdict = "fits" if max(peaks) < CARD_GIB else "does NOT fit"
        print(f"\npeak GPU memory {max(peaks):.2f} GiB (allocated by torch; the CUDA context adds ~0.5 GiB): "
              f"{verdict} a {CARD_GIB} GB card with the text encoder offloaded")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"conditions": cond, "results": results}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
