"""Control-to-photon on the client side, as bridge/PROTOCOL.md defines it.

A paced stream is shown one frame per 1/fps from a buffer: frame k appears at
``max(arrival_k, shown_{k-1} + 1/fps)`` (:class:`PlayoutClock`). An input's control-to-photon is the time from
sending it to showing the first frame whose ``input_seq`` is that input or a newer one
(:meth:`~worldsim.client.core.ClientCore.inputs_shown`). For an input sent at a random moment the daemon's
schedule alone fixes its expectation, which :func:`expected_control_to_photon` computes from the chunks' start
and first-shown times, free of the sampling noise of a handful of real inputs.
"""

from __future__ import annotations

from .core import Frame


class PlayoutClock:
    """When a player that shows ``fps`` frames per second from a buffer shows each frame (fps 0: on arrival)."""

    def __init__(self, fps: float):
        self.period = 1.0 / fps if fps > 0 else 0.0
        self.last: float | None = None
        self.epoch: tuple[int, int] | None = None

    def show(self, frame: Frame) -> float:
        key = (frame.session, frame.epoch)
        at = frame.received if self.last is None or key != self.epoch else max(frame.received,
                                                                                self.last + self.period)
        self.last, self.epoch = at, key
        return at


def expected_control_to_photon(chunks: list[tuple[float, float]]) -> float | None:
    """Mean control-to-photon of an input sent at a uniformly random moment, from consecutive chunks'
    ``(generation start, first frame shown)``: an input sent between starts k-1 and k is first in chunk k.
    None with fewer than two chunks."""
    if len(chunks) < 2:
        return None
    total = weighted = 0.0
    for (prev_start, _), (start, shown) in zip(chunks, chunks[1:]):
        gap = start - prev_start
        weighted += gap * gap / 2 + gap * (shown - start)  # integral of (start - t) + (shown - start) over the gap
        total += gap
    return weighted / total if total > 0 else None
