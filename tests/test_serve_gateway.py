"""The WebSocket gateway: protocol v1 over WebSocket, relayed unchanged to the daemon (bridge/PROTOCOL.md §14)."""

from __future__ import annotations

import io
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
from PIL import Image

from serve_helpers import WsPeer, tiny_backend, wait_for
from worldsim.client import Client, ConnectionLost
from worldsim.serve.gateway import GatewayConfig, default_to_jpeg, frame_message, split_message
from worldsim.serve.protocol import PROTOCOL_VERSION


def frames_from(peer: WsPeer, session: int, n: int, timeout: float = 60) -> list[tuple[dict, bytes]]:
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        parts = peer.recv(deadline - time.monotonic())
        if parts is not None and len(parts) == 2:
            header = msgpack.unpackb(parts[0], raw=False)
            if header["session"] == session:
                out.append((header, bytes(parts[1])))
    assert len(out) == n, f"{len(out)} of {n} frames"
    return out


def test_message_framing_round_trips():
    header = msgpack.packb({"type": "frame", "session": 3})
    data = frame_message(header, b"\x01\x02\x03")
    assert data[:4] == len(header).to_bytes(4, "little")
    assert split_message(data) == ({"type": "frame", "session": 3}, b"\x01\x02\x03")
    assert split_message(frame_message(msgpack.packb({"type": "pong", "re": 1})))[1] == b""
    for bad in (b"\x01\x00", (99).to_bytes(4, "little") + b"\x80", b"\x01\x00\x00\x00\x01"):
        with pytest.raises(ValueError):
            split_message(bad)


def test_open_defaults_to_jpeg_and_nothing_else_changes():
    opened = msgpack.unpackb(default_to_jpeg(msgpack.packb({"type": "open", "seq": 1, "format": None})))
    assert opened == {"type": "open", "seq": 1, "format": "jpeg"}
    for raw in (msgpack.packb({"type": "open", "seq": 1, "format": "rgb24"}), b"\xc1garbage",
                msgpack.packb({"type": "ping", "seq": 2}), msgpack.packb([1, 2])):
        assert default_to_jpeg(raw) == raw


def test_exposed_gateway_needs_a_token_and_tls():
    GatewayConfig(daemon="tcp://127.0.0.1:1").check()  # loopback: nothing needed
    with pytest.raises(ValueError, match="token"):
        GatewayConfig(daemon="tcp://127.0.0.1:1", host="0.0.0.0").check()
    with pytest.raises(ValueError, match="TLS"):
        GatewayConfig(daemon="tcp://127.0.0.1:1", host="0.0.0.0", token="t").check()
    GatewayConfig(daemon="tcp://127.0.0.1:1", host="0.0.0.0", token="t", insecure=True).check()
    with pytest.raises(ValueError, match="together"):
        GatewayConfig(daemon="tcp://127.0.0.1:1", cert="c.pem").check()


def test_session_over_websocket_matches_zeromq(backend, make_daemon, make_gateway):
    """Handshake, open (JPEG by default), controls, prompt switch, close; rgb24 frames are byte-identical to the
    same session over ZeroMQ (same seed and prompt)."""
    d = make_daemon(backend)
    peer = WsPeer(make_gateway(d).url)
    try:
        welcome = peer.hello()
        assert welcome["type"] == "welcome" and welcome["protocol"] == PROTOCOL_VERSION
        opened = peer.reply(peer.request("open", prompt="a harbour", seed=7, fps=0))
        assert opened["format"] == "jpeg"
        jpeg = opened["session"]
        peer.request("input", session=jpeg, controls={"keys": [[1, 0, 0, 0, 0, 0]] * 4, "axes": [[0.5, -0.5]] * 4,
                                                       "embedding": [[0.1] * 5] * 4})
        peer.request("input", session=jpeg, prompt={"text": "a desert", "mode": "recache"})
        frames = frames_from(peer, jpeg, 30)
        h, w = welcome["video"]["height"], welcome["video"]["width"]
        for header, payload in frames:
            assert header["format"] == "jpeg"
            assert np.asarray(Image.open(io.BytesIO(payload))).shape == (h, w, 3)
        assert peer.reply(peer.request("close", session=jpeg))["type"] == "closed"

        raw = peer.reply(peer.request("open", prompt="a harbour", seed=7, fps=0, format="rgb24"))["session"]
        over_ws = [p for _, p in frames_from(peer, raw, 12)]
        with Client(d.endpoint) as c:
            s = c.open("a harbour", seed=7, fps=0)
            over_zmq, deadline = [], time.monotonic() + 60
            while len(over_zmq) < 12 and time.monotonic() < deadline:
                f = c.frame(1)
                if f is not None and f.session == s:
                    over_zmq.append(bytes(f.payload))
        assert over_ws == over_zmq
        err = peer.reply(peer.request("close", session=999))
        assert err["type"] == "error" and err["code"] == "unknown_session"
    finally:
        peer.close()


def test_text_messages_and_oversized_messages(backend, make_daemon, make_gateway):
    d = make_daemon(backend)
    gw = make_gateway(d)
    with Client(d.endpoint, name="good") as good:
        s = good.open(fps=0)
        peer = WsPeer(gw.url)
        try:
            peer.hello()
            peer.send('{"type": "ping", "seq": 1}')
            err = peer.reply()
            assert err["code"] == "bad_message" and "binary" in err["message"]
            peer.send(b"\x00" * (d.limits.max_message_bytes + 1))
            from websockets.exceptions import ConnectionClosed

            with pytest.raises(ConnectionClosed) as closed:
                peer.reply(timeout=10)
            assert closed.value.rcvd.code == 1009  # message too big
        finally:
            peer.close()
        assert wait_for(lambda: len(d.clients) == 1, 5), "the gateway's connection was not freed"
        frame = good.frame(30)
        assert frame is not None and frame.session == s


def test_token_is_required_when_set(backend, make_daemon, make_gateway):
    from websockets.exceptions import InvalidStatus

    gw = make_gateway(make_daemon(backend), token="s3cret")
    with pytest.raises(InvalidStatus) as refused:
        WsPeer(gw.url)
    assert refused.value.response.status_code == 401
    with pytest.raises(InvalidStatus):
        WsPeer(gw.url + "?token=wrong")
    peer = WsPeer(gw.url + "?token=s3cret")
    try:
        assert peer.hello()["type"] == "welcome"
    finally:
        peer.close()
    with Client(gw.url + "?token=s3cret") as c:
        assert c.ping() > 0
    with pytest.raises(ConnectionLost, match="token"):
        Client(gw.url + "?token=wrong", timeout=5)


def test_tls(backend, make_daemon, make_gateway, tmp_path):
    if shutil.which("openssl") is None:
        if os.environ.get("CI"):
            pytest.fail("openssl is needed to make the TLS test's certificate (apt-get install openssl)")
        pytest.skip("openssl not installed (apt-get install openssl) to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    gw = make_gateway(make_daemon(backend), cert=str(cert), key=str(key))
    assert gw.url.startswith("wss://")
    from websockets.sync.client import connect

    ctx = ssl.create_default_context(cafile=str(cert))
    with connect(gw.url, ssl=ctx) as ws:
        ws.send(msgpack.packb({"type": "hello", "seq": 1, "protocol": PROTOCOL_VERSION, "client": "tls"}))
        assert split_message(ws.recv(10))[0]["type"] == "welcome"
    with Client(gw.url, ssl=ctx) as c:
        assert c.ping() > 0
    with pytest.raises(ConnectionLost, match="WebSocket"):
        Client(gw.url, timeout=5)  # the system's CAs do not know this certificate


def test_browser_page_is_served_at_root(backend, make_daemon, make_gateway):
    gw = make_gateway(make_daemon(backend))
    http = gw.url.replace("ws://", "http://")
    with urllib.request.urlopen(http, timeout=10) as page:
        assert page.headers["Content-Type"].startswith("text/html") and b"<canvas" in page.read()
    with urllib.request.urlopen(http + "msgpack.js", timeout=10) as script:
        assert b"function msgpackEncode" in script.read()
    for missing in ("nothing-here", "../gateway.py", "%2e%2e/gateway.py"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(http + missing, timeout=10)
        refused.value.close()
        assert refused.value.code == 404


def test_daemon_shutdown_reaches_websocket_clients(backend, make_gateway):
    from worldsim.serve.daemon import Daemon, DaemonConfig
    from serve_helpers import TEST_LIMITS

    d = Daemon(backend, DaemonConfig(bind="tcp://127.0.0.1:*", limits=TEST_LIMITS, stats_interval_s=0)).start()
    gw = make_gateway(d)
    peer = WsPeer(gw.url)
    try:
        with Client(gw.url) as c:
            c.open(fps=0)
            peer.hello()
            peer.reply(peer.request("open", fps=0))
            d.stop("maintenance")
            notice = peer.reply(timeout=10)
            assert notice["type"] == "shutdown" and notice["reason"] == "maintenance"
            with pytest.raises(ConnectionLost, match="maintenance"):  # the Python client over WebSocket too
                while c.frame(10) is not None:
                    pass
    finally:
        peer.close()


def settles(value, quiet_s: float, timeout: float) -> bool:
    """True once ``value()`` has not changed for ``quiet_s`` seconds (within ``timeout``)."""
    last, since, deadline = value(), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = value()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return True
    return False


def test_slow_websocket_client_does_not_slow_others(make_daemon, make_gateway):
    """A WebSocket client that never reads: its back-pressure reaches the daemon, which stops generating for it once
    the pipe and its queue are full, while a ZeroMQ client keeps streaming."""
    d = make_daemon(tiny_backend(size=128), queue_frames=24)
    sink = WsPeer(make_gateway(d).url, max_queue=1)
    try:
        sink.hello()
        stuck = sink.reply(sink.request("open", prompt="never read", fps=0, format="rgb24"))["session"]
        made = lambda: d.sessions[stuck].generation.published.get("frames_generated", 0)  # noqa: E731
        assert settles(made, quiet_s=2.0, timeout=60), "generation for the non-reader never stopped"
        stopped_at = made()
        with Client(d.endpoint, name="reader") as c:
            s = c.open("keeps up", fps=0)
            got, t0 = 0, time.monotonic()
            while time.monotonic() - t0 < 4:
                f = c.frame(0.2)
                got += f is not None and f.session == s
            assert got >= 24, f"the reading client got only {got} frames"
        # Bounded, not zero: a TCP receiver that never reads may still reopen its window a little much later
        # (the kernel compacts its queue), which lets one more chunk through; a non-reader that still cost model
        # time would have made over a hundred frames here.
        chunk = d.backend.schema.frames_per_latent * d.backend.chunk_latents
        assert made() - stopped_at <= 2 * chunk, "the never-reading WebSocket client still costs model time"
        assert len(d.sessions[stuck].frames) <= 24
        print(f"the non-reader's generation stopped after {stopped_at} frames")
    finally:
        sink.close()


def test_no_frame_of_an_old_epoch_or_closed_session_follows_the_reply(make_daemon, make_gateway):
    """Replies overtake the frames the gateway holds for a slow reader; those of the reset epoch or the closed
    session are dropped there, so §8 holds over WebSocket as over ZeroMQ."""
    d = make_daemon(tiny_backend(size=128))
    peer = WsPeer(make_gateway(d).url, max_queue=4)
    try:
        peer.hello()
        s = peer.reply(peer.request("open", fps=0, format="rgb24"))["session"]
        assert settles(lambda: d.sessions[s].delivery.frames_sent, 1.0, 30)  # every pipe and queue is full
        seq = peer.request("reset", session=s)
        after, seen_ok = [], False
        while (parts := peer.recv(3)) is not None:
            header = msgpack.unpackb(parts[0], raw=False)
            if header.get("re") == seq:
                seen_ok = True
            elif seen_ok and header["type"] == "frame":
                after.append(header["epoch"])
            if len(after) >= 30:
                break
        assert seen_ok and after and set(after) == {1}
        seq = peer.request("close", session=s)
        rest = [msgpack.unpackb(p[0], raw=False) for p in iter(lambda: peer.recv(1), None)]
        closed = next(i for i, m in enumerate(rest) if m.get("re") == seq)
        assert all(m["type"] != "frame" for m in rest[closed + 1:])
    finally:
        peer.close()
