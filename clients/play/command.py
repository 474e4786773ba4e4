"""``worldsim play``: arguments, optional daemon spawn, headless set-up, then :class:`~clients.play.app.PlayApp`.

No torch here or in anything it imports: the player starts in about a second (a spawned daemon takes longer).
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys

from worldsim.client.core import DEFAULT_ENDPOINT
from worldsim.serve.protocol import SWITCH_MODES

HEADLESS_DEMO_FRAMES = 160  # frames played when there is no display and no --max-frames


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"window size must look like 1024x768, got {text!r}") from None
    return w, h


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--connect", default=DEFAULT_ENDPOINT,
                   help=f"daemon endpoint, or a WebSocket gateway's ws:// or wss:// URL (default {DEFAULT_ENDPOINT})")
    p.add_argument("--spawn-daemon", action="store_true",
                   help="start `worldsim serve` on a free local port for this session and stop it on exit")
    p.add_argument("--serve-args", default="", metavar="ARGS",
                   help="extra arguments for the spawned daemon, e.g. \"--model PATH\" or \"--preset tiny\"")
    p.add_argument("--prompt", help="opening prompt (default: the palette's first)")
    p.add_argument("--prompts", metavar="FILE",
                   help="prompt palette for the number keys 1-9: one prompt per line, optionally 'label: prompt'; "
                        "# comments (default: the toy world's five themes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=["auto", "rgb24", "jpeg"], default="auto",
                   help="frame format (auto: rgb24 on this machine, jpeg over a network)")
    p.add_argument("--mode", choices=SWITCH_MODES, default="recache", help="initial prompt switch mode (F2 cycles)")
    p.add_argument("--window", type=_size, help="window size WxH (default: the video scaled up to about 768 px)")
    p.add_argument("--sensitivity", type=float, default=0.02, help="mouse axis units per pixel (default 0.02)")
    p.add_argument("--record", metavar="DIR", help="record frames, per-frame controls and prompts (docs/DATASET.md)")
    p.add_argument("--screenshot-dir", default=".", help="where F12 saves screenshots (default: .)")
    p.add_argument("--headless", action="store_true", help="no window (SDL dummy driver); status lines on stdout")
    p.add_argument("--max-frames", type=int, help="quit after showing this many frames")
    p.add_argument("--no-grab", action="store_true", help="do not grab the mouse")
    p.add_argument("--keys", metavar="DIR", help="CurveZMQ key directory (from `worldsim keys`) for a CURVE daemon")
    p.add_argument("--key-name", default="client", help="this client's key name in --keys DIR (default: client)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the daemon (default 60)")


def _free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _no_display() -> bool:
    return sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run(args: argparse.Namespace) -> int:
    headless, max_frames = args.headless, args.max_frames
    if not headless and _no_display():
        max_frames = max_frames or HEADLESS_DEMO_FRAMES
        print(f"worldsim play: no display found (DISPLAY/WAYLAND_DISPLAY unset); playing headless for {max_frames} "
              "frames", file=sys.stderr)
        headless = True
    if headless:
        os.environ["SDL_VIDEODRIVER"] = "dummy"
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

    from worldsim.client import Client, ClientCurve, ClientError
    from worldsim.serve.security import is_local

    from .app import PlayApp, PlayConfig
    from .palette import PromptPalette

    try:
        palette = PromptPalette.load(args.prompts)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    endpoint, daemon = args.connect, None
    if args.spawn_daemon:
        endpoint = _free_endpoint()
        daemon = subprocess.Popen([sys.executable, "-m", "worldsim", "serve", "--bind", endpoint,
                                   *shlex.split(args.serve_args)])
    fmt = args.format if args.format != "auto" else ("rgb24" if is_local(endpoint) else "jpeg")
    print(f"worldsim play: connecting to {endpoint} ...", file=sys.stderr, flush=True)
    try:
        curve = ClientCurve.from_dir(args.keys, args.key_name) if args.keys else None
        with Client(endpoint, name="worldsim-play", curve=curve, timeout=args.timeout) as client:
            cfg = PlayConfig(prompt=args.prompt or palette.entries[0].text, seed=args.seed, format=fmt,
                             mode=args.mode, window=args.window, sensitivity=args.sensitivity, record=args.record,
                             screenshot_dir=args.screenshot_dir, max_frames=max_frames,
                             grab_mouse=not (args.no_grab or headless), status_every_s=2.0 if headless else 0.0,
                             palette=palette)
            summary = PlayApp(client, cfg).run()
    except (ClientError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
    lat = summary["latency_ms"]
    print(f"worldsim play: showed {summary['frames_shown']} frames at {summary['fps']:.1f} fps, control-to-photon "
          f"median {lat['median'] or 0:.0f} ms (p95 {lat['p95'] or 0:.0f}), dropped {summary['dropped']}"
          + (f", recorded {summary['recorded_frames']} frames to {summary['record_dir']}" if args.record else ""),
          file=sys.stderr)
    return 1 if summary["error"] else 0
