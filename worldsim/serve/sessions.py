"""One served stream (generation side): a StreamingSession, its decoder, control buffer and playout clock.

Owned and driven by the engine thread only. ``step()`` generates one chunk and returns its frames ready for the
wire. The session's lifecycle (ids, owner, epoch, close) belongs to the daemon, which tells the engine.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch

from ..codecs.base import to_uint8
from ..sampling.session import step_sessions
from . import frame_format, messages
from ..runtime import Runtime
from .controls import ControlBuffer
from .pacing import Playout
from .prompts import PromptEncoder
from .protocol import Input, Limits, Open, PromptSwitch
from .stats import GenerationStats


@dataclass
class FrameOut:
    session: int
    epoch: int
    header: dict
    payload: object  # bytes or a buffer


class ServeSession:
    def __init__(self, sid: int, spec: Open, backend: Runtime, limits: Limits, stats: GenerationStats,
                 prompts: PromptEncoder, prompt_embed: torch.Tensor):
        """``prompt_embed``: the embedding of ``spec.prompt`` (ready: the engine opens a session only then)."""
        self.id, self.spec, self.backend, self.stats, self.prompts = sid, spec, backend, stats, prompts
        self.fps = backend.fps if spec.fps is None else spec.fps
        self.playout = Playout(self.fps, spec.lookahead, time.monotonic())
        self.controls = ControlBuffer(backend.schema, limits.max_queued_samples)
        self.prompt_text, self.prompt_seq, self.prompt_embed = spec.prompt, 0, prompt_embed
        self._switches: list[tuple[Future, PromptSwitch, int]] = []  # requested, embedding maybe not ready yet
        self.start_latents = self._start_latents(spec) if spec.start_frame is not None else \
            self._package_start(spec.prompt)
        self.paused = False
        self.last_input: tuple[int, float | None] | None = None  # (seq, client t) of the newest input
        self._pending_inputs: list[float] = []  # arrival times of inputs no chunk has used yet
        self.decoding = 0  # frames of chunks generated but not yet decoded (any epoch)
        self.reset(0)

    def _start_latents(self, spec: Open) -> torch.Tensor:
        """The latents of the client's own start frame."""
        sf = spec.start_frame
        if self.backend.encode_start is None:
            raise ValueError("this daemon's decoder has no encoder, so it cannot start from a frame")
        try:
            image = frame_format.decode(sf.data, sf.format, sf.shape)
        except Exception as e:  # noqa: BLE001 - Pillow raises many types for a corrupt image
            raise ValueError(f"start_frame is not a readable {sf.format} image: {e}") from None
        h, w = self.backend.video_shape
        return self.backend.encode_start(frame_format.fit(image, h, w))

    def _package_start(self, prompt: str) -> torch.Tensor | None:
        """The latents of the model package's start frame for ``prompt`` for a session without a start frame of its
        own: None when it opted out or the package has none."""
        return self.backend.start_latents(prompt) if self.spec.package_start else None

    # ---- lifecycle ------------------------------------------------------------------------------------------
    def reset(self, epoch: int) -> None:
        """Start the stream over as ``epoch`` with the current prompt, the same seed and start frame."""
        b = self.backend
        self.epoch = epoch
        self.stream = b.new_session(self.prompt_embed, seed=self.spec.seed)
        self.decoder = b.make_decoder()
        self.chunk = 0
        self.frames_out = 0
        self.controls.clear_queue()
        self.playout.restart(time.monotonic())
        self._context_frames = None
        if self.start_latents is not None:
            latents = self.start_latents.to(b.device, b.dtype)
            self.stream.push_context(latents)
            self._context_frames = to_uint8(self.decoder.decode(latents))[0].numpy()

    def apply_ready_switches(self) -> None:
        """Switch to each requested prompt whose embedding is ready, in request order (a slow one holds back the
        ones after it); the switch takes effect from the next chunk. Raises if an encode failed."""
        while self._switches and self._switches[0][0].done():
            fut, switch, seq = self._switches.pop(0)
            self.prompt_embed = fut.result()
            start = None
            if self.spec.start_frame is None:  # the package's start follows the prompt: a later reset begins there,
                self.start_latents = self._package_start(switch.text)
                if switch.mode == "cut" and self.start_latents is not None:  # and a cut goes there now
                    start = self.start_latents.to(self.backend.device, self.backend.dtype)
            self.stream.set_prompt(self.prompt_embed, mode=switch.mode, sink=switch.sink, start=start)
            self.prompt_text, self.prompt_seq = switch.text, seq
            self.stats.prompt_switches += 1

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        if not paused:
            self.playout.restart(time.monotonic())

    def apply(self, msg: Input, arrival: float) -> None:
        if msg.prompt is not None:
            self._switches.append((self.prompts.request(msg.prompt.text), msg.prompt, msg.seq))
            self.apply_ready_switches()
        if msg.hold is not None:
            self.controls.hold(msg.hold)
        if msg.controls is not None:
            self.controls.push(msg.controls)
            self.stats.samples_dropped = self.controls.dropped
        self.last_input = (msg.seq, msg.t)
        self._pending_inputs.append(arrival)
        self.stats.inputs += 1
        self.stats.publish()

    def next_chunk_frames(self) -> int:
        """Video frames the next step will produce."""
        k, n = self.backend.schema.frames_per_latent, self.backend.chunk_latents
        frames = k * n - (k - 1 if self.stream.frame == 0 else 0)
        return frames + (0 if self._context_frames is None else len(self._context_frames))

    def batch_key(self) -> tuple:
        """Sessions with equal keys can be generated in one batched forward (:func:`step_served`)."""
        return self.stream.batch_key(None), tuple(sorted(self.controls.seen))

    # ---- generation ------------------------------------------------------------------------------------------
    def step(self) -> list[FrameOut]:
        """Generate, decode and account for the next chunk here (the engine decodes on its own thread instead)."""
        chunk = step_served([self])[0]
        frames = chunk.decode()
        self.account(chunk, len(frames), time.monotonic())
        return frames

    def _chunk_controls(self):
        b = self.backend
        starts_stream = self.stream.frame == 0
        return starts_stream, self.controls.for_chunk(b.chunk_latents, starts_stream, b.device, b.dtype)

    def _generated(self, latents: torch.Tensor, count: int, starts_stream: bool, rows, t0: float,
                   batch: int) -> "Chunk":
        """Hand a generated chunk (``count`` frames, counted before it was made) over for decoding; the session's
        frame counters move on now, so the next chunk can be generated while this one decodes."""
        per_frame = self._frame_controls(rows, self.backend.chunk_latents, starts_stream)
        lead, self._context_frames = self._context_frames, None  # the start frame itself opens the stream
        if lead is not None:
            per_frame = [None] * len(lead) + per_frame
        seq, t_client = self.last_input or (-1, None)
        chunk = Chunk(self.id, self.epoch, self.chunk, self.frames_out, count, latents, self.decoder, lead, per_frame,
                      self.spec, seq, t_client, self.prompt_seq, t0, batch, self._pending_inputs)
        self._pending_inputs = []
        self.chunk += 1
        self.frames_out += count
        self.stats.chunks += 1
        self.stats.frames_generated += count  # counted before any of them can be sent
        self.stats.publish()
        return chunk

    def account(self, chunk: "Chunk", frames: int, finished: float) -> None:
        """A chunk's frames reached the socket loop at ``finished``: pacing and stats (not for an older epoch)."""
        if chunk.epoch != self.epoch:
            return
        self.playout.finished(frames, finished - chunk.t0, finished)
        st = self.stats
        st.chunk_s.add(finished - chunk.t0)
        for arrival in chunk.inputs:
            st.input_to_frame_s.add(finished - arrival)
        st.publish()

    def _frame_controls(self, rows, latents: int, starts_stream: bool) -> list[dict | None]:
        """The control row that led into each generated frame (none for frame 0 of a stream)."""
        k = self.backend.schema.frames_per_latent
        count = k * latents - (k - 1 if starts_stream else 0)
        if not self.spec.echo_controls or not len(rows):
            return [None] * count
        echo = [{s: a[i].tolist() if s != "embedding" else a[i].astype("<f4").tobytes()
                 for s, a in rows.sources().items()} for i in range(len(rows))]
        return [None] * (count - len(echo)) + echo


@dataclass
class Chunk:
    """A generated chunk on its way to the wire: made on the engine thread, decoded by :meth:`decode` on any
    thread (one at a time per session, in order: a streaming decoder carries state), then accounted for by
    :meth:`ServeSession.account` on the engine thread."""

    session: int
    epoch: int
    index: int  # chunk number within the epoch
    first_frame: int  # frame number of its first frame within the epoch
    count: int  # frames it decodes to (the start frame included)
    latents: torch.Tensor  # [1, C, n, h, w]
    decoder: object  # the session's StreamingDecoder when the chunk was made
    lead: np.ndarray | None  # decoded start frame(s) sent before the chunk's own frames
    controls: list[dict | None]  # the control row echoed with each frame
    spec: Open
    input_seq: int
    input_t: float | None
    prompt_seq: int
    t0: float  # when its generation started
    batch: int  # sessions in its forward
    inputs: list[float]  # arrival times of the inputs it is the first to use

    @torch.inference_mode()
    def decode(self) -> list[FrameOut]:
        frames = to_uint8(self.decoder.decode(self.latents))[0].numpy()  # [T, H, W, 3]
        if self.lead is not None:
            frames = np.concatenate([self.lead, frames])
        spec, gen_ms = self.spec, round(1e3 * (time.monotonic() - self.t0), 3)
        out = []
        for i, frame in enumerate(frames):
            header = messages.frame_header(self.session, self.epoch, self.index, self.first_frame + i, i, len(frames),
                                           spec.format, frame.shape, gen_ms, self.batch, self.input_seq,
                                           self.prompt_seq, self.input_t, self.controls[i])
            out.append(FrameOut(self.session, self.epoch, header, frame_format.encode(frame, spec.format,
                                                                                      spec.jpeg_quality)))
        return out


@torch.inference_mode()
def step_served(sessions: list[ServeSession]) -> list[Chunk]:
    """Generate the next chunk of each session (equal :meth:`ServeSession.batch_key`) in one batched model step;
    returns each session's chunk, still to be decoded. A chunk's time, for pacing and stats, runs from the shared
    start to the end of its own decode. Inference mode (not only no_grad): no version counters or autograd
    metadata per op, about 10% of a forward on a CPU where a streamed frame is mostly per-op overhead; its
    latents are only ever decoded (:meth:`Chunk.decode`, also in inference mode)."""
    t0 = time.monotonic()
    plans = [s._chunk_controls() for s in sessions]
    counts = [s.next_chunk_frames() for s in sessions]
    latents = step_sessions([s.stream for s in sessions], [cc.controls for _, cc in plans])
    return [s._generated(lat, n, starts, cc.rows, t0, len(sessions))
            for s, lat, n, (starts, cc) in zip(sessions, latents, counts, plans)]
