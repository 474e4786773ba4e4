"""Daemon benchmarks: throughput for 1/2/4/8 sessions, paced control-to-photon against its floor for chunks of 1,
2 and 3 latent frames, ZeroMQ against the WebSocket gateway, an optional soak, and the protocol's per-frame cost.

    python benchmarks/daemon_throughput.py                          # throughput + latency + protocol cost
    python benchmarks/daemon_throughput.py --only latency --chunks 3 --daemon-src ../old-checkout   # another version
    python benchmarks/daemon_throughput.py --only soak --soak-seconds 3600 --json runs/soak.json
    python benchmarks/daemon_throughput.py --only transport --preset tiny     # ZeroMQ vs WebSocket gateway

Every daemon is a `worldsim serve` subprocess on loopback TCP (small preset, random weights, preview decoder);
clients run in this process.
- throughput: N unpaced sessions (fps 0, as fast as the model goes), controls at 16 Hz; total frames/s, with
  sessions generated one at a time (--max-batch 1) and batched into one forward (--max-batch 8).
- latency: one session paced at --fps, shown by a player model (worldsim.client.photon.PlayoutClock), an input
  every frame period with random jitter. Control-to-photon per input (bridge/PROTOCOL.md): sending it -> showing
  the first frame made with it or a newer one; also its expectation for a random moment computed from the chunk
  schedule, and the floor 0.5 x chunk playout + median chunk time (worldsim.serve.pacing.latency_floor_s).
- soak: one paced session, controls every frame, a prompt switch every 10 s, a reset every 5 min; the daemon's
  RSS and the chunk time sampled every --soak-interval seconds.
- transport: 1 and 4 clients (one paced session each, controls every frame) straight over ZeroMQ and through
  the WebSocket gateway (`worldsim serve --ws`, the Python client over ws://), rgb24 and JPEG, at each of
  --transport-sizes: frames/s per client, control-to-photon, and delivery time per frame (daemon `t_send` ->
  the client has it; same host, same clock) whose difference between the transports is the gateway's per-frame cost.
- in-process: a StreamingSession + preview decoder loop (what the daemon wraps), for comparison.
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
    p.add_argument("--preset", default="small", help="model preset with random weights (default small)")
    p.add_argument("--model", metavar="PATH", help="serve this instead of --preset: a model package (e.g. "
                                                    "worldsim/default_model, the embedded default), checkpoint or "
                                                    "Wan2.1 folder, at its own size unless --height/--width")
    p.add_argument("--height", type=int, help="video height (default 128, or the model's)")
    p.add_argument("--width", type=int, help="video width (default 128, or the model's)")
    p.add_argument("--only", choices=["throughput", "latency", "transport", "soak", "protocol", "in-process"],
                   action="append",
                   help="run only these parts (repeatable; default: all but soak)")
    p.add_argument("--sessions", default="1,2,4,8", help="session counts for throughput (default 1,2,4,8)")
    p.add_argument("--chunks", default="1,2,3", help="chunk sizes in latent frames for latency (default 1,2,3)")
    p.add_argument("--chunk-latents", type=int,
                   help="chunk size in latent frames for throughput and in-process (default: the model's)")
    p.add_argument("--steps", help="denoising steps per chunk, a count or timesteps (serve --steps; default: the "
                                   "model's)")
    p.add_argument("--guided-steps", help="the steps guidance applies to (serve --guided-steps; default: the model's)")
    p.add_argument("--transport-sizes", default="128x128,832x480", help="WxH list for the transport part")
    p.add_argument("--transport-clients", default="1,4", help="client counts for the transport part (default 1,4)")
    p.add_argument("--fps", type=float, default=16.0, help="paced rate for latency, transport and soak (default 16)")
    p.add_argument("--seconds", type=float, default=12.0, help="measuring time per configuration (default 12)")
    p.add_argument("--warmup", type=float, default=4.0, help="seconds streamed before measuring (default 4)")
    p.add_argument("--soak-seconds", type=float, default=3600.0, help="soak length (default 3600)")
    p.add_argument("--soak-interval", type=float, default=60.0, help="soak sampling interval (default 60)")
    p.add_argument("--prompt", default="a quiet forest",
                   help="the sessions' prompt (default 'a quiet forest'; a prompt with a package start frame, e.g. "
                        "'a quiet forest path at dawn' for the default model, opens from that frame)")
    p.add_argument("--format", default="rgb24", choices=["rgb24", "jpeg"], help="frame format through the daemon")
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="torch threads, in-process and in the daemon (default: cores - 1, the daemon's default)")
    p.add_argument("--daemon-src", type=Path, help="run the daemon from this checkout (e.g. a version before a change)")
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
    from worldsim.pipeline.options import parse_denoising_steps, parse_step_indices
    from worldsim.runtime import RuntimeOptions, build_runtime

    torch.set_num_threads(args.threads)
    b = build_runtime(RuntimeOptions(preset=args.preset, model=args.model, height=args.height, width=args.width,
                                     chunk_latents=args.chunk_latents,
                                     denoising_steps=args.steps and parse_denoising_steps(args.steps),
                                     guided_steps=args.guided_steps and parse_step_indices(args.guided_steps)))
    k, n = b.schema.frames_per_latent, b.chunk_latents
    keys = torch.zeros(1, n, k, len(b.schema.keys))
    keys[..., 0] = 1
    session = b.new_session(b.embed_prompt(args.prompt))
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
        with torch.inference_mode():  # as the daemon steps and decodes
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


class Daemon:
    """A `worldsim serve` subprocess (from --daemon-src when given) on a free loopback port."""

    def __init__(self, args: argparse.Namespace, chunk_latents: int | None = None, max_batch: int | None = None,
                 size: tuple[int, int] | None = None, websocket: bool = False):
        self.endpoint = free_endpoint()
        width, height = size or (args.width, args.height)
        model = str(Path(args.model).resolve()) if args.model and Path(args.model).exists() else args.model
        cmd = [sys.executable, "-m", "worldsim", "serve", *(["--model", model] if model else ["--preset", args.preset]),
               *(["--height", str(height), "--width", str(width)] if height and width else []),
               "--bind", self.endpoint, "--stats-interval", "0", "--log-level",
               "WARNING", "--threads", str(args.threads), "--fps", str(args.fps), "--max-sessions", "16",
               "--max-sessions-per-client", "16"]
        if chunk_latents is not None:
            cmd += ["--chunk-latents", str(chunk_latents)]
        if args.steps is not None:
            cmd += ["--steps", args.steps]
        if args.guided_steps is not None:
            cmd += ["--guided-steps", args.guided_steps]
        if max_batch is not None:
            cmd += ["--max-batch", str(max_batch)]
        self.ws_url = None
        if websocket:
            port = free_endpoint().rsplit(":", 1)[1]
            cmd += ["--ws", f"127.0.0.1:{port}"]
            self.ws_url = f"ws://127.0.0.1:{port}/"
        env, cwd = dict(os.environ), None
        if args.daemon_src is not None:  # `python -m` puts the working directory first on sys.path: run it there
            cwd = args.daemon_src.resolve()
            env["PYTHONPATH"] = str(cwd)
        self.proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, env=env, cwd=cwd)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def __enter__(self) -> "Daemon":
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def throughput(args: argparse.Namespace, endpoint: str, sessions: int) -> dict:
    from worldsim.client import Client

    c = Client(endpoint, name="bench", timeout=120)
    try:
        keys = len(c.welcome.control.keys)
        row = {"keys": [[1.0] + [0.0] * (keys - 1)]} if keys else None
        opened, first = {}, {}
        for i in range(sessions):
            t_open = time.perf_counter()
            opened[c.open(args.prompt, seed=i, fps=0, format=args.format)] = t_open
        sids = list(opened)
        t_start = next_input = time.perf_counter()
        measuring_since, counts = None, {s: 0 for s in sids}
        while True:
            now = time.perf_counter()
            if measuring_since is None and now - t_start >= args.warmup:
                measuring_since, counts = now, {s: 0 for s in sids}
            if measuring_since is not None and now - measuring_since >= args.seconds:
                break
            if row and now >= next_input:
                for s in sids:
                    c.send(s, controls=row)
                next_input += 1 / CONTROL_HZ
            for f in c.frames_ready():
                f.image  # decode, as a client would
                counts[f.session] += 1
                first.setdefault(f.session, time.perf_counter() - opened[f.session])
            time.sleep(0.001)
        elapsed = time.perf_counter() - measuring_since
        for s in sids:
            c.close_session(s)
    finally:
        c.close()
    per = [counts[s] / elapsed for s in sids]
    return {"sessions": sessions, "fps_total": sum(per), "fps_per_session": per, "client_dropped": c.frames_dropped,
            "first_frame_ms": [1000 * first[s] for s in sids if s in first]}  # open sent -> its first frame here


def paced_latency(args: argparse.Namespace, endpoint: str, seconds: float) -> dict:
    """One paced session played by a player model; control-to-photon per input, its expectation and the floor."""
    import random

    from worldsim.client import Client
    from worldsim.client.photon import PlayoutClock, expected_control_to_photon
    from worldsim.serve.pacing import latency_floor_s

    rng = random.Random(0)
    with Client(endpoint, name="latency", timeout=120) as c:
        keys = len(c.welcome.control.keys)
        if not keys:
            raise SystemExit("the latency benchmark sends keys; this daemon's model takes none")
        s = c.open(args.prompt, fps=args.fps, format=args.format)
        clock = PlayoutClock(args.fps)
        t_start = time.monotonic()
        next_input = t_start
        measuring, latencies, chunks, gen_s, shown, frames_per_chunk = False, [], [], [], [], []
        while time.monotonic() - t_start < args.warmup + seconds:
            now = time.monotonic()
            if not measuring and now - t_start >= args.warmup:
                measuring, latencies, chunks, gen_s, shown = True, [], [], [], []
            if now >= next_input:  # one control row per frame period, sent at a jittered moment
                c.send(s, controls={"keys": [[float(rng.random() < 0.5)] + [0.0] * (keys - 1)]})
                next_input += rng.uniform(0.5, 1.5) / args.fps
            f = c.frame(max(0.0, min(0.005, next_input - time.monotonic())))
            if f is None or f.session != s:
                continue
            at = clock.show(f)
            shown.append(at)
            lat = c.core.inputs_shown(f.header["input_seq"], at)
            if measuring:
                latencies += lat
            if f.header["i"] == 0:
                chunks.append((f.chunk_started, at))
                gen_s.append(f.header["gen_ms"] / 1e3)
                frames_per_chunk.append(f.header["n"])
        c.close_session(s)
    n = statistics.median(frames_per_chunk)
    chunk_s = statistics.median(gen_s)
    expected = expected_control_to_photon(chunks)
    return {"latency": summary(latencies), "expected_ms": None if expected is None else 1e3 * expected,
            "floor_ms": 1e3 * latency_floor_s(int(n), args.fps, chunk_s), "chunk_ms": 1e3 * chunk_s,
            "frames_per_chunk": n, "shown_fps": (len(shown) - 1) / (shown[-1] - shown[0]) if len(shown) > 1 else 0}


def paced_clients(args: argparse.Namespace, endpoint: str, clients: int, fmt: str) -> dict:
    """``clients`` clients with one paced session each, a control row every frame period; frames/s per client,
    control-to-photon and per-frame delivery time (daemon ``t_send`` -> received, same-host wall clock)."""
    from worldsim.client import Client
    from worldsim.client.photon import PlayoutClock

    cs, sids = [], []
    try:
        for i in range(clients):  # an open waits for the chunk in progress: keep the others' heartbeats going
            cs.append(Client(endpoint, name=f"bench{i}", timeout=120))
            sids.append(cs[-1].open(args.prompt, seed=i, fps=args.fps, format=fmt))
            for c in cs:
                c.frames_ready()
        keys = len(cs[0].welcome.control.keys)
        row = {"keys": [[1.0] + [0.0] * (keys - 1)]} if keys else None
        clocks = [PlayoutClock(args.fps) for _ in cs]
        t_start = next_input = time.monotonic()
        measuring, counts, latencies, delivery = False, [0] * clients, [], []
        while (now := time.monotonic()) - t_start < args.warmup + args.seconds:
            if not measuring and now - t_start >= args.warmup:
                measuring, counts, latencies, delivery, since = True, [0] * clients, [], [], now
            if now >= next_input:
                for c, s in zip(cs, sids):
                    c.send(s, controls=row) if row else c.ping()
                next_input += 1 / args.fps
            for k, c in enumerate(cs):
                for f in c.frames_ready():
                    f.image  # decode, as a player would
                    at = clocks[k].show(f)
                    lat = c.core.inputs_shown(f.header["input_seq"], at)
                    if measuring:
                        counts[k] += 1
                        latencies += lat
                        delivery.append(f.received_wall - f.header["t_send"])
            time.sleep(0.001)
        elapsed = time.monotonic() - since
        for c, s in zip(cs, sids):
            c.close_session(s)
    finally:
        for c in cs:
            c.close()
    return {"clients": clients, "format": fmt, "fps_per_client": [n / elapsed for n in counts],
            "latency": summary(latencies), "delivery": summary(delivery)}


def transport_comparison(args: argparse.Namespace) -> list[dict]:
    out = []
    for size in args.transport_sizes.split(","):
        w, h = (int(v) for v in size.lower().split("x"))
        with Daemon(args, size=(w, h), websocket=True) as d:
            for fmt in ("rgb24", "jpeg"):
                for n in [int(x) for x in args.transport_clients.split(",") if x.strip()]:
                    for transport, endpoint in (("zmq", d.endpoint), ("ws", d.ws_url)):
                        r = paced_clients(args, endpoint, n, fmt) | {"transport": transport, "video": f"{w}x{h}"}
                        out.append(r)
                        lat, dl = r["latency"], r["delivery"]
                        print(f"{w}x{h} {fmt:5s} {transport:3s} {n} client(s): "
                              f"{statistics.mean(r['fps_per_client']):5.1f} frames/s each, control-to-photon "
                              f"median {ms(lat['median_ms'])} p95 {ms(lat['p95_ms'])} ms, delivery median "
                              f"{ms(dl['median_ms'])} p95 {ms(dl['p95_ms'])} ms", flush=True)
    return out


def spread(xs: list[float]) -> float | None:
    """(max - min) / median: how far a series that should stay flat moved."""
    return (max(xs) - min(xs)) / statistics.median(xs) if xs else None


def soak(args: argparse.Namespace, daemon: Daemon) -> dict:
    """One paced session for --soak-seconds: controls every frame, prompt switches, resets; sampled each interval."""
    from worldsim.client import Client

    prompts = ["a quiet forest", "a desert at noon", "a snowy pass", "a lava field", "a dungeon corridor"]
    samples = []
    with Client(daemon.endpoint, name="soak", timeout=120) as c:
        keys = len(c.welcome.control.keys)
        if not keys:
            raise SystemExit("the soak sends keys; this daemon's model takes none")
        s = c.open(prompts[0], fps=args.fps, format=args.format)
        t0 = time.monotonic()
        next_input, next_switch, next_reset, next_sample = t0, t0 + 10, t0 + 300, t0 + args.soak_interval
        window, switches, resets, frames = [], 0, 0, 0
        while (now := time.monotonic()) - t0 < args.soak_seconds:
            if now >= next_input:
                c.send(s, controls={"keys": [[1.0] + [0.0] * (keys - 1)]})
                next_input += 1 / args.fps
            if now >= next_switch:
                switches += 1
                c.send(s, prompt=prompts[switches % len(prompts)], mode=["soft", "recache", "cut"][switches % 3])
                next_switch += 10
            if now >= next_reset:
                c.reset(s)
                resets += 1
                next_reset += 300
            for f in c.frames_ready():
                frames += 1
                if f.header["i"] == 0:
                    window.append(f.header["gen_ms"])
            if now >= next_sample:
                samples.append({"t_s": round(now - t0, 1), "rss_mb": round(daemon.rss_mb(), 1),
                                "chunk_ms_median": statistics.median(window) if window else None,
                                "chunk_ms_p95": sorted(window)[int(0.95 * len(window))] if window else None,
                                "frames": frames})
                print(f"soak {samples[-1]}", flush=True)
                window = []
                next_sample += args.soak_interval
            time.sleep(0.002)
    warm = samples[1:] or samples
    rss = [x["rss_mb"] for x in warm]
    chunk = [x["chunk_ms_median"] for x in warm if x["chunk_ms_median"] is not None]
    return {"samples": samples, "switches": switches, "resets": resets,
            "rss_spread_after_warmup": spread(rss), "chunk_ms_spread_after_warmup": spread(chunk)}


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
    parts = set(args.only or ["in-process", "throughput", "latency", "protocol"])
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "cpu") if Path("/proc/cpuinfo").is_file() else "cpu"
    cond = {"model": args.model or f"{args.preset} preset", "video": f"{args.width}x{args.height}"
            if args.width and args.height else "the model's", "decoder": "the model's" if args.model else "preview",
            "format": args.format, "device": f"{cpu}, {os.cpu_count()} cores", "threads": args.threads,
            "seconds": args.seconds, "fps": args.fps, "daemon_src": str(args.daemon_src or "this checkout"),
            "chunk_latents": args.chunk_latents or "the model's", "steps": args.steps or "the model's",
            "guided_steps": args.guided_steps or "the model's"}
    print("conditions: " + ", ".join(f"{k}={v}" for k, v in cond.items()), flush=True)
    results: dict = {"conditions": cond}
    if "in-process" in parts:
        results["in_process"] = ip = in_process(args)
        print(f"in-process              : {ip['fps']:7.1f} frames/s", flush=True)
    if "throughput" in parts:
        results["throughput"] = []
        for batch in (1, 8):
            with Daemon(args, args.chunk_latents, max_batch=batch) as d:
                for n in [int(x) for x in args.sessions.split(",") if x.strip()]:
                    r = throughput(args, d.endpoint, n) | {"max_batch": batch}
                    results["throughput"].append(r)
                    print(f"daemon, {n} session(s), max batch {batch}: {r['fps_total']:7.1f} frames/s total "
                          f"({' '.join(f'{x:.1f}' for x in r['fps_per_session'])} each); first frame after open "
                          f"{' '.join(f'{x:.0f}' for x in r['first_frame_ms'])} ms", flush=True)
    if "latency" in parts:
        results["latency"] = []
        for chunk in [int(x) for x in args.chunks.split(",") if x.strip()]:
            with Daemon(args, None if args.daemon_src else chunk) as d:
                r = paced_latency(args, d.endpoint, args.seconds) | {"chunk_latents": chunk}
                results["latency"].append(r)
                lat = r["latency"]
                print(f"paced {args.fps:g} fps, chunk {chunk} ({r['frames_per_chunk']:g} frames, "
                      f"{r['chunk_ms']:.0f} ms): control-to-photon median {ms(lat['median_ms'])} p95 "
                      f"{ms(lat['p95_ms'])} ms (n={lat['n']}), expected {ms(r['expected_ms'])} ms, floor "
                      f"{r['floor_ms']:.0f} ms, shown {r['shown_fps']:.2f} fps", flush=True)
    if "transport" in parts:
        results["transport"] = transport_comparison(args)
    if "soak" in parts:
        with Daemon(args) as d:
            results["soak"] = r = soak(args, d)
        print(f"soak {args.soak_seconds:g} s: {r['switches']} switches, {r['resets']} resets, RSS spread after "
              f"warm-up {r['rss_spread_after_warmup']}, chunk-time spread {r['chunk_ms_spread_after_warmup']}",
              flush=True)
    if "protocol" in parts:
        results["protocol_overhead_832x480"] = po = protocol_overhead(args.overhead_frames)
        for fmt, r in po.items():
            print(f"protocol {fmt:5s} 832x480: {r['total_ms']:.2f} ms/frame (encode {r['encode_ms']:.2f}, "
                  f"transfer {r['transfer_ms']:.2f}, decode {r['decode_ms']:.2f}), {r['bytes'] / 1024:.0f} KiB/frame")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
