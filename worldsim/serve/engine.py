"""The model loop: one thread holds every session's generation state and runs chunks, off the socket loop.

The daemon owns each session's lifecycle (id, owner, epoch, pause, close) and tells the engine through commands
(:meth:`Engine.submit`, thread-safe). The engine answers with typed events through the ``emit`` callback (called
on the engine thread); it never ends a session on its own except by reporting :class:`Failed`.

What runs next is decided by :func:`~worldsim.serve.pacing.plan`: each paced session's chunk starts as late as its
client's playout allows (so the newest controls are in it), unpaced sessions use the slack, and a session whose
client has a full frame queue (``backlog``) is not run at all. Sessions that can share a forward (same geometry,
text length and control sources) are batched: each keeps its own KV cache, position, seed and controls, and the
layers run once over all of them (:func:`~worldsim.sampling.session.step_sessions`). One failing session is
reported and dropped; the others never notice.

On a CPU, chunks are decoded on a second thread (``worldsim-decode``, one chunk at a time, in order) while the
engine thread generates the next one: the codec's convolutions release the GIL and run on another core, so an
unpaced stream pays max(generate, decode) per chunk instead of the sum. The decode thread sends the frames and
reports back (:class:`Decoded`); pacing and stats are updated on the engine thread. A paced session waits for its
previous chunk's frames before it is planned again, so its schedule is never computed from a stale playout.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..runtime import Runtime
from .logs import LOGGER, event
from .pacing import Job, plan
from .prompts import PromptEncoder
from .protocol import Input, Limits, Open
from .sessions import Chunk, FrameOut, ServeSession, step_served
from .stats import GenerationStats, Recent

IDLE_WAIT_S = 0.5  # longest wait for a command when nothing is due


# ---- commands (daemon -> engine) ------------------------------------------------------------------------------

@dataclass
class OpenCmd:
    sid: int
    msg: Open
    stats: GenerationStats  # written by the engine from now on
    waited: bool = False  # submitted again by the prompt encoder once the prompt's embedding was ready


@dataclass
class InputCmd:
    sid: int
    msg: Input
    arrival: float


@dataclass
class PauseCmd:
    sid: int
    paused: bool


@dataclass
class ResetCmd:
    sid: int
    epoch: int


@dataclass
class DropCmd:
    sids: list[int]


@dataclass
class Decoded:
    """From the decode thread: a chunk's frames were handed to the daemon at ``finished`` (or decoding failed)."""

    sid: int
    chunk: Chunk
    frames: int
    finished: float
    error: str | None = None


Command = OpenCmd | InputCmd | PauseCmd | ResetCmd | DropCmd | Decoded


# ---- events (engine -> daemon) --------------------------------------------------------------------------------

@dataclass
class Opened:
    sid: int
    fps: float


@dataclass
class OpenFailed:
    sid: int
    code: str  # bad_field (the client's start frame) or internal
    message: str


@dataclass
class Frames:
    sid: int
    epoch: int
    frames: list[FrameOut]


@dataclass
class Failed:
    """Generation failed (or a command could not be applied): the engine has dropped the session."""

    sid: int
    message: str


Event = Opened | OpenFailed | Frames | Failed


class Engine:
    def __init__(self, backend: Runtime, limits: Limits, emit: Callable[[list[Event]], None],
                 backlog: Callable[[int], int], logger: logging.Logger = LOGGER, max_batch: int = 8,
                 decode_thread: bool | None = None):
        """``backlog(sid)``: frames the daemon still holds for that session (called on the engine thread).
        ``max_batch``: sessions generated together in one batched forward at most (1: one at a time).
        ``decode_thread``: decode on a thread of its own (default: on a CPU; a GPU's kernels share one stream, so
        there the engine thread decodes)."""
        self.backend, self.limits, self.emit, self.backlog, self.log = backend, limits, emit, backlog, logger
        self.max_batch = max(1, max_batch)
        if decode_thread is None:
            decode_thread = backend.device.type == "cpu"
        self._decoder = ThreadPoolExecutor(1, thread_name_prefix="worldsim-decode") if decode_thread else None
        self._undecodable: set[int] = set()  # sessions whose decode failed: their later chunks are not sent
        self.sessions: dict[int, ServeSession] = {}
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worldsim-engine", daemon=True)
        self._last_run: dict[int, float] = {}
        self._chunk_s = Recent(32)  # every session's chunk times: the estimate for a session with none yet
        self.prompts = PromptEncoder(backend.embed_prompt, background=backend.text_encoder_name != "hashing")
        self._opening: dict[int, list[Command]] = {}  # sessions waiting for their prompt, with their commands

    # ---- thread control (socket-loop side) ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, cmd: Command) -> None:
        self._commands.put(cmd)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._commands.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._decoder is not None:
            self._decoder.shutdown(wait=True, cancel_futures=True)
        self.prompts.close()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---- loop (engine thread) ----------------------------------------------------------------------------------
    def _run(self) -> None:
        wait = 0.0
        while not self._stop.is_set():
            try:
                self._drain(wait)
                if self._stop.is_set():
                    break
                batch, wait = self._next()
                if batch:
                    self._step(batch)
            except Exception:  # noqa: BLE001 - a scheduling bug is logged; the loop keeps serving
                self.log.exception("engine_error")
                wait = 0.01
        self.sessions.clear()

    def _has_room(self, s: ServeSession) -> bool:
        """The daemon's queue for this session can take the next chunk (else its client is not reading); frames
        still decoding count as queued."""
        n = s.next_chunk_frames()
        return self.backlog(s.id) + s.decoding + n <= max(self.limits.queue_frames, n)

    def _next(self) -> tuple[list[ServeSession], float]:
        """The sessions to run now (a batch, possibly empty), and how long to wait for commands if none."""
        fallback = self._chunk_s.quantile(0.5) or 0.0
        jobs, blocked = [], False
        for s in list(self.sessions.values()):
            try:
                s.apply_ready_switches()
            except Exception as e:  # noqa: BLE001 - the prompt could not be encoded: that session fails
                self._fail(s, f"prompt switch failed: {type(e).__name__}: {e}")
                continue
            if s.paused or (s.decoding and s.playout.fps > 0):  # paced: plan from its previous chunk's playout
                continue
            if not self._has_room(s):
                blocked = True
                continue
            jobs.append(Job(s.id, s.playout.estimate_s(fallback), s.playout.deadline(), self._last_run.get(s.id, 0.0)))
        now = time.monotonic()
        job, wait = plan(jobs, now)
        if job is not None:
            return self._batch_with(job, jobs, now), 0.0
        if blocked:  # re-check when the client may have read (the daemon does not wake the engine for that)
            wait = min(wait, 0.01)
        return [], min(wait, IDLE_WAIT_S)

    def _batch_with(self, job: Job, jobs: list[Job], now: float) -> list[ServeSession]:
        """The planned session plus up to ``max_batch - 1`` others that can share its forward: same batch key, and
        either unpaced or due to start before this batch would finish anyway (so none starts much earlier than its
        own schedule, which would bind its controls earlier)."""
        lead = self.sessions[job.key]
        batch, key = [lead], lead.batch_key()
        for j in sorted(jobs, key=lambda j: (j.deadline is None, j.deadline or 0.0, j.last_run)):
            if len(batch) >= self.max_batch:
                break
            s = self.sessions[j.key]
            if j.key == job.key or s.batch_key() != key:
                continue
            if j.deadline is None or j.deadline - j.duration_s <= now + job.duration_s:
                batch.append(s)
        return batch

    def _drain(self, wait_s: float) -> None:
        try:
            cmd = self._commands.get(timeout=wait_s) if wait_s > 0 else self._commands.get_nowait()
        except queue.Empty:
            return
        while cmd is not None:
            self._handle(cmd)
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return

    def _handle(self, cmd: Command) -> None:
        if isinstance(cmd, Decoded):
            self._decoded(cmd)
            return
        if isinstance(cmd, OpenCmd):
            self._open(cmd)
            return
        if isinstance(cmd, DropCmd):
            for sid in cmd.sids:
                self._forget(sid)
            return
        if cmd.sid in self._opening:  # applied once the session exists, in order
            self._opening[cmd.sid].append(cmd)
            return
        s = self.sessions.get(cmd.sid)
        if s is None:
            return  # dropped meanwhile; the daemon already knows
        try:
            if isinstance(cmd, InputCmd):
                s.apply(cmd.msg, cmd.arrival)
            elif isinstance(cmd, PauseCmd):
                s.set_paused(cmd.paused)
            elif isinstance(cmd, ResetCmd):
                s.reset(cmd.epoch)
        except Exception as e:  # noqa: BLE001 - the session cannot go on, the others can
            self._fail(s, f"{type(cmd).__name__} failed: {type(e).__name__}: {e}")

    def _open(self, cmd: OpenCmd) -> None:
        """Open once the prompt's embedding is ready: until then the session's commands wait in ``_opening``
        and the loop serves the others (the encoder's callback submits this command again)."""
        if cmd.waited and cmd.sid not in self._opening:
            return  # closed while its prompt was being encoded
        fut = self.prompts.request(cmd.msg.prompt)
        if not fut.done():
            self._opening.setdefault(cmd.sid, [])
            fut.add_done_callback(lambda _: self.submit(dataclasses.replace(cmd, waited=True)))
            return
        waiting = self._opening.pop(cmd.sid, [])
        try:
            s = ServeSession(cmd.sid, cmd.msg, self.backend, self.limits, cmd.stats, self.prompts, fut.result())
        except ValueError as e:  # the client's start frame
            self.emit([OpenFailed(cmd.sid, "bad_field", str(e)[:300])])
            return
        except Exception as e:  # noqa: BLE001 - making the session failed; the daemon keeps serving
            self.log.exception("session_open_failed", extra={"fields": {"session": cmd.sid}})
            self.emit([OpenFailed(cmd.sid, "internal", f"{type(e).__name__}: {e}"[:300])])
            return
        self.sessions[cmd.sid] = s
        event(self.log, "session_open", session=cmd.sid, seed=cmd.msg.seed, format=cmd.msg.format, fps=s.fps,
              lookahead=cmd.msg.lookahead, prompt=cmd.msg.prompt[:80], start_frame=cmd.msg.start_frame is not None,
              package_start=cmd.msg.start_frame is None and s.start_latents is not None)
        self.emit([Opened(cmd.sid, s.fps)])
        for waited in waiting:
            self._handle(waited)

    def _forget(self, sid: int) -> None:
        self.sessions.pop(sid, None)
        self._opening.pop(sid, None)
        self._last_run.pop(sid, None)

    def _fail(self, s: ServeSession, message: str) -> None:
        self.log.exception("session_failed", extra={"fields": {"session": s.id}})
        self._forget(s.id)
        self.emit([Failed(s.id, message[:300])])

    def _step(self, batch: list[ServeSession]) -> None:
        try:
            chunks = step_served(batch)
        except Exception as e:  # noqa: BLE001 - the session fails, the daemon keeps serving the others
            if len(batch) > 1:  # find the culprit: each alone (a chunk rewrites its own cache slots)
                self.log.warning("batch_failed", extra={"fields": {"sessions": [s.id for s in batch]}})
                for s in batch:
                    self._step([s])
                return
            self._fail(batch[0], f"generation failed: {type(e).__name__}: {e}")
            return
        now = time.monotonic()
        for s, chunk in zip(batch, chunks):
            self._last_run[s.id] = now
            s.decoding += chunk.count
            if self._decoder is None:
                self._decoded(self._decode(chunk))
            else:
                self._decoder.submit(lambda c=chunk: self.submit(self._decode(c)))

    def _decode(self, chunk: Chunk) -> Decoded:
        """Decode a chunk and hand its frames to the daemon (decode thread, or the engine thread on a GPU)."""
        if chunk.session in self._undecodable:  # generated before the failure was reported
            return Decoded(chunk.session, chunk, 0, time.monotonic(), "decoding failed earlier")
        try:
            frames = chunk.decode()
        except Exception as e:  # noqa: BLE001 - that session fails, the others go on
            self.log.exception("decode_failed", extra={"fields": {"session": chunk.session}})
            self._undecodable.add(chunk.session)
            return Decoded(chunk.session, chunk, 0, time.monotonic(), f"decoding failed: {type(e).__name__}: {e}")
        self.emit([Frames(chunk.session, chunk.epoch, frames)])
        return Decoded(chunk.session, chunk, len(frames), time.monotonic())

    def _decoded(self, done: Decoded) -> None:
        s = self.sessions.get(done.sid)
        if s is None:
            return  # dropped meanwhile
        s.decoding -= done.chunk.count
        if done.error is not None:  # logged by _decode
            self._forget(s.id)
            self.emit([Failed(s.id, done.error[:300])])
            return
        s.account(done.chunk, done.frames, done.finished)
        self._chunk_s.add(done.finished - done.chunk.t0)
