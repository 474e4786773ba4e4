"""asyncio client for the worldsim daemon.

    from worldsim.client import AsyncClient

    async def main():
        async with await AsyncClient.connect("tcp://127.0.0.1:5555", name="bot") as c:
            s = await c.open("a misty forest", format="jpeg")
            await c.send(s, controls={"keys": [[1, 0, 0, 0, 0, 0]]})
            async for frame in c.frames():
                ...  # frame.image, frame.header

A reader task dispatches replies and buffers frames (bounded, oldest dropped); a heartbeat task pings while the
connection is quiet. Errors about fire-and-forget inputs are raised by the next :meth:`AsyncClient.frame`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import zmq
import zmq.asyncio

from ..serve.protocol import Welcome
from ..serve.security import ClientCurve
from .core import DEFAULT_ENDPOINT, ClientCore, ClientError, ConnectionLost, Frame, ServerError, start_frame_to_wire


class AsyncClient:
    def __init__(self, endpoint: str, name: str, curve: ClientCurve | None, timeout: float, max_frames: int):
        self.endpoint, self.timeout = endpoint, timeout
        self.core = ClientCore(name)
        self.frames_dropped = 0
        self._frames: deque[Frame] = deque(maxlen=max_frames)
        self._frame_ready = asyncio.Event()
        self._pending: dict[int, asyncio.Future] = {}
        self._errors: deque[ClientError] = deque()
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.apply(self._sock)
        self._sock.connect(endpoint)
        self._tasks: list[asyncio.Task] = []
        self.welcome: Welcome | None = None

    @classmethod
    async def connect(cls, endpoint: str = DEFAULT_ENDPOINT, *, name: str = "python-asyncio",
                      curve: ClientCurve | None = None, timeout: float = 30.0, max_frames: int = 64) -> "AsyncClient":
        """Connect and handshake; raises ConnectionLost if no ``welcome`` comes within ``timeout`` seconds."""
        self = cls(endpoint, name, curve, timeout, max_frames)
        self._tasks = [asyncio.create_task(self._reader()), asyncio.create_task(self._heartbeat())]
        try:
            self.welcome = Welcome.from_wire(await self._request(*self.core.hello()))
        except BaseException:
            await self._release()
            raise
        self.core.welcome = self.welcome
        return self

    # ---- background tasks --------------------------------------------------------------------------------------
    async def _reader(self) -> None:
        while True:
            parts = await self._sock.recv_multipart(copy=False)
            try:
                item = self.core.parse([p.buffer if i else p.bytes for i, p in enumerate(parts)])
            except Exception as e:  # noqa: BLE001 - a garbled message is reported, the reader goes on
                self._errors.append(ClientError(f"unreadable message from the daemon: {e}"))
                continue
            self._dispatch(item)

    def _dispatch(self, item) -> None:
        if isinstance(item, Frame):
            if self.core.stale(item):
                return
            if len(self._frames) == self._frames.maxlen:
                self.frames_dropped += 1
            self._frames.append(item)
            self._frame_ready.set()
            return
        kind, re = item.get("type"), item.get("re")
        if kind == "shutdown":
            lost = ConnectionLost(f"the daemon shut down: {item.get('reason', 'daemon stopped')}")
            self._errors.append(lost)
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(lost)
            self._frame_ready.set()
        elif re in self._pending and not self._pending[re].done():
            self._pending[re].set_result(item)
        elif kind == "error":
            self._errors.append(ServerError(item))
            self._frame_ready.set()

    async def _heartbeat(self) -> None:
        while True:
            hb = self.welcome.limits["heartbeat_s"] if self.welcome else 1.0
            await asyncio.sleep(hb / 2)
            if self.core.heartbeat_due():
                await self._sock.send(self.core.message("ping")[1])

    async def _request(self, seq: int, raw: bytes) -> dict:
        fut = asyncio.get_running_loop().create_future()
        self._pending[seq] = fut
        try:
            await self._sock.send(raw)
            reply = await asyncio.wait_for(fut, self.timeout)
        except asyncio.TimeoutError:
            raise ConnectionLost(f"no reply from the daemon at {self.endpoint} within {self.timeout:g} s") from None
        finally:
            self._pending.pop(seq, None)
        if reply.get("type") == "error":
            raise ServerError(reply)
        return reply

    # ---- API (same meaning as the sync Client) -------------------------------------------------------------------
    async def open(self, prompt: str = "", *, seed: int = 0, format: str = "rgb24", jpeg_quality: int = 85,
                   fps: float | None = None, echo_controls: bool = False, start_frame=None,
                   start_frame_format: str | None = None, package_start: bool = True) -> int:
        reply = await self._request(*self.core.message(
            "open", prompt=prompt, seed=seed, format=format, jpeg_quality=jpeg_quality, fps=fps,
            echo_controls=echo_controls, start_frame=start_frame_to_wire(start_frame, start_frame_format),
            package_start=package_start))
        return reply["session"]

    async def send(self, session: int, *, controls=None, hold=None, prompt: str | None = None, mode: str = "soft",
                   sink: str = "keep") -> int:
        seq, raw = self.core.input(session, controls, hold, prompt, mode, sink)
        await self._sock.send(raw)
        return seq

    async def frame(self, timeout: float = 1.0) -> Frame | None:
        deadline = time.monotonic() + timeout
        while True:
            if self._errors:
                raise self._errors.popleft()
            self.core.check_alive()
            if self._frames:
                return self._frames.popleft()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._frame_ready.clear()
            try:
                await asyncio.wait_for(self._frame_ready.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    async def frames(self):
        """Frames as they arrive, forever (until an error or the daemon shuts down)."""
        while True:
            f = await self.frame(timeout=3600)
            if f is not None:
                yield f

    async def pause(self, session: int) -> dict:
        return await self._request(*self.core.message("pause", session=session))

    async def resume(self, session: int) -> dict:
        return await self._request(*self.core.message("resume", session=session))

    async def reset(self, session: int) -> dict:
        reply = await self._request(*self.core.message("reset", session=session))
        self.core.restarted(session, reply["epoch"])
        self._frames = deque((f for f in self._frames if not self.core.stale(f)), maxlen=self._frames.maxlen)
        return reply

    async def close_session(self, session: int) -> dict:
        reply = await self._request(*self.core.message("close", session=session))
        self.core.closed(session)
        self._frames = deque((f for f in self._frames if not self.core.stale(f)), maxlen=self._frames.maxlen)
        return reply["stats"]

    async def stats(self, session: int | None = None) -> dict:
        return await self._request(*self.core.message("stats", session=session))

    async def ping(self) -> float:
        t0 = time.monotonic()
        await self._request(*self.core.message("ping"))
        return time.monotonic() - t0

    async def close(self) -> None:
        if self._sock.closed:
            return
        try:
            await asyncio.wait_for(self._sock.send(self.core.message("bye")[1]), 1.0)
        except (asyncio.TimeoutError, zmq.ZMQError):
            pass
        self._sock.setsockopt(zmq.LINGER, 200)
        await self._release()

    async def _release(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._sock.close()
        self._ctx.term()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
