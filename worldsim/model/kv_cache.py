"""Preallocated KV cache: a fixed sink plus a rolling ring window, and the text cross-attention cache.

Layout per layer (all layers in one tensor, allocated once):

    k, v: [num_layers, B, (sink + window) * T, H, D]     T = tokens per latent frame
          slots [0, sink)              the first ``sink`` frames of the stream, never evicted
          slots [sink, sink + window)  a ring: frame f >= origin lives in slot sink + (f - origin) % window

Keys are stored after RoPE at their absolute frame positions, and attention over cached keys needs no mask (a
query may see every resident key), so slot order is irrelevant: writing a chunk overwrites the oldest frames in
place and nothing is ever copied or shifted. Memory is constant however long a session runs. Resident slots
always form the prefix ``[0, valid_tokens)``, so a read is a view.

``window`` counts the rolling frames a chunk attends to, its own frames included; a query in a chunk ending at
frame e sees frames [e - window, e) plus the sink — the same rule as the block-causal local-window mask.
"""

from __future__ import annotations

import torch

from .attention import FrameMask


class KVCache:
    def __init__(self, *, num_layers: int, batch: int, num_heads: int, head_dim: int, tokens_per_frame: int,
                 sink_frames: int, window_frames: int, device: torch.device | str, dtype: torch.dtype):
        if window_frames < 1:
            raise ValueError(f"window_frames must be >= 1, got {window_frames}")
        if sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0, got {sink_frames}")
        self.sink = sink_frames
        self.window = window_frames
        self.tokens_per_frame = tokens_per_frame
        shape = (num_layers, batch, (sink_frames + window_frames) * tokens_per_frame, num_heads, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # Text cross-attention K/V per layer, filled on the first forward after a prompt is set.
        self.cross_k: torch.Tensor | None = None  # [num_layers, B, L_text, H, D]
        self.cross_v: torch.Tensor | None = None
        self.cross_valid = False
        # Text K/V of guidance branches (the empty prompt; the prompt itself for control guidance), by context
        self._branch_texts: list[tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]] = []
        self.end = 0  # exclusive end of the frames written so far (absolute frame index)
        self.origin = sink_frames  # first frame of the current ring epoch (>= sink)
        self._runs: list[tuple[int, int, int]] = []  # (first frame offset in chunk, first slot, length) of the pending write

    # ---- bookkeeping -------------------------------------------------------------------------------------
    @property
    def capacity_frames(self) -> int:
        return self.sink + self.window

    @property
    def resident_frames(self) -> int:
        """Frames currently attended to: the filled sink plus the filled part of the ring."""
        return self._resident_frames(self.end)

    def _resident_frames(self, end: int) -> int:
        return min(self.sink, end) + max(0, min(self.window, end - self.origin))

    @property
    def valid_tokens(self) -> int:
        return self.resident_frames * self.tokens_per_frame

    def nbytes(self) -> int:
        extra = 0 if self.cross_k is None else self.cross_k.nbytes + self.cross_v.nbytes
        extra += sum(k.nbytes + v.nbytes for _, kv in self._branch_texts for k, v in kv)
        return self.k.nbytes + self.v.nbytes + extra

    def is_resident(self, frame: int) -> bool:
        if frame >= self.end:
            return False
        if frame < self.sink:
            return True
        return frame >= self.origin and frame >= self.end - self.window

    def _slot(self, frame: int) -> int:
        return frame if frame < self.sink else self.sink + (frame - self.origin) % self.window

    def begin(self, start_frame: int, num_frames: int) -> None:
        """Prepare a forward that writes frames [start_frame, start_frame + num_frames) into every layer.

        Frames already written may be rewritten (a denoising step re-running its chunk) while still resident;
        new frames must follow on without a gap.
        """
        self._runs = self._plan(start_frame, num_frames)
        self.end = max(self.end, start_frame + num_frames)

    def _plan(self, start_frame: int, num_frames: int) -> list[tuple[int, int, int]]:
        """Check that frames [start_frame, start_frame + num_frames) can be written; return their slot runs."""
        if num_frames > self.window:
            raise ValueError(f"a chunk of {num_frames} frames does not fit a window of {self.window} frames")
        if start_frame > self.end:
            raise ValueError(f"cannot write frame {start_frame}: frames {self.end}..{start_frame - 1} were never written")
        for f in range(start_frame, min(self.end, start_frame + num_frames)):
            if not self.is_resident(f):
                raise ValueError(f"cannot rewrite frame {f}: it has left the cache (window {self.window}, "
                                 f"sink {self.sink}, frames written {self.end})")
        runs: list[tuple[int, int, int]] = []
        for i in range(num_frames):
            slot = self._slot(start_frame + i)
            if runs and runs[-1][1] + runs[-1][2] == slot:
                runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
            else:
                runs.append((i, slot, 1))
        return runs

    def write_read(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this layer's new k, v [B, n*T, H, D] in the slots chosen by ``begin``; return resident k, v."""
        t = self.tokens_per_frame
        for offset, slot, length in self._runs:
            self.k[layer, :, slot * t:(slot + length) * t] = k[:, offset * t:(offset + length) * t]
            self.v[layer, :, slot * t:(slot + length) * t] = v[:, offset * t:(offset + length) * t]
        n = self.valid_tokens
        return self.k[layer, :, :n], self.v[layer, :, :n]

    def begin_with_next(self, start_frame: int, written: int, ahead: int):
        """Prepare a forward over a finished chunk (``written`` frames at ``start_frame``, stored like ``begin``)
        followed by the next chunk's first denoising step (``ahead`` frames, attended to but not stored: its later
        steps write them). Returns ``read(layer, k, v)`` (resident keys, then the next chunk's own) and the
        :class:`FrameMask` that makes each part see exactly what it would see in a forward of its own: the finished
        chunk does not see the next one, and the next one does not see the frames its write will evict."""
        self.begin(start_frame, written)
        resident = self.resident_frames
        allowed = torch.ones(written + ahead, resident + ahead, dtype=torch.bool, device=self.k.device)
        allowed[:written, resident:] = False
        for _, slot, length in self._plan(start_frame + written, ahead):
            allowed[written:, slot:min(slot + length, resident)] = False
        t = written * self.tokens_per_frame

        def read(layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            ks, vs = self.write_read(layer, k, v)  # stores the first ``written`` frames
            return torch.cat([ks, k[:, t:]], dim=1), torch.cat([vs, v[:, t:]], dim=1)

        return read, FrameMask(allowed, self.tokens_per_frame)

    def overlay(self, start_frame: int, num_frames: int):
        """A reader for a forward that must not write (Self Forcing's grad-carrying exit step): returns
        ``read(layer, k, v)`` -> the k, v that ``write_read`` would return, built out of place, with the cache left
        untouched. Grad-carrying keys never enter the shared buffers, so later in-place writes cannot break
        autograd or leak gradient into other frames. The slot plan is fixed now, so a gradient-checkpointing
        recompute attends to the same frames (as long as the cache has not rolled over them before backward).
        """
        runs = self._plan(start_frame, num_frames)
        t = self.tokens_per_frame
        n = self._resident_frames(max(self.end, start_frame + num_frames)) * t

        def read(layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            ks, vs = self.k[layer, :, :n], self.v[layer, :, :n]
            for offset, slot, length in runs:
                new = slice(offset * t, (offset + length) * t)
                ks = ks.slice_scatter(k[:, new].to(ks.dtype), dim=1, start=slot * t, end=(slot + length) * t)
                vs = vs.slice_scatter(v[:, new].to(vs.dtype), dim=1, start=slot * t, end=(slot + length) * t)
            return ks, vs

        return read

    # ---- history edits (prompt switches) ------------------------------------------------------------------
    def restart_window(self, from_frame: int) -> None:
        """Forget the ring and resume writing at ``from_frame`` (back to rewrite frames, or forward to cut).

        The sink is kept unless ``from_frame`` lies inside it, in which case it refills from there. With
        ``from_frame == end`` this is a cut: the next chunk sees only the sink.
        """
        if from_frame < 0:
            raise ValueError(f"cannot restart at negative frame {from_frame}")
        self.end = from_frame
        self.origin = max(from_frame, self.sink)

    def invalidate_text(self) -> None:
        self.cross_valid = False

    def set_text(self, per_layer: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Store the text cross-attention K/V of every layer (each [B, L_text, H, D]) for the following chunks."""
        k0 = per_layer[0][0]
        shape = (len(per_layer),) + tuple(k0.shape)
        if self.cross_k is None or self.cross_k.shape != shape:
            self.cross_k = torch.empty(shape, device=k0.device, dtype=k0.dtype)
            self.cross_v = torch.empty(shape, device=k0.device, dtype=k0.dtype)
        for layer, (k, v) in enumerate(per_layer):
            self.cross_k[layer].copy_(k)
            self.cross_v[layer].copy_(v)
        self.cross_valid = True

    def text_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(zip(self.cross_k, self.cross_v))

    def branch_text_kv(self, context: torch.Tensor, compute) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The per-layer text K/V of a guidance branch's context [B, L, text_dim], ``compute(context)`` on a miss.
        The two contexts last used are kept and matched by value: a branch's prompt (the empty one) rarely
        changes, so its K/V are computed once per session instead of in every guided forward."""
        for ctx, kv in self._branch_texts:
            if ctx.shape == context.shape and torch.equal(ctx, context):
                return kv
        kv = compute(context)
        self._branch_texts = [(context.clone(), kv)] + self._branch_texts[:1]
        return kv
