"""The daemon's socket loop: a ZeroMQ ROUTER that speaks protocol v1 and feeds the engine thread.

It owns the client table, the session registry (ids, owners, limits) and one bounded frame queue per session:
when a client reads too slowly, the oldest queued frames are dropped (and counted), so a slow client gets the
newest frames and costs bounded memory. Every inbound message is size-limited (ZMQ ``MAXMSGSIZE`` and msgpack
limits), rate-limited per client and schema-checked; anything wrong gets an ``error`` reply and the loop goes on.
Clients that stop talking for ``idle_timeout_s`` are dropped and their sessions freed. The loop never runs the
model: generation happens on the :class:`~worldsim.serve.engine.Engine` thread.

    daemon = Daemon(build_backend(BackendOptions()), DaemonConfig(bind="tcp://127.0.0.1:5555"))
    daemon.serve_forever(stop_event)   # or daemon.start() ... daemon.stop() for a background thread
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import zmq

from .. import __version__
from .backend import Backend, describe
from .engine import DropCmd, Ended, Engine, InputCmd, OpCmd, OpenCmd, Output, Reply
from .logs import LOGGER, event
from .protocol import (FRAME_FORMATS, PROTOCOL_VERSION, SINK_POLICIES, SWITCH_MODES, Bye, Hello, Input, Limits, Open,
                       Ping, ProtocolError, SessionOp, Stats, check_compatible, decode, error, fit_message_limit, pack,
                       parse, peek_seq)
from .security import check_bind, start_server_curve
from .sessions import FrameOut
from .stats import SessionStats

HOUSEKEEPING_S = 0.25
MAX_PENDING_REPLIES = 256  # replies queued for a client that does not read; past this it is dropped
RECV_BATCH = 256  # inbound messages handled per loop turn before sending again
SHUTDOWN_NOTICE_S = 2.0  # how long a stopping daemon keeps trying to deliver the shutdown notice


@dataclass
class DaemonConfig:
    bind: str = "tcp://127.0.0.1:5555"
    limits: Limits = field(default_factory=Limits)
    keys_dir: str | None = None  # CurveZMQ key directory (see worldsim.serve.security)
    insecure: bool = False  # allow a non-loopback bind without keys
    stats_interval_s: float = 30.0  # per-session stats in the log this often (0: never)
    send_hwm: int = 8  # ZMQ messages queued per client pipe before frames wait in the daemon's own queue


class TokenBucket:
    def __init__(self, rate: float, burst: int):
        self.rate, self.burst, self.tokens, self.t = rate, burst, float(burst), time.monotonic()
        self.notified = 0.0

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def should_notify(self, now: float) -> bool:
        """At most one rate_limited error per second."""
        if now - self.notified < 1.0:
            return False
        self.notified = now
        return True


@dataclass
class ClientState:
    ident: bytes
    name: str
    last_seen: float
    bucket: TokenBucket
    sessions: set[int] = field(default_factory=set)
    replies: deque = field(default_factory=deque)

    @property
    def tag(self) -> str:
        return f"{self.name}#{self.ident.hex()}" if self.name else self.ident.hex()


@dataclass
class SessionEntry:
    client: bytes
    stats: SessionStats
    frames: deque  # FrameOut, bounded: appending to a full queue drops the oldest


class Daemon:
    def __init__(self, backend: Backend, config: DaemonConfig | None = None, logger: logging.Logger = LOGGER):
        self.backend, self.config, self.log = backend, config or DaemonConfig(), logger
        self.schema = backend.schema
        self.limits = self.config.limits
        if self.limits.max_message_bytes is None:
            fit = fit_message_limit(self.schema, backend.video_shape, self.limits.max_samples)
            self.limits = dataclasses.replace(self.limits, max_message_bytes=fit)
        warning = check_bind(self.config.bind, self.config.keys_dir, self.config.insecure)
        if warning:
            event(self.log, "insecure_bind", logging.WARNING, endpoint=self.config.bind, warning=warning)
        self.ctx = zmq.Context()
        self.curve = None
        try:
            self.curve = start_server_curve(self.ctx, self.config.keys_dir) if self.config.keys_dir else None
            self.sock = self._make_socket()
        except BaseException:  # missing keys, address in use: release what exists before reporting
            if self.curve is not None:
                self.curve.stop()
            self.ctx.term()
            raise
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._outputs: queue.SimpleQueue = queue.SimpleQueue()
        self.clients: dict[bytes, ClientState] = {}
        self.sessions: dict[int, SessionEntry] = {}
        self._next_sid = 1
        self._anon = TokenBucket(self.limits.rate_per_s, self.limits.rate_burst)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.stop_reason = "daemon stopping"
        self.started = time.monotonic()
        self._last_stats_log = self._last_housekeeping = self.started
        self.engine = Engine(backend, self.limits, emit=self._emit, backlog=self._backlog, logger=logger)
        self.engine.start()
        event(self.log, "daemon_listening", endpoint=self.endpoint, protocol=PROTOCOL_VERSION,
              curve=self.curve is not None, **describe(backend), video=backend.video_info())

    def _make_socket(self) -> zmq.Socket:
        s = self.ctx.socket(zmq.ROUTER)
        lim = self.limits
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full client pipe raises Again instead of dropping silently
        s.setsockopt(zmq.MAXMSGSIZE, lim.max_message_bytes)  # larger inbound messages drop the connection
        s.setsockopt(zmq.SNDHWM, self.config.send_hwm)
        s.setsockopt(zmq.RCVHWM, 64)
        s.setsockopt(zmq.HEARTBEAT_IVL, int(1000 * lim.heartbeat_s))
        s.setsockopt(zmq.HEARTBEAT_TIMEOUT, int(1000 * lim.idle_timeout_s))
        s.setsockopt(zmq.HEARTBEAT_TTL, int(1000 * lim.idle_timeout_s))
        s.setsockopt(zmq.LINGER, 0)
        if self.curve is not None:
            self.curve.apply(s)
        try:
            s.bind(self.config.bind)
        except zmq.ZMQError as e:
            s.close()
            raise OSError(f"cannot bind {self.config.bind}: {e}") from None
        return s

    # ---- engine side (called on the engine thread) -----------------------------------------------------------
    def _emit(self, outputs: list[Output]) -> None:
        self._outputs.put(outputs)
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def _backlog(self, sid: int) -> int:
        entry = self.sessions.get(sid)
        return len(entry.frames) if entry is not None else 0

    # ---- running ---------------------------------------------------------------------------------------------
    def start(self) -> "Daemon":
        """Run the socket loop on a background thread (tests, embedding); stop with :meth:`stop`."""
        self._thread = threading.Thread(target=self.serve_forever, name="worldsim-daemon", daemon=True)
        self._thread.start()
        return self

    def stop(self, reason: str = "daemon stopping") -> None:
        """Stop the background loop started by :meth:`start`, then :meth:`close`."""
        self.request_stop(reason)
        if self._thread is not None:
            self._thread.join(30)
        self.close()

    def request_stop(self, reason: str) -> None:
        """Thread-safe (e.g. from a signal handler): make serve_forever return."""
        self.stop_reason = reason
        self._stop.set()

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self.sock, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        blocked = False
        while not self._stop.is_set():
            events = dict(poller.poll(5 if blocked else 100))
            if self.sock in events:
                self._read_batch()
            if self._wake_r in events:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            self._take_outputs()
            blocked = self._flush()
            self._housekeeping()

    def close(self) -> None:
        """Tell clients (``shutdown`` with :attr:`stop_reason`), stop the engine, release sockets. Idempotent."""
        if self._closed:
            return
        reason = self.stop_reason
        self._closed = True
        self._stop.set()
        self.engine.stop()
        self._tell_shutdown(reason)
        event(self.log, "daemon_stopped", reason=reason, clients=len(self.clients), sessions=len(self.sessions))
        self.sock.setsockopt(zmq.LINGER, 500)  # let the shutdown notices out
        self.sock.close()
        if self.curve is not None:
            self.curve.stop()
        self.ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.clients.clear()
        self.sessions.clear()

    def _tell_shutdown(self, reason: str) -> None:
        """Queue ``shutdown`` behind each client's pending replies (queued frames give way), then keep sending until
        every client has it or :data:`SHUTDOWN_NOTICE_S` passed: a client that reads gets it after at most the
        ``send_hwm`` frames already in its pipe; one that does not read cannot stall the stop."""
        notice = pack({"type": "shutdown", "reason": reason})
        for client in self.clients.values():
            for sid in client.sessions:
                if sid in self.sessions:
                    self.sessions[sid].frames.clear()
            client.replies.append(notice)
        deadline = time.monotonic() + SHUTDOWN_NOTICE_S
        pending = list(self.clients.values())
        while pending and time.monotonic() < deadline:
            still = []
            for client in pending:
                try:
                    if self._flush_client(client):
                        still.append(client)
                except zmq.ZMQError:
                    pass  # the peer is gone
            pending = still
            if pending:
                time.sleep(0.005)
        if pending:
            event(self.log, "shutdown_notice_undelivered", logging.WARNING, clients=[c.tag for c in pending])

    # ---- inbound ---------------------------------------------------------------------------------------------
    def _read_batch(self) -> None:
        for _ in range(RECV_BATCH):
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_message(parts[0], parts[1:])

    def _on_message(self, ident: bytes, body: list[bytes]) -> None:
        now = time.monotonic()
        client = self.clients.get(ident)
        if client is not None:
            client.last_seen = now
        bucket = client.bucket if client is not None else self._anon
        if not bucket.take(now):
            if bucket.should_notify(now):
                self._reply(ident, error("rate_limited", f"more than {self.limits.rate_per_s:g} messages/s; "
                                                         "messages are being dropped"))
            return
        seq = None
        try:
            if len(body) != 1:
                raise ProtocolError("bad_message", f"control messages are single-part msgpack maps, got {len(body)} "
                                                   "parts")
            raw = decode(body[0], self.limits, self.schema)
            seq = peek_seq(raw)
            self._dispatch(ident, client, parse(raw, self.schema, self.limits), now)
        except ProtocolError as e:
            self._reply(ident, error(e.code, e.message, re=seq))
        except Exception as e:  # noqa: BLE001 - a daemon bug answers this message, never stops the loop
            self.log.exception("message_failed", extra={"fields": {"client": ident.hex()}})
            self._reply(ident, error("internal", f"{type(e).__name__}: {e}"[:300], re=seq))

    def _dispatch(self, ident: bytes, client: ClientState | None, msg, now: float) -> None:
        if isinstance(msg, Hello):
            self._hello(ident, client, msg, now)
            return
        if client is None:
            raise ProtocolError("hello_required", "send hello first (protocol handshake)")
        if isinstance(msg, Open):
            self._open(client, msg)
        elif isinstance(msg, Input):
            self._owned(client, msg.session)
            self.engine.submit(InputCmd(msg.session, msg, now))
        elif isinstance(msg, SessionOp):
            self._owned(client, msg.session)
            self.engine.submit(OpCmd(msg.session, msg))
        elif isinstance(msg, Stats):
            self._stats(client, msg)
        elif isinstance(msg, Ping):
            self._reply(ident, {"type": "pong", "re": msg.seq, "t": time.time()})
        elif isinstance(msg, Bye):
            self._drop_client(client, "bye")

    def _owned(self, client: ClientState, sid: int) -> None:
        if sid not in client.sessions:
            raise ProtocolError("unknown_session", f"session {sid} is not open on this connection")

    def _hello(self, ident: bytes, client: ClientState | None, msg: Hello, now: float) -> None:
        check_compatible(msg.protocol)
        if client is None:
            if len(self.clients) >= self.limits.max_clients:
                raise ProtocolError("busy", f"the daemon serves its limit of {self.limits.max_clients} clients; "
                                            "try again later")
            client = ClientState(ident, msg.client, now, TokenBucket(self.limits.rate_per_s, self.limits.rate_burst))
            self.clients[ident] = client
            event(self.log, "client_hello", client=client.tag, protocol=msg.protocol)
        self._reply(ident, self._welcome(msg.seq))

    def _welcome(self, seq: int) -> dict:
        return {"type": "welcome", "re": seq, "protocol": PROTOCOL_VERSION, "server": f"worldsim {__version__}",
                "model": describe(self.backend), "video": self.backend.video_info(), "formats": list(FRAME_FORMATS),
                "control": self.schema.to_wire(),
                "prompt": {"max_chars": self.limits.max_prompt_chars, "modes": list(SWITCH_MODES),
                           "sink_policies": list(SINK_POLICIES)},
                "limits": self.limits.to_wire()}

    def _open(self, client: ClientState, msg: Open) -> None:
        lim = self.limits
        if len(client.sessions) >= lim.max_sessions_per_client:
            raise ProtocolError("busy", f"this connection already has {len(client.sessions)} sessions open "
                                        f"(limit {lim.max_sessions_per_client}); close one first")
        if len(self.sessions) >= lim.max_sessions:
            raise ProtocolError("busy", f"the daemon is at capacity ({len(self.sessions)}/{lim.max_sessions} sessions);"
                                        " try again later")
        sid, self._next_sid = self._next_sid, self._next_sid + 1
        stats = SessionStats()
        self.sessions[sid] = SessionEntry(client.ident, stats, deque(maxlen=lim.queue_frames))
        client.sessions.add(sid)
        self.engine.submit(OpenCmd(sid, client.ident, msg, stats))

    def _stats(self, client: ClientState, msg: Stats) -> None:
        if msg.session is not None:
            self._owned(client, msg.session)
        sids = [msg.session] if msg.session is not None else sorted(client.sessions)
        self._reply(client.ident, {"type": "stats", "re": msg.seq,
                                   "sessions": {str(s): self.sessions[s].stats.report() for s in sids},
                                   "daemon": {"uptime_s": round(time.monotonic() - self.started, 3),
                                              "clients": len(self.clients), "sessions": len(self.sessions),
                                              "max_sessions": self.limits.max_sessions}})

    # ---- outbound --------------------------------------------------------------------------------------------
    def _reply(self, ident: bytes, msg: dict) -> None:
        client = self.clients.get(ident)
        if client is None:
            self._send_now(ident, msg)  # not a known client: best effort, nothing queued
        elif len(client.replies) >= MAX_PENDING_REPLIES:
            self._drop_client(client, "not reading replies")
        else:
            client.replies.append(pack(msg))

    def _send_now(self, ident: bytes, msg: dict) -> None:
        try:
            self.sock.send_multipart([ident, pack(msg)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # full or gone: an error for an unknown peer is not worth waiting for

    def _take_outputs(self) -> None:
        while True:
            try:
                outputs = self._outputs.get_nowait()
            except queue.Empty:
                return
            for out in outputs:
                self._route(out)

    def _route(self, out: Output) -> None:
        if isinstance(out, FrameOut):
            entry = self.sessions.get(out.session)
            if entry is not None and entry.client == out.client:
                if len(entry.frames) == entry.frames.maxlen:
                    entry.stats.frames_dropped += 1
                entry.frames.append(out)
        elif isinstance(out, Reply):
            if out.msg.get("op") == "reset" and out.msg.get("session") in self.sessions:
                frames = self.sessions[out.msg["session"]].frames
                stale = [f for f in frames if f.epoch < out.msg["epoch"]]
                for f in stale:
                    frames.remove(f)
            if out.client in self.clients:
                self._reply(out.client, out.msg)
        elif isinstance(out, Ended):
            self.sessions.pop(out.sid, None)
            client = self.clients.get(out.client)
            if client is not None:
                client.sessions.discard(out.sid)

    def _flush(self) -> bool:
        """Send what is queued without blocking; True if some client's pipe was full."""
        blocked = False
        for client in list(self.clients.values()):
            try:
                blocked |= self._flush_client(client)
            except zmq.ZMQError as e:  # EHOSTUNREACH: the peer's connection is gone
                self._drop_client(client, "disconnected" if e.errno == errno.EHOSTUNREACH else f"send failed: {e}")
        return blocked

    def _flush_client(self, client: ClientState) -> bool:
        while client.replies:
            try:
                self.sock.send_multipart([client.ident, client.replies[0]], zmq.NOBLOCK)
            except zmq.Again:
                return True
            client.replies.popleft()
        queues = [self.sessions[s] for s in client.sessions if s in self.sessions and self.sessions[s].frames]
        while queues:  # round robin over the client's sessions
            for entry in list(queues):
                out = entry.frames[0]
                header = pack(out.header | {"t_send": time.time()})
                try:
                    self.sock.send_multipart([client.ident, header, out.payload], zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    return True
                entry.frames.popleft()
                entry.stats.frames_sent += 1
                entry.stats.sent_rate.tick()
                if not entry.frames:
                    queues.remove(entry)
        return False

    # ---- housekeeping ----------------------------------------------------------------------------------------
    def _drop_client(self, client: ClientState, reason: str) -> None:
        self.clients.pop(client.ident, None)
        sids = sorted(client.sessions)
        for sid in sids:
            self.sessions.pop(sid, None)
        if sids:
            self.engine.submit(DropCmd(sids, reason))
        event(self.log, "client_gone", client=client.tag, reason=reason, sessions=sids)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_housekeeping < HOUSEKEEPING_S:
            return
        self._last_housekeeping = now
        for client in list(self.clients.values()):
            if now - client.last_seen > self.limits.idle_timeout_s:
                self._drop_client(client, "idle_timeout")
        if not self.engine.alive and not self._stop.is_set():
            event(self.log, "engine_died", logging.ERROR)
            self.request_stop("internal error: the model loop stopped")
        interval = self.config.stats_interval_s
        if interval and now - self._last_stats_log >= interval:
            self._last_stats_log = now
            for sid, entry in self.sessions.items():
                event(self.log, "session_stats", session=sid, **entry.stats.report())
