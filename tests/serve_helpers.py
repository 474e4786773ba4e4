"""Shared pieces of the daemon tests: a tiny backend, daemons on ephemeral endpoints, raw sockets, memory."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import queue
import subprocess
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from worldsim.runtime import RuntimeOptions, build_runtime
from worldsim.serve.daemon import Daemon, DaemonConfig
from worldsim.serve.protocol import PROTOCOL_VERSION, Limits

TEST_LIMITS = Limits(max_message_bytes=256 << 10, idle_timeout_s=10.0, heartbeat_s=1.0, rate_per_s=5000,
                     rate_burst=5000)


def frames_for(client, session: int, n: int, timeout: float = 30.0) -> list:
    """The session's next ``n`` frames (other sessions' are dropped); fails after ``timeout`` seconds."""
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        f = client.frame(timeout=1.0)
        if f is not None and f.session == session:
            out.append(f)
    assert len(out) == n, f"got {len(out)} of {n} frames in {timeout} s"
    return out


def tiny_backend(size: int = 32, embedding_dim: int = 5, **kw):
    """The tiny preset with a control schema (6 keys, 2 axes, an engine embedding) at ``size`` x ``size`` pixels."""
    return build_runtime(RuntimeOptions(preset="tiny", height=size, width=size, embedding_dim=embedding_dim,
                                        window_frames=6, sink_frames=0, **kw))


@pytest.fixture(scope="module")
def backend(one_torch_thread):
    return tiny_backend()


@pytest.fixture
def make_daemon(one_torch_thread):
    """make_daemon(backend, max_batch=None, **limit_overrides) -> a started Daemon on tcp://127.0.0.1:<free port>;
    stopped after."""
    started: list[Daemon] = []

    def make(backend, keys_dir: str | None = None, max_batch: int | None = None, **limits) -> Daemon:
        config = DaemonConfig(bind="tcp://127.0.0.1:*", limits=dataclasses.replace(TEST_LIMITS, **limits),
                              keys_dir=keys_dir, stats_interval_s=0, max_batch=max_batch)
        daemon = Daemon(backend, config).start()
        started.append(daemon)
        return daemon

    yield make
    for d in started:
        d.stop()


@pytest.fixture
def make_gateway():
    """make_gateway(daemon, **config) -> a started WebSocket gateway to ``daemon`` on a free loopback port."""
    from worldsim.serve.gateway import GatewayConfig, start_in_thread

    started = []

    def make(daemon: Daemon, **config):
        cfg = GatewayConfig(daemon=daemon.endpoint, port=0, max_message_bytes=daemon.limits.max_message_bytes,
                            **config)
        gw = start_in_thread(cfg)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()
        gw.stopped.wait(10)


class Peer:
    """A bare client for sending arbitrary messages and reading raw replies: control messages as ``[message]``,
    frames as ``[header, payload]``, over ZeroMQ (:class:`RawPeer`) or the WebSocket gateway (:class:`WsPeer`)."""

    seq = 0

    def send(self, msg: dict | bytes | list) -> int:
        raise NotImplementedError

    def recv(self, timeout: float = 10.0) -> list[bytes] | None:
        raise NotImplementedError

    def request(self, kind: str, **fields) -> int:
        self.seq += 1
        self.send({"type": kind, "seq": self.seq, **fields})
        return self.seq

    def hello(self) -> dict:
        seq = self.request("hello", protocol=PROTOCOL_VERSION, client="raw")
        return self.reply(seq)

    def reply(self, seq: int | None = None, timeout: float = 10.0) -> dict:
        """The next single-part message (answering ``seq`` if given), skipping frames."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            parts = self.recv(deadline - time.monotonic())
            if parts is None:
                break
            if len(parts) == 1:
                msg = msgpack.unpackb(parts[0], raw=False)
                if seq is None or msg.get("re") == seq:
                    return msg
        raise TimeoutError(f"no reply to seq {seq} within {timeout} s")


class RawPeer(Peer):
    """A bare DEALER."""

    def __init__(self, endpoint: str, rcvhwm: int = 1000):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.connect(endpoint)

    def send(self, msg: dict | bytes | list) -> int:
        if isinstance(msg, list):
            self.sock.send_multipart(msg)
        else:
            self.sock.send(msg if isinstance(msg, bytes) else msgpack.packb(msg, use_bin_type=True))
        return self.seq

    def recv(self, timeout: float = 10.0) -> list[bytes] | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return self.sock.recv_multipart()

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()


class WsPeer(Peer):
    """A bare WebSocket client of the gateway (``max_queue`` messages buffered before it stops reading the socket)."""

    def __init__(self, url: str, max_queue: int = 64):
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(url, max_size=None, compression=None, max_queue=max_queue,
                                                    open_timeout=10))

    def send(self, msg: dict | bytes | str) -> int:
        if isinstance(msg, list):
            raise TypeError("a WebSocket message has one part")
        self.ws.send(msg if isinstance(msg, (bytes, str)) else msgpack.packb(msg, use_bin_type=True))
        return self.seq

    def recv(self, timeout: float = 10.0) -> list[bytes] | None:
        from worldsim.serve.gateway import split_raw

        try:
            data = self.ws.recv(timeout)
        except TimeoutError:
            return None
        header, payload = split_raw(data)
        return [header, payload] if len(payload) else [header]

    def close(self) -> None:
        self._stack.close()


def peer_for(transport: str, daemon: Daemon, make_gateway=None) -> Peer:
    """A bare peer of ``daemon`` over "zmq", or over "ws" through a gateway made by ``make_gateway``."""
    return RawPeer(daemon.endpoint) if transport == "zmq" else WsPeer(make_gateway(daemon).url)


def rss_mb() -> float:
    """Resident memory of this process in MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def wait_for(predicate, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class JsonLines:
    """A program that reports on stdout in JSON lines (an engine client's test program), read on a thread as they
    arrive. ``until(name)`` returns the first line whose ``key`` is ``name`` that it has not returned before,
    waiting for it with a deadline; a line ``failed`` says is a failure, or the end of the output, fails the test
    with what was seen. ``proc.stdin`` is open for programs that wait for the test."""

    def __init__(self, cmd: list[str], *, key: str, failed, cwd=None):
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.key, self.failed = key, failed
        self.seen: list[dict] = []
        self._lines: queue.Queue = queue.Queue()
        self._returned: set[int] = set()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def named(self, name: str) -> list[dict]:
        return [m for m in self.seen if m[self.key] == name]

    def until(self, name: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for i, m in enumerate(self.seen):
                if m[self.key] == name and i not in self._returned:
                    self._returned.add(i)
                    return m
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {name!r} line within {timeout} s; got {[m[self.key] for m in self.seen]}") \
                    from None
            if line is None:
                raise AssertionError(f"the program ended before {name!r}: {self.seen}\n{self.proc.stderr.read()}")
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                raise AssertionError(f"the program printed a line that is not JSON: {line!r}") from None
            self.seen.append(msg)
            assert not self.failed(msg), msg

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()
