"""WebSocket gateway: protocol v1 for clients without ZeroMQ (browsers, Godot 4's WebSocketPeer, Unity's
ClientWebSocket), specified in ``bridge/PROTOCOL.md`` §14.

Every WebSocket connection gets its own DEALER to the daemon, so the daemon sees an ordinary client: its limits,
rate buckets, fair scheduling, errors and heartbeats apply unchanged and are not written twice. The gateway only
re-frames messages (WebSocket has no multi-part messages), makes JPEG the default frame format, sends control
messages (replies, errors, ``closed``, ``shutdown``) ahead of queued frames, and passes a slow WebSocket client's
back-pressure on to the daemon, which then treats it as any slow reader: that session's oldest frames are dropped
and it stops costing model time, while other sessions, over either transport, keep their rate.

Wire format on the WebSocket (all binary messages):
    client -> gateway   one msgpack map, exactly as over ZeroMQ
    gateway -> client   u32 little-endian header length | msgpack header | payload
                        (control messages: the message is the header and the payload is empty;
                         frames: the frame header and the frame bytes)

Imports no torch: ``worldsim gateway`` starts in well under a second.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import struct
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import msgpack
import zmq
import zmq.asyncio

from .logs import event
from .messages import error
from .protocol import pack
from .security import ClientCurve, is_local

log = logging.getLogger("worldsim.serve.gateway")

_LEN = struct.Struct("<I")
BYE = pack({"type": "bye", "seq": 0})
RCVHWM = 16  # messages ZeroMQ buffers from the daemon per connection: small, so a slow client's back-pressure shows
WEB_ROOT = Path(__file__).resolve().parent / "web"
WEB_FILES = {"index.html": "text/html; charset=utf-8", "msgpack.js": "text/javascript; charset=utf-8"}


def frame_message(header: bytes, payload: bytes | memoryview = b"") -> bytes:
    """One gateway -> client WebSocket message: u32 LE header length, the msgpack header, the payload."""
    return b"".join((_LEN.pack(len(header)), header, payload))


def split_raw(data: bytes | memoryview) -> tuple[bytes, memoryview]:
    """Inverse of :func:`frame_message`: (msgpack header bytes, payload). Raises ValueError on a bad length."""
    view = memoryview(data)
    if len(view) < _LEN.size:
        raise ValueError(f"a gateway message has at least {_LEN.size} bytes, got {len(view)}")
    (n,) = _LEN.unpack_from(view)
    if n > len(view) - _LEN.size:
        raise ValueError(f"header length {n} exceeds the message ({len(view)} bytes)")
    return bytes(view[_LEN.size:_LEN.size + n]), view[_LEN.size + n:]


def split_message(data: bytes | memoryview) -> tuple[dict, memoryview]:
    """(header dict, payload) of a gateway -> client message, for clients."""
    raw, payload = split_raw(data)
    header = msgpack.unpackb(raw, raw=False)
    if not isinstance(header, dict):
        raise ValueError("the header is not a msgpack map")
    return header, payload


def default_to_jpeg(raw: bytes) -> bytes:
    """An ``open`` without ``format`` gets ``"jpeg"`` (the WebSocket default); anything else passes unchanged,
    undecodable bytes included, so the daemon answers them exactly as it would over ZeroMQ."""
    try:
        msg = msgpack.unpackb(raw, raw=False)
    except Exception:  # noqa: BLE001 - the daemon reports it (bad_message)
        return raw
    if isinstance(msg, dict) and msg.get("type") == "open" and msg.get("format") is None:
        msg["format"] = "jpeg"
        return pack(msg)
    return raw


@dataclass
class GatewayConfig:
    daemon: str  # the daemon's ZeroMQ endpoint
    host: str = "127.0.0.1"
    port: int = 8765  # 0: a free port (see Gateway.port once started)
    token: str | None = None  # required from clients when set (``?token=`` or ``Authorization: Bearer``)
    cert: str | None = None  # TLS certificate chain (PEM); with ``key``, the gateway speaks wss://
    key: str | None = None
    insecure: bool = False  # allow a non-loopback host without TLS
    curve: ClientCurve | None = None  # the daemon's CurveZMQ keys, when it uses them
    max_message_bytes: int = 1 << 20  # inbound WebSocket message limit: larger ones close with 1009
    queue_frames: int = 8  # frames held per connection for a slow WebSocket client before reading from the daemon stops
    max_pending_replies: int = 4096  # control messages queued for a client that does not read; past it: closed

    def check(self) -> None:
        """Refuse an exposed gateway without a token, and without TLS unless ``insecure``, before binding."""
        if (self.cert is None) != (self.key is None):
            raise ValueError("--ws-cert and --ws-key go together (a PEM certificate chain and its private key)")
        if is_local(f"tcp://{self.host}:{self.port}"):
            return
        if not self.token:
            raise ValueError(f"the WebSocket gateway on {self.host} is reachable from other machines: give it a token "
                             "(--ws-token-file FILE; make one with `worldsim keys DIR`, which writes DIR/ws.token)")
        if self.cert is None and not self.insecure:
            raise ValueError(f"the WebSocket gateway on {self.host} would send the token and frames in clear text: "
                             "give --ws-cert/--ws-key for TLS, or --insecure to accept that")


class Relay:
    """One WebSocket client and its DEALER to the daemon.

    Back-pressure is passed on, not absorbed: while ``queue_frames`` frames wait for a slow WebSocket client the
    relay stops reading from the daemon, so the daemon sees a slow reader as it would over ZeroMQ (it drops that
    session's oldest frames, stops generating for it, and keeps every other session at full rate).
    """

    def __init__(self, ws, ctx: zmq.asyncio.Context, cfg: GatewayConfig):
        self.ws, self.cfg = ws, cfg
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, RCVHWM)
        if cfg.curve is not None:
            cfg.curve.apply(self.sock)
        self.sock.connect(cfg.daemon)
        self.control: deque[bytes] = deque()
        self.frames: deque[tuple[bytes, bytes]] = deque()  # (msgpack header, message)
        self.ready, self.room = asyncio.Event(), asyncio.Event()
        self.finished = False  # the daemon said shutdown: flush, then close the WebSocket
        self.frames_sent = 0

    async def run(self) -> str:
        """Relay until the client leaves, a side fails, or the daemon's ``shutdown`` has been sent; returns why."""
        reader = asyncio.create_task(self.from_daemon())
        tasks = [asyncio.create_task(self.from_client()), reader, asyncio.create_task(self.to_client())]
        try:
            from websockets.exceptions import ConnectionClosedOK

            pending, failure = set(tasks), None
            while failure is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                failure = next((e for t in done if (e := t.exception()) is not None
                                and not isinstance(e, ConnectionClosedOK)), None)
                if any(t is not reader for t in done):  # the client left, or the shutdown notice went out
                    break
            if failure is not None:
                return f"{type(failure).__name__}: {failure}"
            return "daemon shutdown" if self.finished else "client left"
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                await self.sock.send(BYE, zmq.NOBLOCK)  # frees this client's sessions at once
            except zmq.ZMQError:
                pass
            self.sock.close(linger=100)
            await self.ws.close()

    async def from_client(self) -> None:
        async for message in self.ws:
            if isinstance(message, str):
                self.push_control(pack(error("bad_message", "send protocol messages as binary msgpack, not text")))
                continue
            await self.sock.send(default_to_jpeg(message))

    async def from_daemon(self) -> None:
        while True:
            while len(self.frames) >= self.cfg.queue_frames:
                self.room.clear()
                await self.room.wait()
            parts = await self.sock.recv_multipart(copy=False)
            if len(parts) == 1:
                msg = msgpack.unpackb(parts[0].bytes, raw=False)
                self.push_control(parts[0].bytes)
                self.drop_stale(msg)
                if msg.get("type") == "shutdown":
                    self.finished = True
                    return
            elif len(parts) == 2:
                header = parts[0].bytes
                self.frames.append((header, frame_message(header, parts[1].buffer)))
                self.ready.set()

    def drop_stale(self, msg: dict) -> None:
        """Control messages overtake queued frames here, so keep §8's promise: no frame of an older epoch after a
        ``reset``'s ``ok``, none of a session after its ``closed``."""
        kind, sid = msg.get("type"), msg.get("session")
        if kind == "closed" or (kind == "ok" and msg.get("op") == "reset"):
            keep_from = msg.get("epoch", 0) if kind == "ok" else None

            def keep(header: bytes) -> bool:
                h = msgpack.unpackb(header, raw=False)
                return h.get("session") != sid or (keep_from is not None and h.get("epoch", 0) >= keep_from)

            self.frames = deque(f for f in self.frames if keep(f[0]))
            self.room.set()

    def push_control(self, message: bytes) -> None:
        if len(self.control) >= self.cfg.max_pending_replies:
            raise ConnectionAbortedError("the WebSocket client does not read its replies")
        self.control.append(frame_message(message))
        self.ready.set()

    async def to_client(self) -> None:
        """Control messages first, then frames in order."""
        while True:
            await self.ready.wait()
            self.ready.clear()
            while self.control or self.frames:
                if self.control:
                    await self.ws.send(self.control.popleft())
                else:
                    await self.ws.send(self.frames.popleft()[1])
                    self.frames_sent += 1
                    self.room.set()
            if self.finished:
                return


class Gateway:
    """The WebSocket server: one :class:`Relay` per connection; also serves the browser client at ``/``."""

    def __init__(self, cfg: GatewayConfig):
        cfg.check()
        self.cfg = cfg
        self.port: int | None = None
        self._ctx = zmq.asyncio.Context()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._relays: set[asyncio.Task] = set()
        self.started, self.stopped = threading.Event(), threading.Event()

    def _ssl(self) -> ssl.SSLContext | None:
        if self.cfg.cert is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cfg.cert, self.cfg.key)
        return ctx

    def _authorised(self, request) -> bool:
        if not self.cfg.token:
            return True
        given = parse_qs(urlsplit(request.path).query).get("token", [""])[0]
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = auth[len("Bearer "):]
        return hmac.compare_digest(given.encode(), self.cfg.token.encode())

    def _process_request(self, connection, request):
        """Check the token; let WebSocket upgrades through; answer plain GETs with the browser client's files."""
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        if not self._authorised(request):
            return connection.respond(401, "a token is required: connect to ws(s)://HOST:PORT/?token=TOKEN\n")
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        name = urlsplit(request.path).path.lstrip("/") or "index.html"
        if name not in WEB_FILES:
            return connection.respond(404, "not found; the WebSocket endpoint is / (binary msgpack, protocol v1)\n")
        body = (WEB_ROOT / name).read_bytes()
        return Response(200, "OK", Headers([("Content-Type", WEB_FILES[name]), ("Content-Length", str(len(body))),
                                            ("Cache-Control", "no-store")]), body)

    async def _handle(self, ws) -> None:
        relay = Relay(ws, self._ctx, self.cfg)
        event(log, "ws_connected", peer=ws.remote_address)
        task = asyncio.current_task()
        self._relays.add(task)
        try:
            reason = await relay.run()
        finally:
            self._relays.discard(task)
        event(log, "ws_closed", peer=ws.remote_address, reason=reason, frames_sent=relay.frames_sent)

    async def serve(self, drain_s: float = 2.0) -> None:
        """Serve until :meth:`stop`; then give open connections ``drain_s`` to pass on the daemon's ``shutdown``."""
        from websockets.asyncio.server import serve

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        try:
            async with serve(self._handle, self.cfg.host, self.cfg.port, process_request=self._process_request,
                             ssl=self._ssl(), compression=None, max_size=self.cfg.max_message_bytes,
                             close_timeout=drain_s) as server:
                self.port = server.sockets[0].getsockname()[1]
                self.started.set()
                await self._stop.wait()
                if self._relays:
                    await asyncio.wait(set(self._relays), timeout=drain_s)
        finally:
            self._ctx.destroy(linger=0)
            self.stopped.set()

    def stop(self) -> None:
        """Thread-safe and idempotent: stop accepting and close every connection."""
        if self._loop is None or self._stop is None or self.stopped.is_set():
            return
        try:
            self._loop.call_soon_threadsafe(self._stop.set)
        except RuntimeError:  # the loop ended meanwhile
            pass

    @property
    def url(self) -> str:
        scheme = "wss" if self.cfg.cert else "ws"
        host = f"[{self.cfg.host}]" if ":" in self.cfg.host else self.cfg.host
        return f"{scheme}://{host}:{self.port}/"

    @property
    def page_url(self) -> str:
        """Where a browser opens the client page (http, or https with TLS)."""
        return self.url.replace("ws", "http", 1)


def start_in_thread(cfg: GatewayConfig, timeout: float = 10.0) -> Gateway:
    """Run a gateway on its own event loop in a daemon thread (``worldsim serve --ws``); returns once it listens."""
    gw = Gateway(cfg)
    failure: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(gw.serve())
        except BaseException as e:  # noqa: BLE001 - reported to the starting thread
            failure.append(e)
            gw.started.set()

    thread = threading.Thread(target=main, name="ws-gateway", daemon=True)
    thread.start()
    if not gw.started.wait(timeout) or failure:
        raise OSError(f"the WebSocket gateway could not listen on {cfg.host}:{cfg.port}: "
                      f"{failure[0] if failure else 'timed out'}")
    return gw


def read_token(path: str | None) -> str | None:
    if path is None:
        return None
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"{path} is empty: put the gateway token on its first line")
    return token
