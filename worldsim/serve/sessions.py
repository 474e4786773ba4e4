"""One served stream: a StreamingSession, its decoder, control buffer, pacing clock and frame headers.

Owned and driven by the engine thread only. ``step()`` generates one chunk and returns its frames as
``(header, payload)`` pairs ready for the wire.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from ..codecs.base import to_uint8
from ..sampling.session import StreamingSession
from . import frame_format
from .backend import Backend
from .controls import ControlBuffer
from .protocol import Input, Limits, Open
from .stats import SessionStats


@dataclass
class FrameOut:
    client: bytes
    session: int
    epoch: int
    header: dict
    payload: object  # bytes or a buffer


class ServeSession:
    def __init__(self, sid: int, client: bytes, spec: Open, backend: Backend, limits: Limits, stats: SessionStats):
        self.id, self.client, self.spec, self.backend, self.stats = sid, client, spec, backend, stats
        self.fps = backend.fps if spec.fps is None else spec.fps
        self.controls = ControlBuffer(backend.schema, limits.max_queued_samples)
        self.prompt_text, self.prompt_seq = spec.prompt, 0
        self.start_latents = self._start_latents(spec)
        self.epoch = -1
        self.paused = False
        self.last_input: tuple[int, float | None, float] | None = None  # (seq, client t, arrival) of the last input
        self._pending_inputs: list[float] = []  # arrival times of inputs no chunk has used yet
        self.reset()

    def _start_latents(self, spec: Open) -> torch.Tensor | None:
        sf = spec.start_frame
        if sf is None:
            return None
        if self.backend.encode_start is None:
            raise ValueError("this daemon's decoder has no encoder, so it cannot start from a frame")
        try:
            image = frame_format.decode(sf.data, sf.format, sf.shape)
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for a corrupt image
            raise ValueError(f"start_frame is not a readable {sf.format} image: {e}") from None
        h, w = self.backend.video_shape
        return self.backend.encode_start(frame_format.fit(image, h, w))

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Start the stream over (new epoch) with the current prompt, the same seed and start frame."""
        b = self.backend
        self.epoch += 1
        self.stream = StreamingSession(b.model, b.embed_prompt(self.prompt_text), latent_shape=b.latent_shape,
                                       seed=self.spec.seed, sink_frames=b.sink_frames, window_frames=b.window_frames)
        self.decoder = b.make_decoder()
        self.chunk = 0
        self.frames_out = 0
        self.controls.clear_queue()
        self.due = time.monotonic()
        self._gen_s = 0.0  # smoothed chunk time, for pacing
        self._context_frames = None
        if self.start_latents is not None:
            latents = self.start_latents.to(b.device, b.dtype)
            self.stream.push_context(latents)
            self._context_frames = to_uint8(self.decoder.decode(latents))[0].numpy()

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        if not paused:
            self.due = time.monotonic()

    def apply(self, msg: Input, arrival: float) -> None:
        if msg.prompt is not None:
            self.stream.set_prompt(self.backend.embed_prompt(msg.prompt.text), mode=msg.prompt.mode,
                                   sink=msg.prompt.sink)
            self.prompt_text, self.prompt_seq = msg.prompt.text, msg.seq
            self.stats.prompt_switches += 1
        if msg.hold is not None:
            self.controls.hold(msg.hold)
        if msg.controls is not None:
            self.controls.push(msg.controls)
            self.stats.samples_dropped = self.controls.dropped
        self.last_input = (msg.seq, msg.t, arrival)
        self._pending_inputs.append(arrival)
        self.stats.inputs += 1

    # ---- scheduling ------------------------------------------------------------------------------------------
    def due_at(self) -> float:
        return float("inf") if self.paused else self.due

    def _schedule_next(self, frames: int, finished: float) -> None:
        """Paced: the next chunk should arrive as the client finishes showing this one. Unpaced: at once."""
        if self.fps <= 0:
            self.due = finished
        else:
            self.due = finished + frames / self.fps - self._gen_s

    # ---- generation ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> list[FrameOut]:
        t0 = time.monotonic()
        b = self.backend
        n = b.model.cfg.chunk_frames
        starts_stream = self.stream.frame == 0
        cc = self.controls.for_chunk(n, starts_stream, b.device, b.dtype)
        latents = self.stream.step(controls=cc.controls)
        frames = to_uint8(self.decoder.decode(latents))[0].numpy()  # [T, H, W, 3]
        per_frame = self._frame_controls(cc.rows, n, starts_stream)
        if self._context_frames is not None:  # the start frame itself opens the stream
            frames = np.concatenate([self._context_frames, frames])
            per_frame = [None] * len(self._context_frames) + per_frame
            self._context_frames = None
        out = self._frames_out(frames, per_frame, t0)
        finished = time.monotonic()
        self._gen_s = (finished - t0) if not self._gen_s else 0.8 * self._gen_s + 0.2 * (finished - t0)
        self._schedule_next(len(frames), finished)
        self.stats.chunk_s.add(finished - t0)
        self.stats.chunks += 1
        self.stats.frames_generated += len(frames)
        for arrival in self._pending_inputs:
            self.stats.input_to_frame_s.add(finished - arrival)
        self._pending_inputs.clear()
        return out

    def _frame_controls(self, rows, latents: int, starts_stream: bool) -> list[dict | None]:
        """The control row that led into each generated frame (none for frame 0 of a stream)."""
        k = self.backend.schema.frames_per_latent
        count = k * latents - (k - 1 if starts_stream else 0)
        if not self.spec.echo_controls or not len(rows):
            return [None] * count
        echo = [{s: a[i].tolist() if s != "embedding" else a[i].astype("<f4").tobytes()
                 for s, a in rows.sources().items()} for i in range(len(rows))]
        return [None] * (count - len(echo)) + echo

    def _frames_out(self, frames: np.ndarray, per_frame: list[dict | None], t0: float) -> list[FrameOut]:
        spec, now = self.spec, time.time()
        seq, t_client, _ = self.last_input or (-1, None, 0.0)
        out = []
        for i, frame in enumerate(frames):
            header = {"type": "frame", "session": self.id, "epoch": self.epoch, "chunk": self.chunk,
                      "index": self.frames_out + i, "i": i, "n": len(frames), "format": spec.format,
                      "shape": list(frame.shape), "t_gen": now, "gen_ms": round(1e3 * (time.monotonic() - t0), 3),
                      "input_seq": seq, "prompt_seq": self.prompt_seq}
            if t_client is not None:
                header["input_t"] = t_client
            if per_frame[i] is not None:
                header["control"] = per_frame[i]
            payload = frame_format.encode(frame, spec.format, spec.jpeg_quality)
            out.append(FrameOut(self.client, self.id, self.epoch, header, payload))
        self.chunk += 1
        self.frames_out += len(frames)
        return out
