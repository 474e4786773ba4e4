"""Toy-world speed on one CPU core: frames/s of ``render`` (a fixed state) and ``step`` (physics + render).

    python benchmarks/world_speed.py [--size 64] [--frames 500] [--repeats 15]

Pins the process to one core (the first it may use) and reports, per theme, the median and the best of the
repeats (on a shared machine the best is the closer estimate of the uncontended speed) and the load average.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from worldsim.world import THEMES, Camera, World, WorldConfig, key_row  # noqa: E402


def _rates(fn, frames: int, repeats: int) -> tuple[float, float]:
    """(median, best) frames/s over the repeats."""
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(frames):
            fn(i)
        rates.append(frames / (time.perf_counter() - t))
    return statistics.median(rates), max(rates)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64, help="frame height and width (default 64)")
    p.add_argument("--frames", type=int, default=500, help="frames per repeat (default 500)")
    p.add_argument("--repeats", type=int, default=15, help="repeats (default 15)")
    args = p.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    world = World(WorldConfig(camera=Camera(height=args.size, width=args.size)))
    keys, axes = key_row(["W"]), np.array([0.3, 0.0], np.float32)
    print(f"{platform.machine()}, numpy {np.__version__}, one core, {args.size}x{args.size}, "
          f"{args.frames} frames x {args.repeats} repeats, load average {os.getloadavg()[0]:.2f}")
    print(f"{'theme':10s} {'render median':>14s} {'best':>6s} {'step median':>12s} {'best':>6s}   (frames/s)")
    for theme in THEMES:
        world.reset(seed=0, theme=theme)
        state = world.state
        render = _rates(lambda i: world.render(state), args.frames, args.repeats)
        step = _rates(lambda i: world.step(keys, axes), args.frames, args.repeats)
        print(f"{theme:10s} {render[0]:14.0f} {render[1]:6.0f} {step[0]:12.0f} {step[1]:6.0f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
