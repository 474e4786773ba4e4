"""Rolling statistics for sessions: counters, recent latencies (median, p95) and a windowed frame rate.

Pure Python (no torch, no numpy), so the client library and HUDs can use it too. :class:`Recent` and
:class:`RateMeter` are not thread-safe: each instance belongs to one thread. A session's stats are split by
owner: :class:`GenerationStats` (engine thread, read elsewhere only through its published snapshot) and
:class:`DeliveryStats` (daemon thread).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field


class Recent:
    """The last ``size`` values of a measurement, with median and p95."""

    def __init__(self, size: int = 128):
        self.values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self.values.append(value)

    def quantile(self, q: float) -> float | None:
        xs = sorted(self.values)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None

    def summary(self, scale: float = 1e3) -> dict[str, float | None]:
        med, p95 = self.quantile(0.5), self.quantile(0.95)
        return {"median": None if med is None else med * scale, "p95": None if p95 is None else p95 * scale}


class RateMeter:
    """Events per second over a sliding window of ``window_s`` seconds."""

    def __init__(self, window_s: float = 2.0):
        self.window_s = window_s
        self.times: deque[float] = deque()

    def tick(self, n: int = 1, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.times.extend([now] * n)
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self.times and self.times[0] < now - self.window_s:
            self.times.popleft()

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self._trim(now)
        if len(self.times) < 2:
            return 0.0
        return (len(self.times) - 1) / max(now - self.times[0], 1e-9)


@dataclass
class GenerationStats:
    """What the model loop did for one session. Written by the engine thread only; it calls :meth:`publish` after
    each change, and other threads read only :attr:`published` (a new dict each time, swapped in atomically)."""

    chunks: int = 0
    frames_generated: int = 0
    inputs: int = 0
    samples_dropped: int = 0  # control rows dropped because the client sent far ahead of generation
    prompt_switches: int = 0
    chunk_s: Recent = field(default_factory=Recent)  # model step + decode + encode per chunk
    input_to_frame_s: Recent = field(default_factory=Recent)  # input arrival -> its chunk's frames made
    published: dict = field(default_factory=dict)

    def publish(self) -> None:
        self.published = {"chunks": self.chunks, "frames_generated": self.frames_generated, "inputs": self.inputs,
                           "samples_dropped": self.samples_dropped, "prompt_switches": self.prompt_switches,
                           "chunk_ms": self.chunk_s.summary(), "input_to_frame_ms": self.input_to_frame_s.summary()}


@dataclass
class DeliveryStats:
    """What the socket loop did for one session; written and read by the daemon thread only."""

    created: float = field(default_factory=time.monotonic)
    frames_sent: int = 0
    frames_dropped: int = 0  # dropped from the per-session queue (a reset, or a client reading too slowly)
    sent_rate: RateMeter = field(default_factory=RateMeter)


def session_report(generation: GenerationStats, delivery: DeliveryStats) -> dict:
    """One session's stats as sent in ``stats`` and ``closed`` (milliseconds; call on the daemon thread)."""
    gen = {"chunks": 0, "frames_generated": 0, "inputs": 0, "samples_dropped": 0, "prompt_switches": 0,
           "chunk_ms": {"median": None, "p95": None}, "input_to_frame_ms": {"median": None, "p95": None}}
    gen |= generation.published
    return {"uptime_s": round(time.monotonic() - delivery.created, 3), **gen, "frames_sent": delivery.frames_sent,
            "frames_dropped": delivery.frames_dropped, "fps": round(delivery.sent_rate.rate(), 2)}
