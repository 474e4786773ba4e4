"""Daemon throughput: frames/s and control-to-photon latency through `worldsim serve` versus in-process, and the
protocol's per-frame cost for raw RGB and JPEG.

    python benchmarks/daemon_throughput.py                      # small preset, 128x128, 1 and 4 clients
    python benchmarks/daemon_throughput.py --clients 1 --seconds 20 --json runs/daemon.json

In-process: a StreamingSession + the preview decoder in a loop (what the daemon wraps). Through the daemon: a
`worldsim serve` subprocess on loopback TCP and N clients in this process, each with an unpaced session (as fast as
the model goes) and the same decoder. Every client sends a control row 16 times a second (like `worldsim play`);
a frame's latency is the time from sending the newest control it was made with to receiving it (in-process: to its
decoded frames existing). Protocol overhead: encode + header + ROUTER->DEALER over loopback TCP + client decode,
per 832x480 frame, measured on its own with a synthetic image. Weights are random; decode is the preview decoder.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CONTROL_HZ = 16.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="daemon_throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--clients", default="1,4", help="client counts to measure (default 1,4)")
    p.add_argument("--seconds", type=float, default=12.0, help="measuring time per configuration (default 12)")
    p.add_argument("--warmup", type=float, default=4.0, help="seconds streamed before measuring (default 4)")
    p.add_argument("--format", default="rgb24", choices=["rgb24", "jpeg"], help="frame format through the daemon")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="torch threads, in-process and in the daemon (default: cores - 1, the daemon's default)")
    p.add_argument("--overhead-frames", type=int, default=300, help="frames per format in the overhead test")
    p.add_argument("--json", type=Path, help="write conditions and results here")
    return p.parse_args(argv)


def summary(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0, "median_ms": None, "p95_ms": None}
    s = sorted(xs)
    return {"n": len(s), "median_ms": 1e3 * statistics.median(s),
            "p95_ms": 1e3 * s[min(len(s) - 1, int(0.95 * len(s)))]}


# ---- in-process ------------------------------------------------------------------------------------------------

def in_process(args: argparse.Namespace) -> dict:
    import torch

    from worldsim.codecs.base import to_uint8
    from worldsim.model.control import Controls
    from worldsim.sampling.session import StreamingSession
    from worldsim.serve.backend import BackendOptions, build_backend

    torch.set_num_threads(args.threads)
    b = build_backend(BackendOptions(preset=args.preset, height=args.height, width=args.width))
    k, n = b.schema.frames_per_latent, b.model.cfg.chunk_frames
    keys = torch.zeros(1, n, k, len(b.schema.keys))
    keys[..., 0] = 1
    session = StreamingSession(b.model, b.embed_prompt("a quiet forest"), latent_shape=b.latent_shape,
                               sink_frames=b.sink_frames, window_frames=b.window_frames)
    decoder = b.make_decoder()
    t_start = time.perf_counter()
    frames, latencies, measuring_since = 0, [], None
    while True:
        now = time.perf_counter()
        if measuring_since is None and now - t_start >= args.warmup:
            measuring_since, frames, latencies = now, 0, []
        if measuring_since is not None and now - measuring_since >= args.seconds:
            break
        newest_input = t_start + int((now - t_start) * CONTROL_HZ) / CONTROL_HZ  # a 16 Hz control stream
        out = to_uint8(decoder.decode(session.step(controls=Controls(keys=keys))))[0].numpy()
        latencies.append(time.perf_counter() - newest_input)
        frames += len(out)
    elapsed = time.perf_counter() - measuring_since
    return {"fps": frames / elapsed, "latency": summary(latencies), "threads": torch.get_num_threads()}


# ---- through the daemon -------------------------------------------------------------------------------------------

def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def start_daemon(args: argparse.Namespace, endpoint: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "worldsim", "serve", "--preset", args.preset, "--height", str(args.height),
           "--width", str(args.width), "--bind", endpoint, "--stats-interval", "0", "--log-level", "WARNING",
           "--threads", str(args.threads)]
    return subprocess.Popen(cmd, stderr=subprocess.DEVNULL)


def through_daemon(args: argparse.Namespace, endpoint: str, clients: int) -> dict:
    from worldsim.client import Client

    cs = [Client(endpoint, name=f"bench{i}", timeout=120) for i in range(clients)]
    try:
        keys = len(cs[0].welcome.control.keys)
        row = {"keys": [[1.0] + [0.0] * (keys - 1)]} if keys else None
        sessions = [c.open("a quiet forest", seed=i, fps=0, format=args.format) for i, c in enumerate(cs)]
        t_start = time.perf_counter()
        next_input = t_start
        measuring_since, counts, latencies = None, [0] * clients, []
        while True:
            now = time.perf_counter()
            if measuring_since is None and now - t_start >= args.warmup:
                measuring_since, counts, latencies = now, [0] * clients, []
            if measuring_since is not None and now - measuring_since >= args.seconds:
                break
            if row and now >= next_input:
                for c, s in zip(cs, sessions):
                    c.send(s, controls=row)
                next_input += 1 / CONTROL_HZ
            for i, c in enumerate(cs):
                for f in c.frames_ready():
                    f.image  # decode, as a client would
                    counts[i] += 1
                    if f.header["i"] == 0 and f.input_latency_s is not None:
                        latencies.append(f.input_latency_s)
            time.sleep(0.001)
        elapsed = time.perf_counter() - measuring_since
        dropped = sum(c.frames_dropped for c in cs)
        for c, s in zip(cs, sessions):
            c.close_session(s)
    finally:
        for c in cs:
            c.close()
    per_client = [n / elapsed for n in counts]
    return {"clients": clients, "fps_total": sum(per_client), "fps_per_client": per_client,
            "latency": summary(latencies), "client_dropped": dropped}


# ---- protocol overhead per frame -----------------------------------------------------------------------------

def synthetic_frame(h: int = 480, w: int = 832) -> np.ndarray:
    """Smooth gradients, a few shapes and mild noise: compresses like a rendered scene, not like static."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], -1)
    img[(x - w / 3) ** 2 + (y - h / 2) ** 2 < (h / 5) ** 2] = (220, 60, 40)
    img[h // 4: h // 2, w // 2: 3 * w // 4] = (30, 120, 200)
    img += np.random.default_rng(0).normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def protocol_overhead(frames: int) -> dict:
    import zmq

    from worldsim.client.core import ClientCore
    from worldsim.serve import frame_format
    from worldsim.serve.protocol import pack

    img = synthetic_frame()
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.setsockopt(zmq.IDENTITY, b"bench")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send(b"hi")
    router.recv_multipart()
    core = ClientCore("bench")
    out = {}
    for fmt in ("rgb24", "jpeg"):
        encode_s, decode_s, sizes = [], [], []
        t0 = time.perf_counter()
        for i in range(frames):
            a = time.perf_counter()
            payload = frame_format.encode(img, fmt, 85)
            header = pack({"type": "frame", "session": 1, "epoch": 0, "chunk": i // 12, "index": i, "i": i % 12,
                           "n": 12, "format": fmt, "shape": list(img.shape), "t_gen": time.time(), "gen_ms": 1.0,
                           "input_seq": i, "prompt_seq": 0, "t_send": time.time()})
            encode_s.append(time.perf_counter() - a)
            router.send_multipart([b"bench", header, payload], copy=False)
            parts = dealer.recv_multipart(copy=False)
            b = time.perf_counter()
            frame = core.parse([parts[0].bytes, parts[1].buffer])
            frame.image
            decode_s.append(time.perf_counter() - b)
            sizes.append(len(payload) if isinstance(payload, bytes) else payload.nbytes)
        total = (time.perf_counter() - t0) / frames
        out[fmt] = {"total_ms": 1e3 * total, "encode_ms": 1e3 * statistics.median(encode_s),
                    "decode_ms": 1e3 * statistics.median(decode_s),
                    "transfer_ms": 1e3 * total - 1e3 * (statistics.mean(encode_s) + statistics.mean(decode_s)),
                    "bytes": int(statistics.median(sizes))}
    router.close(0)
    dealer.close(0)
    ctx.term()
    return out


def ms(v) -> str:
    return "-" if v is None else f"{v:.1f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    counts = [int(c) for c in args.clients.split(",") if c.strip()]
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "cpu") if Path("/proc/cpuinfo").is_file() else "cpu"
    cond = {"preset": args.preset, "video": f"{args.width}x{args.height}", "decoder": "preview",
            "format": args.format, "device": f"{cpu}, {os.cpu_count()} cores", "seconds": args.seconds,
            "control_hz": CONTROL_HZ}
    print("conditions: " + ", ".join(f"{k}={v}" for k, v in cond.items()), flush=True)
    results: dict = {"conditions": cond}
    results["in_process"] = ip = in_process(args)
    lat = ip["latency"]
    print(f"in-process          : {ip['fps']:7.1f} frames/s   control-to-frames median {ms(lat['median_ms'])} ms "
          f"p95 {ms(lat['p95_ms'])} ms   (torch threads {ip['threads']})", flush=True)
    endpoint = free_endpoint()
    daemon = start_daemon(args, endpoint)
    try:
        results["daemon"] = []
        for n in counts:
            r = through_daemon(args, endpoint, n)
            results["daemon"].append(r)
            per = " ".join(f"{x:.1f}" for x in r["fps_per_client"])
            print(f"daemon, {n} client{'s' if n > 1 else ' '}  : {r['fps_total']:7.1f} frames/s total "
                  f"({per} per client)"
                  f"   control-to-photon median {ms(r['latency']['median_ms'])} ms p95 {ms(r['latency']['p95_ms'])} ms",
                  flush=True)
    finally:
        daemon.terminate()
        daemon.wait(30)
    results["protocol_overhead_832x480"] = po = protocol_overhead(args.overhead_frames)
    for fmt, r in po.items():
        print(f"protocol {fmt:5s} 832x480: {r['total_ms']:.2f} ms/frame (encode {r['encode_ms']:.2f}, transfer "
              f"{r['transfer_ms']:.2f}, decode {r['decode_ms']:.2f}), {r['bytes'] / 1024:.0f} KiB/frame")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
