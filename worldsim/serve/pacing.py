"""When to generate each session's next chunk: late-bound deadlines from the client's playout, and a planner.

A paced session (fps > 0) is shown by its client at ``fps`` from a short buffer. Its :class:`Playout` clock keeps
``end``, the moment the client will have shown every frame generated so far (assuming each chunk is shown from
its arrival, one frame per 1/fps). The next chunk is needed by then, so its *deadline* is
``end - lookahead - margin``, and it should start as late as that allows: controls sent until the start enter the
chunk (late binding). An input arriving at a random moment then waits on average half a chunk's playout for the
next start, plus one chunk's generation time: the floor that :func:`latency_floor_s` computes.

The :func:`plan` step picks what the model loop runs now. Paced chunks that can still make their deadline are
hard jobs: scheduled backwards from their deadlines (latest start first), so several sessions sharing the model
are started early enough to all finish on time. Everything else — paced sessions already late, and unpaced ones
(fps 0, as fast as the model goes) — runs only in the slack before the next hard start, late ones first, then
round robin. A session whose client has not read its queued frames is not a candidate at all (the daemon's
queue for it is full): a client that does not read costs no model time, paced or not.
"""

from __future__ import annotations

from dataclasses import dataclass

from .stats import Recent

MARGIN_FRAMES = 0.25  # safety before a deadline, in frame periods (absorbs jitter of the chunk-time estimate)
ESTIMATE_QUANTILE = 0.9  # of recent chunk times: the duration a chunk is planned with


class Playout:
    """A paced session's view of its client's playout (all times ``time.monotonic()`` seconds)."""

    def __init__(self, fps: float, lookahead_s: float, now: float):
        self.fps, self.lookahead_s = fps, lookahead_s
        self.end = now
        self.chunk_s = Recent(32)

    def restart(self, now: float) -> None:
        """Nothing is buffered any more (a new stream, a reset, a resume): the next chunk is due at once."""
        self.end = now

    def finished(self, frames: int, duration_s: float, now: float) -> None:
        """A chunk of ``frames`` took ``duration_s`` and was handed to the socket loop at ``now``."""
        self.chunk_s.add(duration_s)
        if self.fps > 0:
            self.end = max(self.end, now) + frames / self.fps

    def estimate_s(self, fallback: float) -> float:
        """Planned duration of the next chunk: a high quantile of this session's recent ones."""
        q = self.chunk_s.quantile(ESTIMATE_QUANTILE)
        return fallback if q is None else q

    def deadline(self) -> float | None:
        """When the next chunk must be ready; None for an unpaced session."""
        if self.fps <= 0:
            return None
        return self.end - self.lookahead_s - MARGIN_FRAMES / self.fps


def latency_floor_s(chunk_frames: int, fps: float, chunk_s: float) -> float:
    """Mean control-to-photon of an input sent at a random moment, for a loop that starts each chunk at the last
    possible moment: half a chunk's playout (waiting for the next start) plus one chunk's generation."""
    return 0.5 * chunk_frames / fps + chunk_s


@dataclass
class Job:
    """A candidate chunk: ``key`` names the session, ``deadline`` None for unpaced, ``last_run`` for round robin."""

    key: int
    duration_s: float
    deadline: float | None
    last_run: float = 0.0


def plan(jobs: list[Job], now: float) -> tuple[Job | None, float]:
    """(the job to run now or None, seconds until the next planned start when None)."""
    hard = sorted((j for j in jobs if j.deadline is not None and j.deadline - j.duration_s >= now),
                  key=lambda j: j.deadline)
    latest, first = float("inf"), None
    for j in reversed(hard):  # backwards: each job must end before its deadline and before the next one starts
        latest = min(j.deadline, latest) - j.duration_s
        first = j
    if first is not None and now >= latest - 1e-4:
        return first, 0.0
    late = sorted((j for j in jobs if j.deadline is not None and j.deadline - j.duration_s < now),
                  key=lambda j: j.deadline)
    unpaced = sorted((j for j in jobs if j.deadline is None), key=lambda j: j.last_run)
    for j in late + unpaced:
        if now + j.duration_s <= latest:
            return j, 0.0
    return None, (latest - now) if first is not None else float("inf")
