"""The two ways a blocking client reaches the daemon: a ZeroMQ DEALER (``tcp://``, ``ipc://``) or a WebSocket to the
gateway (``ws://``, ``wss://``; bridge/PROTOCOL.md section 14). Both move the same msgpack messages; a received
message is ``[message]`` for control messages and ``[frame header, payload]`` for frames.
"""

from __future__ import annotations

import contextlib
import ssl as _ssl
import time

import zmq

from ..serve.security import ClientCurve
from .core import ConnectionLost


def is_websocket(endpoint: str) -> bool:
    return endpoint.startswith(("ws://", "wss://"))


class ZmqLink:
    def __init__(self, endpoint: str, curve: ClientCurve | None):
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.apply(self._sock)
        self._sock.connect(endpoint)

    @property
    def closed(self) -> bool:
        return self._sock.closed

    def send(self, raw: bytes) -> None:
        self._sock.send(raw)

    def recv(self, timeout_s: float) -> list | None:
        """One message, waiting up to ``timeout_s`` (0: only if one is there)."""
        if timeout_s > 0 and not self._sock.poll(int(timeout_s * 1000)):
            return None
        try:
            parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        return [p.buffer if i else p.bytes for i, p in enumerate(parts)]

    def close(self, last: bytes | None = None) -> None:
        """Send ``last`` (the bye) if the pipe takes it, then release the socket."""
        if last is not None:
            try:
                self._sock.send(last, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._sock.setsockopt(zmq.LINGER, 200)
        self._sock.close()
        self._ctx.term()


class WebSocketLink:
    """A WebSocket to the gateway. A token goes in the URL (``?token=...``); ``ssl`` verifies a ``wss://`` gateway's
    certificate (default: the system's CAs). ``max_queue`` messages are buffered before reading stops, which the
    gateway passes on to the daemon as back-pressure."""

    def __init__(self, url: str, ssl: _ssl.SSLContext | None = None, max_queue: int = 64, timeout: float = 30.0):
        from websockets.exceptions import InvalidHandshake, InvalidURI
        from websockets.sync.client import connect

        from ..serve.gateway import split_raw

        self._split = split_raw
        self._stack = contextlib.ExitStack()
        deadline = time.monotonic() + timeout
        while True:  # like a ZeroMQ connect, wait up to ``timeout`` for a gateway that is still starting
            try:
                self._ws = self._stack.enter_context(connect(
                    url, ssl=ssl if url.startswith("wss://") else None, max_size=None, compression=None,
                    max_queue=max_queue, open_timeout=max(0.1, deadline - time.monotonic())))
                break
            except ConnectionRefusedError as e:
                if time.monotonic() + 0.2 < deadline:
                    time.sleep(0.2)
                    continue
                raise ConnectionLost(f"nothing listens at {url} (is `worldsim serve --ws` or `worldsim gateway` "
                                     f"running there?): {e}") from e
            except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as e:
                raise ConnectionLost(f"could not open a WebSocket to {url}: {e} (off loopback: is the token "
                                     "right, and the certificate?)") from e
        self.closed = False

    def send(self, raw: bytes) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            self._ws.send(raw)
        except ConnectionClosed as e:
            raise ConnectionLost(f"the gateway closed the WebSocket: {e}") from e

    def recv(self, timeout_s: float) -> list | None:
        from websockets.exceptions import ConnectionClosed

        try:
            data = self._ws.recv(max(0.0, timeout_s))
        except TimeoutError:
            return None
        except ConnectionClosed as e:
            raise ConnectionLost(f"the gateway closed the WebSocket: {e}") from e
        header, payload = self._split(data)
        return [header, payload] if len(payload) else [header]

    def close(self, last: bytes | None = None) -> None:
        from websockets.exceptions import ConnectionClosed

        if last is not None:
            try:
                self._ws.send(last)
            except ConnectionClosed:
                pass
        self._stack.close()
        self.closed = True


def open_link(endpoint: str, curve: ClientCurve | None, ssl: _ssl.SSLContext | None, timeout: float):
    if is_websocket(endpoint):
        if curve is not None:
            raise ValueError("CURVE keys are for ZeroMQ endpoints; a WebSocket gateway off loopback takes a token "
                             "(?token=...) and TLS (wss://)")
        return WebSocketLink(endpoint, ssl, timeout=timeout)
    return ZmqLink(endpoint, curve)
