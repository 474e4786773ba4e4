"""The model loop: one thread owns every session and generates chunks, off the socket loop.

The socket loop hands it commands (:meth:`Engine.submit`, thread-safe) and receives its outputs — frames,
replies, session-ended notices — through the ``emit`` callback, called on the engine thread.

Scheduling is earliest-deadline-first over the sessions that are due: a paced session is due when its client is
about to run out of frames (about one chunk ahead of display), an unpaced one right after its last chunk, so
unpaced sessions take turns (round robin) and paced ones get their frame rate as long as the model keeps up.
An unpaced session whose client has a full frame queue waits, so a client that never reads costs nothing.
Sessions run one chunk at a time: each has its own KV cache and stream position, which the model's chunk
forward does not batch across. One failing session is closed with an error; the others never notice.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .backend import Backend
from .logs import LOGGER, event
from .protocol import Input, Limits, Open, SessionOp, error
from .sessions import FrameOut, ServeSession
from .stats import SessionStats


@dataclass
class OpenCmd:
    sid: int
    client: bytes
    msg: Open
    stats: SessionStats


@dataclass
class InputCmd:
    sid: int
    msg: Input
    arrival: float


@dataclass
class OpCmd:
    sid: int
    msg: SessionOp


@dataclass
class DropCmd:
    sids: list[int]
    reason: str


@dataclass
class Reply:
    client: bytes
    msg: dict


@dataclass
class Ended:
    client: bytes
    sid: int
    reason: str


Output = FrameOut | Reply | Ended


class Engine:
    def __init__(self, backend: Backend, limits: Limits, emit: Callable[[list[Output]], None],
                 backlog: Callable[[int], int], logger: logging.Logger = LOGGER):
        self.backend, self.limits, self.emit, self.backlog, self.log = backend, limits, emit, backlog, logger
        self.sessions: dict[int, ServeSession] = {}
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="worldsim-engine", daemon=True)
        self._last_run: dict[int, float] = {}

    # ---- thread control (socket-loop side) ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, cmd) -> None:
        self._commands.put(cmd)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._commands.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---- loop (engine thread) ----------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._drain(self._wait_s())
                if self._stop.is_set():
                    break
                session = self._next_due()
                if session is not None:
                    self._step(session)
            except Exception:  # noqa: BLE001 - a scheduling bug is logged; the loop keeps serving
                self.log.exception("engine_error")
                time.sleep(0.01)
        self.sessions.clear()

    def _runnable(self, s: ServeSession) -> bool:
        return not (s.fps <= 0 and self.backlog(s.id) >= self.limits.queue_frames)

    def _wait_s(self) -> float:
        """How long to wait for commands before the next session is due."""
        now = time.monotonic()
        waits = [s.due_at() - now if self._runnable(s) else 0.01 for s in self.sessions.values()]
        return max(0.0, min(waits, default=0.5))

    def _next_due(self) -> ServeSession | None:
        now = time.monotonic()
        due = [s for s in self.sessions.values() if s.due_at() <= now and self._runnable(s)]
        return min(due, key=lambda s: (s.due_at(), self._last_run.get(s.id, 0.0)), default=None)

    def _drain(self, wait_s: float) -> None:
        try:
            cmd = self._commands.get(timeout=min(wait_s, 0.5)) if wait_s > 0 else self._commands.get_nowait()
        except queue.Empty:
            return
        while cmd is not None:
            self._handle(cmd)
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return

    def _handle(self, cmd) -> None:
        try:
            if isinstance(cmd, OpenCmd):
                self._open(cmd)
            elif isinstance(cmd, InputCmd):
                if cmd.sid in self.sessions:
                    self.sessions[cmd.sid].apply(cmd.msg, cmd.arrival)
            elif isinstance(cmd, OpCmd):
                self._op(cmd)
            elif isinstance(cmd, DropCmd):
                for sid in cmd.sids:
                    if self.sessions.pop(sid, None) is not None:
                        self._last_run.pop(sid, None)
                        event(self.log, "session_closed", session=sid, reason=cmd.reason)
        except Exception as e:  # noqa: BLE001 - one bad command must not stop the loop
            sid = getattr(cmd, "sid", None)
            s = self.sessions.get(sid)
            seq = getattr(getattr(cmd, "msg", None), "seq", None)
            self.log.exception("command_failed", extra={"fields": {"session": sid}})
            if s is not None:
                self.emit([Reply(s.client, error("internal", f"{type(e).__name__}: {e}"[:300], re=seq, session=sid))])

    def _open(self, cmd: OpenCmd) -> None:
        try:
            s = ServeSession(cmd.sid, cmd.client, cmd.msg, self.backend, self.limits, cmd.stats)
        except Exception as e:  # noqa: BLE001 - a bad start frame (ValueError) or a failure making the session
            if not isinstance(e, ValueError):
                self.log.exception("session_open_failed", extra={"fields": {"session": cmd.sid}})
            bad = isinstance(e, ValueError)
            reply = error("bad_field" if bad else "internal", (str(e) if bad else f"{type(e).__name__}: {e}")[:300],
                          re=cmd.msg.seq)
            self.emit([Reply(cmd.client, reply), Ended(cmd.client, cmd.sid, "failed")])
            return
        self.sessions[cmd.sid] = s
        event(self.log, "session_open", session=cmd.sid, client=cmd.client.hex(), seed=cmd.msg.seed,
              format=cmd.msg.format, fps=s.fps, prompt=cmd.msg.prompt[:80], start_frame=cmd.msg.start_frame is not None)
        self.emit([Reply(cmd.client, {"type": "opened", "re": cmd.msg.seq, "session": cmd.sid, "epoch": s.epoch,
                                      "fps": s.fps, "format": cmd.msg.format})])

    def _op(self, cmd: OpCmd) -> None:
        s = self.sessions.get(cmd.sid)
        if s is None:
            return  # closed meanwhile (failure or client gone); the socket loop already answered
        kind, seq = cmd.msg.type, cmd.msg.seq
        if kind == "close":
            del self.sessions[cmd.sid]
            self._last_run.pop(cmd.sid, None)
            report = s.stats.report()
            event(self.log, "session_closed", session=cmd.sid, reason="client", **_brief(report))
            self.emit([Reply(s.client, {"type": "closed", "re": seq, "session": cmd.sid, "reason": "client",
                                        "stats": report}), Ended(s.client, cmd.sid, "client")])
            return
        if kind in ("pause", "resume"):
            s.set_paused(kind == "pause")
        elif kind == "reset":
            s.reset()
        self.emit([Reply(s.client, {"type": "ok", "re": seq, "session": cmd.sid, "op": kind, "epoch": s.epoch,
                                    "paused": s.paused})])

    def _step(self, s: ServeSession) -> None:
        try:
            frames = s.step()
        except Exception as e:  # noqa: BLE001 - the session fails, the daemon keeps serving the others
            del self.sessions[s.id]
            self.log.exception("session_failed", extra={"fields": {"session": s.id}})
            self.emit([Reply(s.client, error("session_failed", f"generation failed: {type(e).__name__}: {e}"[:300],
                                             session=s.id, fatal=True)), Ended(s.client, s.id, "failed")])
            return
        self._last_run[s.id] = time.monotonic()
        self.emit(frames)


def _brief(report: dict) -> dict:
    return {k: report[k] for k in ("chunks", "frames_sent", "frames_dropped", "fps")}
