"""Blocking client for the worldsim daemon.

    from worldsim.client import Client

    with Client("tcp://127.0.0.1:5555", name="my-tool") as c:
        print(c.welcome.video, c.welcome.control)
        s = c.open("a misty forest", seed=1, format="jpeg")
        c.send(s, controls={"keys": [[1, 0, 0, 0, 0, 0]]})     # one video frame with W held
        frame = c.frame(timeout=5)                              # Frame: .image [H, W, 3] uint8, .header
        c.send(s, prompt="a desert at noon", mode="recache")
        c.close_session(s)

The endpoint is a ZeroMQ address (``tcp://``, ``ipc://``) or a WebSocket gateway's URL (``ws://``, ``wss://``,
e.g. ``ws://127.0.0.1:8765/``): the same protocol, the same API.

Calls send a ``ping`` when the connection has been quiet for the daemon's heartbeat interval, so a program that
keeps calling :meth:`Client.frame` (or anything else) stays connected. Errors the daemon sends about earlier
fire-and-forget inputs are raised (as :class:`ServerError`) by the next :meth:`Client.frame` call.
"""

from __future__ import annotations

import ssl as _ssl
import time
from collections import deque

from ..serve.protocol import Welcome
from ..serve.security import ClientCurve
from .core import DEFAULT_ENDPOINT, ClientCore, ConnectionLost, Frame, ServerError, start_frame_to_wire
from .transport import open_link


class Client:
    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, name: str = "python", curve: ClientCurve | None = None,
                 timeout: float = 30.0, max_frames: int = 64, ssl: _ssl.SSLContext | None = None):
        """Connect and handshake; raises ConnectionLost if no ``welcome`` comes within ``timeout`` seconds.
        ``curve``: CURVE keys for a ZeroMQ endpoint; ``ssl``: how to verify a ``wss://`` gateway."""
        self.endpoint, self.timeout = endpoint, timeout
        self.core = ClientCore(name)
        self.frames_dropped = 0  # frames this client dropped because the program read too slowly
        self._frames: deque[Frame] = deque(maxlen=max_frames)
        self._replies: dict[int, dict] = {}
        self._waiting: set[int] = set()
        self._errors: deque[ServerError] = deque()
        self._shutdown: str | None = None
        self._link = open_link(endpoint, curve, ssl, timeout)
        try:
            self.welcome = Welcome.from_wire(self._request(*self.core.hello(), timeout=timeout))
        except BaseException:
            self._link.close()
            raise
        self.core.welcome = self.welcome

    # ---- plumbing ----------------------------------------------------------------------------------------------
    def _send_raw(self, raw: bytes) -> None:
        self._link.send(raw)

    def _pump(self, timeout_s: float) -> None:
        """Receive everything available, waiting up to ``timeout_s`` for the first message."""
        try:
            parts = self._link.recv(timeout_s)
            while parts is not None:
                self._dispatch(self.core.parse(parts))
                parts = self._link.recv(0)
        except ConnectionLost:
            if self._shutdown is None:  # else the next call reports the daemon's reason
                raise

    def _dispatch(self, item) -> None:
        if isinstance(item, Frame):
            if self.core.stale(item):
                return
            if len(self._frames) == self._frames.maxlen:
                self.frames_dropped += 1
            self._frames.append(item)
            return
        kind, re = item.get("type"), item.get("re")
        if kind == "shutdown":
            self._shutdown = str(item.get("reason", "daemon stopped"))
        elif re in self._waiting:
            self._replies[re] = item
        elif kind == "error":
            self._errors.append(ServerError(item))

    def _service(self) -> None:
        if self._shutdown is not None:
            raise ConnectionLost(f"the daemon shut down: {self._shutdown}")
        self.core.check_alive()
        if self.core.heartbeat_due():
            self._send_raw(self.core.message("ping")[1])

    def _request(self, seq: int, raw: bytes, timeout: float | None = None) -> dict:
        timeout = self.timeout if timeout is None else timeout
        self._waiting.add(seq)
        try:
            self._send_raw(raw)
            deadline = time.monotonic() + timeout
            while seq not in self._replies:
                if self._shutdown is not None:
                    raise ConnectionLost(f"the daemon shut down: {self._shutdown}")
                if self.core.welcome is not None:  # a slow reply (an open waiting for UMT5) must not look idle
                    self._service()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ConnectionLost(f"no reply from the daemon at {self.endpoint} within {timeout:g} s (is "
                                         "`worldsim serve` running there? With CURVE keys: is this client's key "
                                         "authorised and the server key right?)")
                self._pump(min(left, 0.25))
        finally:
            self._waiting.discard(seq)
        reply = self._replies.pop(seq)
        if reply.get("type") == "error":
            raise ServerError(reply)
        return reply

    # ---- API ---------------------------------------------------------------------------------------------------
    def open(self, prompt: str = "", *, seed: int = 0, format: str = "rgb24", jpeg_quality: int = 85,
             fps: float | None = None, echo_controls: bool = False, start_frame=None,
             start_frame_format: str | None = None, package_start: bool = True) -> int:
        """Open a session; returns its id. fps: None = the daemon's rate, 0 = unpaced (as fast as possible).
        start_frame: an image [H, W, 3] uint8 (or JPEG/PNG bytes) the stream continues from; without one, a model
        package's start frame for the prompt (``welcome.model.starts``) unless ``package_start`` is False."""
        reply = self._request(*self.core.message(
            "open", prompt=prompt, seed=seed, format=format, jpeg_quality=jpeg_quality, fps=fps,
            echo_controls=echo_controls, start_frame=start_frame_to_wire(start_frame, start_frame_format),
            package_start=package_start))
        return reply["session"]

    def send(self, session: int, *, controls=None, hold=None, prompt: str | None = None, mode: str = "soft",
             sink: str = "keep") -> int:
        """Queue per-frame control rows, set held state and/or switch the prompt (at the next chunk).

        controls / hold: {"keys": rows, "axes": rows, "embedding": rows} (lists or numpy; hold: one row each).
        Returns the input's seq (frame headers name the newest input they were made with in ``input_seq``).
        """
        self._service()
        seq, raw = self.core.input(session, controls, hold, prompt, mode, sink)
        self._send_raw(raw)
        return seq

    def frame(self, timeout: float = 1.0) -> Frame | None:
        """The next frame (oldest buffered first), or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            self._service()
            if self._errors:
                raise self._errors.popleft()
            if self._frames:
                return self._frames.popleft()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._pump(min(left, 0.25))

    def frames_ready(self) -> list[Frame]:
        """Every frame received so far, without waiting."""
        self._service()
        self._pump(0)
        if self._errors:
            raise self._errors.popleft()
        out = list(self._frames)
        self._frames.clear()
        return out

    def pause(self, session: int) -> dict:
        return self._request(*self.core.message("pause", session=session))

    def resume(self, session: int) -> dict:
        return self._request(*self.core.message("resume", session=session))

    def reset(self, session: int) -> dict:
        """Restart the stream (new ``epoch``; frames of the old one are discarded)."""
        reply = self._request(*self.core.message("reset", session=session))
        self.core.restarted(session, reply["epoch"])
        self._frames = deque((f for f in self._frames if not self.core.stale(f)), maxlen=self._frames.maxlen)
        return reply

    def close_session(self, session: int) -> dict:
        """Close a session; returns its final stats."""
        reply = self._request(*self.core.message("close", session=session))
        self.core.closed(session)
        self._frames = deque((f for f in self._frames if not self.core.stale(f)), maxlen=self._frames.maxlen)
        return reply["stats"]

    def stats(self, session: int | None = None) -> dict:
        return self._request(*self.core.message("stats", session=session))

    def ping(self) -> float:
        """Round-trip time in seconds."""
        t0 = time.monotonic()
        self._request(*self.core.message("ping"))
        return time.monotonic() - t0

    def close(self) -> None:
        """Say bye (the daemon frees this client's sessions) and release the socket."""
        if not self._link.closed:
            self._link.close(last=self.core.message("bye")[1])

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
