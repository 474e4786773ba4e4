"""Streaming latency benchmark: per-chunk wall time of a StreamingSession (denoise only, no VAE decode).

    python benchmarks/stream_latency.py --preset small --chunks 120
    worldsim bench --preset wan2.1-t2v-1.3b --compile --json runs/bench.json

A warm-up session runs first; then a fresh session is timed from creation to its first chunk (first-chunk
latency) and keeps streaming for --chunks chunks. Chunks are split into "filling" (the KV window is still
growing, so attention gets longer each chunk) and "full" (constant attention length): after the window fills,
per-chunk cost and KV-cache memory must stay flat however long the stream runs. Weights are random.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from worldsim.model.attention import BACKENDS, select_backend
from worldsim.model.dit import CausalWanDiT, count_parameters
from worldsim.pipeline.devices import DTYPES, compile_blocks
from worldsim.runtime import RuntimeOptions, build_runtime
from worldsim.sampling.session import StreamingSession

VAE_SPATIAL = 8  # Wan VAE: 8x spatial, 4x temporal compression
VAE_TEMPORAL = 4
BLOCK = 10  # chunks per block in the flatness table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="worldsim bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small", help="model preset name or YAML path (default: small)")
    p.add_argument("--height", type=int, help="video height in pixels (default per preset; latent = video/8)")
    p.add_argument("--width", type=int, help="video width in pixels (default per preset)")
    p.add_argument("--chunks", type=int, default=120, help="measured chunks (default 120)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up chunks on a separate session (default 3)")
    p.add_argument("--sink", type=int, default=0, help="sink latent frames (default 0)")
    p.add_argument("--window", type=int, default=21, help="rolling window in latent frames (default 21)")
    p.add_argument("--batch", type=int, default=1, help="streams generated in lockstep (default 1)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: bf16 on cuda, fp32 on cpu")
    p.add_argument("--attn", default="auto", choices=BACKENDS, help="attention backend (default auto)")
    p.add_argument("--compile", action="store_true", help="torch.compile each DiT block (falls back to eager on error)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--json", type=Path, help="write conditions, summary and raw per-chunk timings here")
    args = p.parse_args(argv)
    for name in ("chunks", "window", "batch"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    if args.warmup < 0 or args.sink < 0:
        p.error("--warmup and --sink must be >= 0")
    return args


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines()
             if ln.startswith("model name")] if cpuinfo.is_file() else []
    return f"{names[0] if names else 'cpu'} ({torch.get_num_threads()} threads)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compiled_graphs() -> int:
    """Graphs torch.compile has captured so far in this process (a rise while measuring means recompiles)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def warm_up(make_session, chunks: int, until_full: bool) -> None:
    """Run ``chunks`` chunks (after the window first fills, when ``until_full``: every attention length gets compiled)."""
    session = make_session()
    while until_full and session.cache.resident_frames < session.cache.capacity_frames:
        session.step()
    for _ in range(chunks):
        session.step()


def warm_up_model(model: CausalWanDiT, make_session, args: argparse.Namespace) -> str:
    """Warm up (compiling the blocks first with --compile); returns the compile status for the report."""
    if args.compile:
        compile_blocks(model)
        try:
            warm_up(make_session, args.warmup, until_full=True)
            return "blocks"
        except Exception as e:  # noqa: BLE001 - any compiler failure: report it and measure eager instead
            reason = (str(e).strip().splitlines() or [""])[0]
            print(f"warning: torch.compile failed, measuring eager: {type(e).__name__}: {reason}", file=sys.stderr)
            for block in model.blocks:
                del block.forward
    warm_up(make_session, args.warmup, until_full=False)
    return "failed (eager)" if args.compile else "off"


def timed_step(session: StreamingSession, chunk: int, device: torch.device) -> dict:
    """One step's wall time, the attention length it ran at (resident frames) and memory after it."""
    sync(device)
    t0 = time.perf_counter()
    session.step()
    sync(device)
    row = {"chunk": chunk, "seconds": time.perf_counter() - t0,
           "resident_frames": session.cache.resident_frames, "kv_bytes": session.cache.nbytes()}
    if device.type == "cuda":
        row["gpu_allocated"] = torch.cuda.memory_allocated(device)
    return row


def measure(make_session, chunks: int, device: torch.device) -> tuple[float, list[dict], StreamingSession]:
    """Stream ``chunks`` chunks from a fresh session; also return creation-to-first-chunk latency."""
    sync(device)
    t0 = time.perf_counter()
    session = make_session()
    rows = [timed_step(session, 0, device)]
    first_chunk_s = time.perf_counter() - t0
    for i in tqdm(range(1, chunks), desc="chunks", unit="chunk", file=sys.stderr, disable=None):
        rows.append(timed_step(session, i, device))
    return first_chunk_s, rows, session


def quantile(xs: list[float], q: float) -> float:
    return torch.tensor(xs, dtype=torch.float64).quantile(q).item()


def phase_stats(xs: list[float]) -> dict | None:
    if not xs:
        return None
    return {"chunks": len(xs), "median_s": quantile(xs, 0.5), "p90_s": quantile(xs, 0.9), "max_s": max(xs)}


def video_frames(chunk_index: int, latent_frames: int) -> int:
    """Video frames a chunk decodes to: the first latent frame of a stream is 1 video frame, the rest 4 each."""
    return VAE_TEMPORAL * latent_frames - (VAE_TEMPORAL - 1 if chunk_index == 0 else 0)


def summarize(rows: list[dict], capacity: int, chunk_frames: int) -> dict:
    times = [r["seconds"] for r in rows]
    full = [r["seconds"] for r in rows if r["resident_frames"] == capacity]
    filling = [r["seconds"] for r in rows if r["resident_frames"] < capacity]
    blocks = [full[i:i + BLOCK] for i in range(0, len(full) - BLOCK + 1, BLOCK)] or ([full] if full else [])
    block_medians = [quantile(b, 0.5) for b in blocks]
    steady = quantile(full or times, 0.5)
    kv = [r["kv_bytes"] for r in rows]
    return {
        "filling": phase_stats(filling), "full": phase_stats(full), "all": phase_stats(times),
        "full_block_medians_s": block_medians,
        "last_over_first_block": block_medians[-1] / block_medians[0] if block_medians else None,
        "steady_fps": VAE_TEMPORAL * chunk_frames / steady,
        "overall_fps": sum(video_frames(r["chunk"], chunk_frames) for r in rows) / sum(times),
        "kv_bytes_first": kv[0], "kv_bytes_last": kv[-1], "kv_constant": len(set(kv)) == 1,
    }


def ms(s: float) -> str:
    return f"{1e3 * s:9.2f}"


def print_report(cond: dict, s: dict, first_chunk_s: float, batch: int) -> None:
    print("conditions: " + ", ".join(f"{k}={v}" for k, v in cond.items()))
    print(f"\n{'phase':<10}{'chunks':>7}{'median ms':>11}{'p90 ms':>10}{'max ms':>10}")
    for phase in ("filling", "full", "all"):
        st = s[phase]
        if st:
            print(f"{phase:<10}{st['chunks']:>7} {ms(st['median_s'])} {ms(st['p90_s'])} {ms(st['max_s'])}")
    print(f"\nfirst chunk (fresh session, creation + first step): {ms(first_chunk_s).strip()} ms")
    steady_from = "full-window median" if s["full"] else "median (window never filled)"
    print(f"denoise-only FPS per stream: {s['steady_fps']:.2f} video frames/s at the {steady_from}; "
          f"{s['overall_fps']:.2f} over all measured chunks" + (f"; x{batch} streams = {batch * s['steady_fps']:.2f}"
                                                                 if batch > 1 else ""))
    if s["full_block_medians_s"]:
        meds = s["full_block_medians_s"]
        print(f"full-window medians per block of {BLOCK} chunks (ms):")
        for i in range(0, len(meds), 10):
            print("  " + " ".join(f"{1e3 * m:8.2f}" for m in meds[i:i + 10]))
        print(f"last block / first block: {s['last_over_first_block']:.3f}")
    mib = 2**20
    print(f"KV cache: {s['kv_bytes_first'] / mib:.2f} MiB after chunk 1, {s['kv_bytes_last'] / mib:.2f} MiB after the "
          f"last ({'constant' if s['kv_constant'] else 'CHANGED'})")
    if s["graphs_compiled_while_measuring"]:
        print(f"warning: torch.compile captured {s['graphs_compiled_while_measuring']} new graphs while measuring "
              "(recompiles inflate those chunks; see the raw timings)")
    if "peak_gpu_mib" in s:
        print(f"GPU memory: peak {s['peak_gpu_mib']:.1f} MiB; allocated {s['alloc_filled_mib']:.1f} MiB when the window "
              f"filled, {s['alloc_last_mib']:.1f} MiB after the last chunk")


def conditions(args, model: CausalWanDiT, session: StreamingSession, device: torch.device, dtype: torch.dtype,
               backend: str, compiled: str) -> dict:
    c, h, w = session.latent_shape
    n = model.cfg.chunk_frames
    return {
        "device": device_name(device), "dtype": str(dtype).removeprefix("torch."), "preset": args.preset,
        "params": f"{count_parameters(model):,}", "video": f"{h * VAE_SPATIAL}x{w * VAE_SPATIAL}",
        "latent": f"{c}x{h}x{w}", "batch": args.batch, "chunk_frames": f"{n} latent ({VAE_TEMPORAL * n} video)",
        "window": args.window, "sink": args.sink, "attention": backend, "compile": compiled,
        "steps_per_chunk": f"{len(session.timesteps)} denoise + 1 clean re-run", "warmup": args.warmup,
        "chunks": args.chunks, "decode": "not included", "torch": torch.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:  # the model as worldsim serve builds it: the preset with random weights (no control module here)
        runtime = build_runtime(RuntimeOptions(preset=args.preset, height=args.height, width=args.width,
                                               device=args.device, dtype=args.dtype, attn=args.attn, keys=(), axes=(),
                                               window_frames=args.window, sink_frames=args.sink))
        backend = select_backend(args.attn, runtime.device, runtime.dtype, masked=False)  # streaming is unmasked
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model, device, dtype, cfg = runtime.model, runtime.device, runtime.dtype, runtime.model.cfg
    prompt = torch.randn(args.batch, cfg.text_len, cfg.text_dim, device=device, dtype=dtype)

    def make_session() -> StreamingSession:
        return runtime.new_session(prompt, seed=0)

    compiled = warm_up_model(model, make_session, args)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    graphs_before = compiled_graphs()
    first_chunk_s, rows, session = measure(make_session, args.chunks, device)

    summary = summarize(rows, session.cache.capacity_frames, cfg.chunk_frames)
    summary["graphs_compiled_while_measuring"] = compiled_graphs() - graphs_before
    summary["first_chunk_s"] = first_chunk_s
    if device.type == "cuda":
        summary["peak_gpu_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        filled = next((r for r in rows if r["resident_frames"] == session.cache.capacity_frames), rows[-1])
        summary["alloc_filled_mib"] = filled["gpu_allocated"] / 2**20
        summary["alloc_last_mib"] = rows[-1]["gpu_allocated"] / 2**20
    cond = conditions(args, model, session, device, dtype, backend, compiled)
    print_report(cond, summary, first_chunk_s, args.batch)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"conditions": cond, "summary": summary, "chunks": rows}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
