"""Bad input to a live daemon: every malformed message gets an error reply (or, past the size limit, a dropped
connection), floods are rate-limited, and a well-behaved client keeps streaming throughout."""

from __future__ import annotations

import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_helpers import TEST_LIMITS, RawPeer, WsPeer, peer_for
from worldsim.client import Client
from worldsim.serve.protocol import ERROR_CODES

OK_REPLIES = {"welcome", "opened", "ok", "closed", "stats", "pong"}


@pytest.fixture(params=["zmq", "ws"])
def served(request, backend, make_daemon, make_gateway):
    """A daemon, a well-behaved streaming client, and a raw peer that has said hello, over ZeroMQ or through the
    WebSocket gateway."""
    d = make_daemon(backend)
    good = Client(d.endpoint, name="good")
    session = good.open("steady", fps=0)
    peer = peer_for(request.param, d, make_gateway)
    peer.hello()
    yield d, good, session, peer
    peer.close()
    good.close()


def still_streaming(good: Client, session: int) -> None:
    before = good.frames_ready()
    deadline = time.monotonic() + 30
    got = []
    while len(got) < 3 and time.monotonic() < deadline:
        got += [f for f in good.frames_ready() if f.session == session]
        time.sleep(0.02)
    assert len(got) >= 3, f"the good client stopped receiving frames ({len(before)} before)"


def error_for(peer: RawPeer, raw, seq: int | None = None) -> dict:
    peer.send(raw)
    return peer.reply(seq)


CASES = {
    "random bytes": (b"\x93\xa1\xc1\xff\x00garbage", "bad_message"),
    "not a map": (msgpack.packb([1, 2, 3]), "bad_message"),
    "unknown type": ({"type": "teleport", "seq": 5}, "unknown_type"),
    "missing seq": ({"type": "ping"}, "missing_field"),
    "wrong type of seq": ({"type": "ping", "seq": "7"}, "bad_field"),
    "missing session": ({"type": "input", "seq": 8, "hold": {"keys": [1, 0, 0, 0, 0, 0]}}, "missing_field"),
    "foreign session": ({"type": "close", "seq": 9, "session": 99999}, "unknown_session"),
    "key row too short": ({"type": "input", "seq": 10, "session": 0, "controls": {"keys": [[1, 0]]}}, "bad_controls"),
    "axes not numbers": ({"type": "input", "seq": 11, "session": 0, "controls": {"axes": [["a", "b"]]}},
                         "bad_controls"),
    "embedding too wide": ({"type": "input", "seq": 12, "session": 0,
                            "controls": {"embedding": np.ones((1, 6), "<f4").tobytes()}}, "bad_controls"),
    "embedding rows too narrow": ({"type": "input", "seq": 13, "session": 0, "controls": {"embedding": [[1.0] * 4]}},
                                  "bad_controls"),
    "bad switch mode": ({"type": "input", "seq": 14, "session": 0, "prompt": {"text": "x", "mode": "smash"}},
                        "bad_field"),
    "bad start frame": ({"type": "open", "seq": 15, "start_frame": {"format": "jpeg", "data": b"not a jpeg"}},
                        "bad_field"),
    "two parts": ([b"\x80", b"\x80"], "bad_message"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_message_gets_a_clear_error(served, name):
    d, good, session, peer = served
    raw, code = CASES[name]
    if isinstance(raw, list) and isinstance(peer, WsPeer):
        pytest.skip("a WebSocket message has one part")
    if isinstance(raw, dict) and raw.get("session") == 0:
        own = peer.reply(peer.request("open", fps=1))["session"]  # an own session, so only the sizes are at fault
        raw = raw | {"session": own}
    seq = raw.get("seq") if isinstance(raw, dict) and isinstance(raw.get("seq"), int) else None
    err = error_for(peer, raw, seq)  # a valid seq is echoed as "re"
    assert err["type"] == "error" and err["code"] == code, err
    assert err["message"] and code in ERROR_CODES
    still_streaming(good, session)


def test_oversized_message_drops_the_connection_only(served):
    d, good, session, peer = served
    if isinstance(peer, WsPeer):
        pytest.skip("the gateway closes the WebSocket instead (test_serve_gateway)")
    peer.send(b"\x00" * (d.limits.max_message_bytes + 1024))
    time.sleep(0.3)
    seq = peer.request("ping")  # the peer reconnects with a new routing id: it must say hello again
    assert peer.reply(seq)["code"] in ("hello_required", "bad_message")
    still_streaming(good, session)


def replies_until_quiet(peer: RawPeer, quiet_s: float = 1.0) -> list[dict]:
    out = []
    while (parts := peer.recv(quiet_s)) is not None:
        out.append(msgpack.unpackb(parts[0], raw=False))
    return out


def test_flood_is_rate_limited(backend, make_daemon):
    """Past the burst, every refused message is answered rate_limited (naming it); nothing is disconnected."""
    d = make_daemon(backend, rate_per_s=200, rate_burst=100)
    with Client(d.endpoint, name="good") as good:
        session = good.open(fps=0)
        peer = RawPeer(d.endpoint)
        try:
            peer.hello()
            seqs = [peer.request("ping") for _ in range(3000)]
            got = replies_until_quiet(peer)
            pongs = {m["re"] for m in got if m["type"] == "pong"}
            limited = {m["re"] for m in got if m.get("code") == "rate_limited"}
            assert pongs | limited == set(seqs) and not pongs & limited and len(got) == 3000
            assert 100 <= len(pongs) < 1500  # the burst, and the refill while the flood lasted
            assert peer.reply(peer.request("ping"), timeout=5)["type"] == "pong"  # still connected
            still_streaming(good, session)
        finally:
            peer.close()


def test_burst_within_the_allowance_is_answered(backend, make_daemon):
    d = make_daemon(backend, rate_per_s=400, rate_burst=800)
    peer = RawPeer(d.endpoint)
    try:
        peer.hello()
        seqs = [peer.request("ping") for _ in range(300)]
        got = replies_until_quiet(peer)
        assert [m["type"] for m in got] == ["pong"] * 300 and [m["re"] for m in got] == seqs
        assert len(d.clients) == 1
    finally:
        peer.close()


FLOODER = """
import sys, zmq
sock = zmq.Context().socket(zmq.DEALER)
sock.connect(sys.argv[1])
print("flooding", flush=True)
while True:
    sock.send(b"\\xc1 not msgpack")
"""


def test_flood_before_hello_does_not_lock_others_out(backend, make_daemon):
    """Peers that have not said hello have their own buckets: one flooding garbage cannot starve handshakes."""
    d = make_daemon(backend, rate_per_s=400, rate_burst=800)
    flooder = subprocess.Popen([sys.executable, "-c", FLOODER, d.endpoint], stdout=subprocess.PIPE, text=True)
    try:
        assert flooder.stdout.readline().strip() == "flooding"
        time.sleep(1.0)  # well past the flooder's burst
        waits = []
        for i in range(8):
            peer = RawPeer(d.endpoint)
            t0 = time.monotonic()
            try:
                assert peer.hello()["type"] == "welcome"
                waits.append(time.monotonic() - t0)
            finally:
                peer.close()
        assert max(waits) < 1.0, f"hello took {max(waits):.2f} s during a flood"
        assert flooder.poll() is None and len(d._handshakes) <= d.limits.max_pending_handshakes
    finally:
        flooder.kill()
        flooder.wait()


# ---- property-based fuzzing of the live daemon -------------------------------------------------------------------

leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(), st.text(max_size=12),
                   st.binary(max_size=24))
values = st.one_of(leaves, st.lists(leaves, max_size=4), st.dictionaries(st.text(max_size=6), leaves, max_size=3),
                   st.lists(st.lists(leaves, max_size=6), max_size=3))
TEMPLATES = [
    {"type": "input", "session": "OWN", "controls": {"keys": [[1, 0, 0, 0, 0, 0]], "axes": [[0.1, 0.2]]}},
    {"type": "input", "session": "OWN", "hold": {"keys": [0, 1, 0, 0, 0, 0], "embedding": [0.0] * 5}},
    {"type": "input", "session": "OWN", "prompt": {"text": "a road", "mode": "cut", "sink": "keep"}},
    {"type": "stats", "session": "OWN"},
    {"type": "hello", "protocol": "1.0.0", "client": "fuzz"},
    {"type": "open", "prompt": "p", "format": "jpeg", "fps": 1},
    {"type": "pause", "session": "OWN"},
]
FIELDS = sorted({k for t in TEMPLATES for k in t} | {"seq", "keys", "axes", "embedding", "start_frame", "mode",
                                                     "package_start"})
mutation = st.tuples(st.sampled_from(["replace", "drop", "add", "nest"]), st.sampled_from(FIELDS), values)
mutants = st.tuples(st.integers(0, len(TEMPLATES) - 1), st.lists(mutation, min_size=1, max_size=3))
cases = st.one_of(st.binary(max_size=64).map(lambda b: ("bytes", b)), values.map(lambda v: ("value", v)),
                  mutants.map(lambda m: ("mutant", m)))


def mutant(index: int, mutations: list, own: int) -> dict:
    msg = {"seq": 1} | {k: (own if v == "OWN" else v) for k, v in TEMPLATES[index].items()}
    for action, key, value in mutations:
        if action == "replace":
            msg[key] = value
        elif action == "drop":
            msg.pop(key, None)
        elif action == "add":
            msg[key + "_x"] = value
        elif isinstance(msg.get(key), dict) and msg[key]:
            inner = dict(msg[key])
            inner[sorted(inner)[len(str(value)) % len(inner)]] = value
            msg[key] = inner
    return msg


@pytest.fixture(scope="module", params=["zmq", "ws"])
def fuzz_target(request, backend):
    from worldsim.serve.daemon import Daemon, DaemonConfig
    from worldsim.serve.gateway import GatewayConfig, start_in_thread

    d = Daemon(backend, DaemonConfig(bind="tcp://127.0.0.1:*", limits=TEST_LIMITS, stats_interval_s=0)).start()
    good = Client(d.endpoint, name="good")
    session = good.open("steady", fps=8)
    gateway = None
    if request.param == "ws":
        gateway = start_in_thread(GatewayConfig(daemon=d.endpoint, port=0,
                                                   max_message_bytes=d.limits.max_message_bytes))
    peer = RawPeer(d.endpoint) if gateway is None else WsPeer(gateway.url)
    peer.hello()
    own = peer.reply(peer.request("open", fps=1))["session"]
    yield d, good, session, peer, own
    peer.close()
    good.close()
    if gateway is not None:
        gateway.stop()
        gateway.stopped.wait(10)
    d.stop()


@settings(max_examples=2000, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=cases)
def test_fuzz_live_daemon(fuzz_target, case):
    d, good, session, peer, own = fuzz_target
    kind, body = case
    try:
        raw = body if kind == "bytes" else msgpack.packb(body if kind == "value" else mutant(*body, own),
                                                         use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return
    peer.send(raw)
    seq = peer.request("ping")
    replies = []
    while True:
        r = peer.reply(timeout=10)
        if r.get("re") == seq and r["type"] == "pong":
            break
        replies.append(r)
    for r in replies:
        assert r["type"] in OK_REPLIES or (r["type"] == "error" and r["code"] in ERROR_CODES), r
        if r["type"] == "opened":  # a mutant that is still a valid open: close it again
            peer.reply(peer.request("close", session=r["session"]))
        if r["type"] == "ok" and r.get("paused"):
            peer.reply(peer.request("resume", session=own))
    good.frames_ready()  # the good client keeps reading (and heartbeating) meanwhile


def test_fuzz_left_the_daemon_serving(fuzz_target):
    d, good, session, peer, own = fuzz_target
    still_streaming(good, session)
    assert d.engine.alive and len(d.sessions) <= 2 + d.limits.max_sessions_per_client
