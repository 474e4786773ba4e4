"""The daemon's socket loop: a ZeroMQ ROUTER that speaks protocol v1 and feeds the engine thread.

It owns the client table and every session's lifecycle (id, owner, epoch, pause, close), and one bounded frame
queue per session; the :class:`~worldsim.serve.engine.Engine` thread only generates, told by commands. Replies
and notices go before frames (a per-client reply queue sent first; frames wait while a client's pipe is full), so
control messages are never lost behind frames. Every inbound message is size-limited (ZMQ ``MAXMSGSIZE`` and
msgpack limits), rate-limited per peer (also before ``hello``) and schema-checked; anything wrong gets an ``error``
reply and the loop goes on. A client whose replies pile up past ``max_pending_replies`` (it stopped reading) or
that is silent for ``idle_timeout_s`` is dropped and its sessions freed. The loop never runs the model.

    daemon = Daemon(build_runtime(RuntimeOptions()), DaemonConfig(bind="tcp://127.0.0.1:5555"))
    daemon.serve_forever()   # or daemon.start() ... daemon.stop() for a background thread
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import queue
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

import zmq

from . import messages
from ..runtime import Runtime, describe
from .engine import DropCmd, Engine, Event, Failed, Frames, InputCmd, OpenCmd, Opened, OpenFailed, PauseCmd, ResetCmd
from .logs import LOGGER, event
from .protocol import (Bye, Hello, Input, Limits, Open, Ping, ProtocolError, SessionOp, Stats, check_compatible, decode,
                       decode_limits, fit_message_limit, pack, parse, peek_seq)
from .security import check_bind, start_server_curve
from .sessions import FrameOut
from .stats import DeliveryStats, GenerationStats, session_report

HOUSEKEEPING_S = 0.25
RECV_BATCH = 256  # inbound messages handled per loop turn before frames are sent again (replies go out at once)
SHUTDOWN_NOTICE_S = 2.0  # how long a stopping daemon keeps trying to deliver the shutdown notice


@dataclass
class DaemonConfig:
    bind: str = "tcp://127.0.0.1:5555"
    limits: Limits = field(default_factory=Limits)
    keys_dir: str | None = None  # CurveZMQ key directory (see worldsim.serve.security)
    insecure: bool = False  # allow a non-loopback bind without keys
    stats_interval_s: float = 30.0  # per-session stats in the log this often (0: never)
    send_hwm: int = 8  # ZMQ messages queued per client pipe before frames wait in the daemon's own queue
    max_batch: int | None = None  # sessions per batched forward at most (1: one at a time; None: 8 on CUDA, 1 on CPU)


def default_max_batch(backend: Runtime) -> int:
    """Batch sessions on a GPU, where one forward over 8 chunks costs little more than one; not on a CPU, where it
    costs as much as the separate forwards (benchmarks/daemon_throughput.py: +4% frames/s) and only delays the
    sessions that join."""
    return 8 if backend.device.type == "cuda" else 1


class TokenBucket:
    def __init__(self, rate: float, burst: int, now: float):
        self.rate, self.burst, self.tokens, self.t = rate, burst, float(burst), now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class ClientState:
    ident: bytes
    name: str
    last_seen: float
    bucket: TokenBucket
    sessions: set[int] = field(default_factory=set)
    replies: deque = field(default_factory=deque)  # packed control messages, sent before any frame

    @property
    def tag(self) -> str:
        return f"{self.name}#{self.ident.hex()}" if self.name else self.ident.hex()


@dataclass
class SessionSlot:
    """A session as the daemon owns it. ``generation`` is written by the engine (read here via its snapshot)."""

    sid: int
    client: bytes
    open_seq: int
    format: str
    lookahead: float
    frames: deque  # FrameOut, bounded: appending to a full queue drops the oldest
    generation: GenerationStats
    delivery: DeliveryStats = field(default_factory=DeliveryStats)
    opening: bool = True  # until the engine has made it
    epoch: int = 0
    paused: bool = False

    def report(self) -> dict:
        return session_report(self.generation, self.delivery)


class Daemon:
    def __init__(self, backend: Runtime, config: DaemonConfig | None = None, logger: logging.Logger = LOGGER):
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
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._in_transit: Counter[int] = Counter()  # frames emitted per session, not yet in its queue here
        self._transit_lock = threading.Lock()
        self.clients: dict[bytes, ClientState] = {}
        self.sessions: dict[int, SessionSlot] = {}
        self._handshakes: OrderedDict[bytes, TokenBucket] = OrderedDict()  # per-peer buckets before hello
        self._next_sid = 1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.stop_reason = "daemon stopping"
        self.started = time.monotonic()
        self._last_stats_log = self._last_housekeeping = self.started
        self.engine = Engine(backend, self.limits, emit=self._emit, backlog=self._backlog, logger=logger,
                             max_batch=self.config.max_batch or default_max_batch(backend))
        self.engine.start()
        event(self.log, "daemon_listening", endpoint=self.endpoint, curve=self.curve is not None,
              **describe(backend), video=backend.video_info())

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
    def _emit(self, events: list[Event]) -> None:
        frames = [ev for ev in events if isinstance(ev, Frames)]
        if frames:  # counted before they leave, so the engine never sees a queue emptier than it is
            with self._transit_lock:
                for ev in frames:
                    self._in_transit[ev.sid] += len(ev.frames)
        self._events.put(events)
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already

    def _backlog(self, sid: int) -> int:
        """Frames queued for a session, counting those emitted but not yet taken from the event queue (read on the
        engine thread: dict.get and len(deque) are atomic)."""
        slot = self.sessions.get(sid)
        with self._transit_lock:
            in_transit = self._in_transit[sid]
        return in_transit + (len(slot.frames) if slot is not None else 0)

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
            self._take_events()
            blocked = self._flush()
            self._housekeeping()

    def close(self) -> None:
        """Stop the engine, tell every client (``shutdown`` with :attr:`stop_reason`), release sockets. Idempotent."""
        if self._closed:
            return
        reason = self.stop_reason
        self._closed = True
        self._stop.set()
        self.engine.stop()
        self._tell_shutdown(reason)
        event(self.log, "daemon_stopped", reason=reason, clients=len(self.clients), sessions=len(self.sessions))
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
        notice = pack(messages.shutdown(reason))
        for slot in self.sessions.values():
            slot.frames.clear()
        for client in self.clients.values():
            client.replies.append(notice)
        deadline = time.monotonic() + SHUTDOWN_NOTICE_S
        pending = list(self.clients.values())
        while pending and time.monotonic() < deadline:
            pending = [c for c in pending if not self._send_or_gone(c)]
            if pending:
                time.sleep(0.005)
        if pending:
            event(self.log, "shutdown_notice_undelivered", logging.WARNING, clients=[c.tag for c in pending])
        self.sock.setsockopt(zmq.LINGER, 500)  # what is in the pipes still goes out

    def _send_or_gone(self, client: ClientState) -> bool:
        """True when the client's replies all went out, or it is gone (nothing left to try)."""
        try:
            return self._send_replies(client)
        except zmq.ZMQError:
            return True

    # ---- inbound ---------------------------------------------------------------------------------------------
    def _read_batch(self) -> None:
        for _ in range(RECV_BATCH):
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            ident = parts[0]
            self._on_message(ident, parts[1:])
            client = self.clients.get(ident)
            if client is not None and client.replies:
                try:
                    self._send_replies(client)  # a burst is answered as it is read, not after the whole batch
                except zmq.ZMQError as e:
                    self._send_failed(client, e)

    def _bucket(self, ident: bytes, now: float) -> TokenBucket:
        """The peer's rate bucket: its client's, or (before hello) its own among at most max_pending_handshakes."""
        client = self.clients.get(ident)
        if client is not None:
            client.last_seen = now
            return client.bucket
        bucket = self._handshakes.get(ident)
        if bucket is None:
            bucket = self._handshakes[ident] = TokenBucket(self.limits.rate_per_s, self.limits.rate_burst, now)
            while len(self._handshakes) > self.limits.max_pending_handshakes:
                self._handshakes.popitem(last=False)  # forget the oldest silent peer
        else:
            self._handshakes.move_to_end(ident)
        return bucket

    def _on_message(self, ident: bytes, body: list[bytes]) -> None:
        now = time.monotonic()
        seq, limited = None, not self._bucket(ident, now).take(now)
        try:
            if len(body) != 1:
                raise ProtocolError("bad_message", f"control messages are single-part msgpack maps, got {len(body)} "
                                                   "parts")
            raw = decode(body[0], self.limits, self.schema)
            seq = peek_seq(raw)
            if limited:
                raise ProtocolError("rate_limited", f"more than {self.limits.rate_burst} messages at once or "
                                                    f"{self.limits.rate_per_s:g}/s on average; this one was not "
                                                    "handled")
            self._dispatch(ident, parse(raw, self.schema, self.limits), now)
        except ProtocolError as e:
            self._reply(ident, messages.error(e.code, e.message, re=seq))
        except Exception as e:  # noqa: BLE001 - a daemon bug answers this message, never stops the loop
            self.log.exception("message_failed", extra={"fields": {"client": ident.hex()}})
            self._reply(ident, messages.error("internal", f"{type(e).__name__}: {e}"[:300], re=seq))

    def _dispatch(self, ident: bytes, msg, now: float) -> None:
        if isinstance(msg, Hello):
            self._hello(ident, msg, now)
            return
        client = self.clients.get(ident)
        if client is None:
            raise ProtocolError("hello_required", "send hello first (protocol handshake)")
        if isinstance(msg, Open):
            self._open(client, msg)
        elif isinstance(msg, Input):
            self._owned(client, msg.session)
            self.engine.submit(InputCmd(msg.session, msg, now))
        elif isinstance(msg, SessionOp):
            self._session_op(client, msg)
        elif isinstance(msg, Stats):
            self._stats(client, msg)
        elif isinstance(msg, Ping):
            self._reply(ident, messages.pong(msg.seq))
        elif isinstance(msg, Bye):
            self._drop_client(client, "bye")

    def _owned(self, client: ClientState, sid: int) -> SessionSlot:
        slot = self.sessions.get(sid)
        if slot is None or slot.client != client.ident:
            raise ProtocolError("unknown_session", f"session {sid} is not open on this connection")
        return slot

    def _hello(self, ident: bytes, msg: Hello, now: float) -> None:
        check_compatible(msg.protocol)
        if ident not in self.clients:
            if len(self.clients) >= self.limits.max_clients:
                raise ProtocolError("busy", f"the daemon serves its limit of {self.limits.max_clients} clients; "
                                            "try again later")
            bucket = self._handshakes.pop(ident, None) or TokenBucket(self.limits.rate_per_s, self.limits.rate_burst,
                                                                      now)
            client = self.clients[ident] = ClientState(ident, msg.client, now, bucket)
            event(self.log, "client_hello", client=client.tag, protocol=msg.protocol)
        self._reply(ident, messages.welcome(msg.seq, describe(self.backend), self.backend.video_info(), self.schema,
                                            self.limits, decode_limits(self.limits, self.schema)))

    def _open(self, client: ClientState, msg: Open) -> None:
        lim = self.limits
        if len(client.sessions) >= lim.max_sessions_per_client:
            raise ProtocolError("busy", f"this connection already has {len(client.sessions)} sessions open "
                                        f"(limit {lim.max_sessions_per_client}); close one first")
        if len(self.sessions) >= lim.max_sessions:
            raise ProtocolError("busy", f"the daemon is at capacity ({len(self.sessions)}/{lim.max_sessions} sessions);"
                                        " try again later")
        sid, self._next_sid = self._next_sid, self._next_sid + 1
        slot = SessionSlot(sid, client.ident, msg.seq, msg.format, msg.lookahead, deque(maxlen=lim.queue_frames),
                           GenerationStats())
        self.sessions[sid] = slot
        client.sessions.add(sid)
        self.engine.submit(OpenCmd(sid, msg, slot.generation))

    def _session_op(self, client: ClientState, msg: SessionOp) -> None:
        """Pause, resume, reset and close are the daemon's to decide: answered at once, the engine told after."""
        slot = self._owned(client, msg.session)
        sid = slot.sid
        if msg.type == "close":
            self._end_session(slot)
            self.engine.submit(DropCmd([sid]))
            self._reply(client.ident, messages.closed(sid, "client", slot.report(), re=msg.seq))
            event(self.log, "session_closed", session=sid, reason="client")
            return
        if msg.type == "reset":
            slot.epoch += 1
            slot.frames.clear()  # the old stream's frames are stale
            self.engine.submit(ResetCmd(sid, slot.epoch))
        else:
            slot.paused = msg.type == "pause"
            self.engine.submit(PauseCmd(sid, slot.paused))
        self._reply(client.ident, messages.ok(msg.seq, sid, msg.type, slot.epoch, slot.paused))

    def _stats(self, client: ClientState, msg: Stats) -> None:
        sids = [self._owned(client, msg.session).sid] if msg.session is not None else sorted(client.sessions)
        daemon = {"uptime_s": round(time.monotonic() - self.started, 3), "clients": len(self.clients),
                  "sessions": len(self.sessions), "max_sessions": self.limits.max_sessions}
        self._reply(client.ident, messages.stats(msg.seq, {s: self.sessions[s].report() for s in sids}, daemon))

    # ---- events from the engine ------------------------------------------------------------------------------
    def _take_events(self) -> None:
        while True:
            try:
                events = self._events.get_nowait()
            except queue.Empty:
                return
            for ev in events:
                self._on_event(ev)
                if isinstance(ev, Frames):  # now queued (or discarded): no longer in transit
                    with self._transit_lock:
                        self._in_transit[ev.sid] -= len(ev.frames)
                        if self._in_transit[ev.sid] <= 0:
                            del self._in_transit[ev.sid]

    def _on_event(self, ev: Event) -> None:
        slot = self.sessions.get(ev.sid)
        if slot is None:
            return  # closed meanwhile: whatever the engine made for it is discarded
        if isinstance(ev, Frames):
            if ev.epoch != slot.epoch:
                return  # made before a reset
            for out in ev.frames:
                if len(slot.frames) == slot.frames.maxlen:
                    slot.delivery.frames_dropped += 1
                slot.frames.append(out)
        elif isinstance(ev, Opened):
            slot.opening = False
            self._reply(slot.client, messages.opened(slot.open_seq, slot.sid, slot.epoch, ev.fps, slot.format,
                                                     slot.lookahead))
        elif isinstance(ev, OpenFailed):
            self._end_session(slot)
            self._reply(slot.client, messages.error(ev.code, ev.message, re=slot.open_seq))
        elif isinstance(ev, Failed):
            self._end_session(slot)
            self._reply(slot.client, messages.error("session_failed", ev.message, session=slot.sid, fatal=True))
            self._reply(slot.client, messages.closed(slot.sid, "failed", slot.report()))

    def _end_session(self, slot: SessionSlot) -> None:
        self.sessions.pop(slot.sid, None)
        client = self.clients.get(slot.client)
        if client is not None:
            client.sessions.discard(slot.sid)

    # ---- outbound --------------------------------------------------------------------------------------------
    def _reply(self, ident: bytes, msg: dict) -> None:
        client = self.clients.get(ident)
        if client is None:
            self._send_now(ident, msg)  # not a known client: best effort, nothing queued
        elif len(client.replies) >= self.limits.max_pending_replies:
            self._drop_client(client, "not reading replies")
        else:
            client.replies.append(pack(msg))

    def _send_now(self, ident: bytes, msg: dict) -> None:
        try:
            self.sock.send_multipart([ident, pack(msg)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # full or gone: an error for an unknown peer is not worth waiting for

    def _flush(self) -> bool:
        """Send what is queued without blocking; True if some client's pipe was full."""
        blocked = False
        for client in list(self.clients.values()):
            try:
                blocked |= not (self._send_replies(client) and self._send_frames(client))
            except zmq.ZMQError as e:  # EHOSTUNREACH: the peer's connection is gone
                self._send_failed(client, e)
        return blocked

    def _send_replies(self, client: ClientState) -> bool:
        """Send the client's queued replies; True when all went out. Raises ZMQError when the peer is gone."""
        while client.replies:
            try:
                self.sock.send_multipart([client.ident, client.replies[0]], zmq.NOBLOCK)
            except zmq.Again:
                return False
            client.replies.popleft()
        return True

    def _send_failed(self, client: ClientState, e: zmq.ZMQError) -> None:
        self._drop_client(client, "disconnected" if e.errno == errno.EHOSTUNREACH else f"send failed: {e}")

    def _send_frames(self, client: ClientState) -> bool:
        """Send queued frames, round robin over the client's sessions; True when all went out."""
        slots = [self.sessions[s] for s in client.sessions if s in self.sessions and self.sessions[s].frames]
        while slots:
            for slot in list(slots):
                out: FrameOut = slot.frames[0]
                header = pack(out.header | {"t_send": time.time()})
                try:
                    self.sock.send_multipart([client.ident, header, out.payload], zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    return False
                slot.frames.popleft()
                slot.delivery.frames_sent += 1
                slot.delivery.sent_rate.tick()
                if not slot.frames:
                    slots.remove(slot)
        return True

    # ---- housekeeping ----------------------------------------------------------------------------------------
    def _drop_client(self, client: ClientState, reason: str) -> None:
        self.clients.pop(client.ident, None)
        sids = sorted(client.sessions)
        for sid in sids:
            self.sessions.pop(sid, None)
        if sids:
            self.engine.submit(DropCmd(sids))
        event(self.log, "client_gone", client=client.tag, reason=reason, sessions=sids)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_housekeeping < HOUSEKEEPING_S:
            return
        self._last_housekeeping = now
        for client in list(self.clients.values()):
            if now - client.last_seen > self.limits.idle_timeout_s:
                self._drop_client(client, "idle_timeout")
        while self._handshakes and now - next(iter(self._handshakes.values())).t > self.limits.idle_timeout_s:
            self._handshakes.popitem(last=False)
        if not self.engine.alive and not self._stop.is_set():
            event(self.log, "engine_died", logging.ERROR)
            self.request_stop("internal error: the model loop stopped")
        interval = self.config.stats_interval_s
        if interval and now - self._last_stats_log >= interval:
            self._last_stats_log = now
            for sid, slot in self.sessions.items():
                event(self.log, "session_stats", session=sid, **slot.report())
