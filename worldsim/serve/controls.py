"""Per-session control state: queued per-video-frame samples, held state, and resampling to a chunk.

Clients send controls as they happen (per video frame, usually at the stream's fps) or as a held state. When a
chunk starts, the daemon takes exactly the rows it needs (reference §8.1-8.2):

- fewer queued rows than needed: the rest are filled with the held state (the last keys and embedding sent; the
  held axes, zero unless a ``hold`` set them, so mouse deltas do not repeat);
- more queued rows than needed (the client runs ahead of generation): they are resampled into the needed count
  — keys pressed if held for at least half of an interval, axes (deltas) summed, the embedding's last value.

Latent frame 0 of a stream has no preceding frame, so it gets no controls (``present`` false) and a chunk that
starts a stream takes ``frames_per_latent`` rows fewer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..model.control import Controls
from .protocol import ControlRows, ControlSchema


@dataclass
class ChunkControls:
    """The rows a chunk consumed ([n, ·] per seen source) and the model input built from them."""

    rows: ControlRows
    controls: Controls | None


class ControlBuffer:
    def __init__(self, schema: ControlSchema, max_queued: int):
        self.schema = schema
        self.max_queued = max_queued
        w = schema.widths()
        self.held = {s: np.zeros(n, np.float32) for s, n in w.items()}
        self.seen: set[str] = set()  # sources ever sent; only these reach the model
        self._queue: list[dict[str, np.ndarray]] = []  # blocks with every source filled
        self.queued = 0
        self.dropped = 0

    def push(self, rows: ControlRows) -> None:
        """Queue samples; sources a block lacks take the held state. The last row's keys/embedding become held."""
        n, given = len(rows), rows.sources()
        block = {s: given[s] if s in given else np.repeat(self.held[s][None], n, 0) for s in self.held}
        if "axes" not in given:
            block["axes"] = np.repeat(self.held["axes"][None], n, 0)
        for s in ("keys", "embedding"):
            if s in given:
                self.held[s] = given[s][-1].copy()
        self.seen.update(given)
        self._queue.append(block)
        self.queued += n
        while self.queued > self.max_queued:  # drop the oldest rows
            excess, first = self.queued - self.max_queued, self._queue[0]
            cut = min(excess, len(first["keys"]))
            self._queue[0] = {s: a[cut:] for s, a in first.items()}
            if not len(self._queue[0]["keys"]):
                self._queue.pop(0)
            self.queued -= cut
            self.dropped += cut

    def hold(self, rows: ControlRows) -> None:
        """Set the held state (one row per given source)."""
        for s, a in rows.sources().items():
            self.held[s] = a[0].copy()
        self.seen.update(rows.sources())

    def clear_queue(self) -> None:
        self._queue, self.queued = [], 0

    def take(self, n: int) -> dict[str, np.ndarray]:
        """Exactly ``n`` rows per source, from the queue, padded with held state or resampled; none (the queue
        left for the next chunk) when ``n`` is 0."""
        if n == 0:
            return {s: np.zeros((0, len(h)), np.float32) for s, h in self.held.items()}
        queued = {s: np.concatenate([b[s] for b in self._queue]) if self._queue else np.zeros((0, len(self.held[s])),
                                                                                              np.float32)
                  for s in self.held}
        m = self.queued
        self.clear_queue()
        if m <= n:
            return {s: np.concatenate([q, np.repeat(self.held[s][None], n - m, 0)]) for s, q in queued.items()}
        edges = np.linspace(0, m, n + 1).astype(int)  # n bins over m rows, each non-empty since m > n
        starts, counts = edges[:-1], np.diff(edges)[:, None]

        def bin_sum(a: np.ndarray) -> np.ndarray:
            return np.add.reduceat(a, starts) if a.shape[1] else a[:n]

        return {"keys": (bin_sum(queued["keys"]) / counts >= 0.5).astype(np.float32),
                "axes": bin_sum(queued["axes"]), "embedding": queued["embedding"][edges[1:] - 1]}

    def for_chunk(self, latents: int, starts_stream: bool, device: torch.device, dtype: torch.dtype) -> ChunkControls:
        """The controls of a chunk of ``latents`` latent frames (the first neutral when it starts the stream)."""
        if not self.seen:
            return ChunkControls(ControlRows(), None)
        k, skip = self.schema.frames_per_latent, int(starts_stream)
        taken = self.take(k * (latents - skip))  # 0 rows for a one-latent chunk starting the stream
        rows = ControlRows(**{s: taken[s] for s in self.seen})
        tensors = {}
        for s, a in rows.sources().items():
            t = torch.zeros(1, latents, k, a.shape[1], dtype=dtype)
            t[0, skip:] = torch.from_numpy(a).view(latents - skip, k, a.shape[1])
            tensors[s] = t.to(device)
        present = torch.ones(1, latents, dtype=torch.bool)
        present[0, :skip] = False
        return ChunkControls(rows, Controls(**tensors, present=present.to(device)))
