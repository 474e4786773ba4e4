"""CurveZMQ and the bind policy: loopback by default, keys (or --insecure) for anything else."""

from __future__ import annotations

import pytest
import zmq

from serve_helpers import RawPeer
from worldsim.client import Client, ClientCurve, ConnectionLost
from worldsim.serve.security import check_bind, create_keys, is_local


def test_bind_policy():
    for local in ("tcp://127.0.0.1:5555", "tcp://localhost:1", "tcp://[::1]:5555", "tcp://127.0.0.1:*",
                  "ipc:///tmp/x.sock", "inproc://x"):
        assert is_local(local) and check_bind(local, None, False) is None
    for remote in ("tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://192.168.1.4:5555", "tcp://eth0:5555"):
        assert not is_local(remote)
        with pytest.raises(ValueError, match="--keys DIR"):
            check_bind(remote, None, False)
        assert "WITHOUT encryption" in check_bind(remote, None, True)
        assert check_bind(remote, "keys", False) is None
    with pytest.raises(ValueError, match="not a ZeroMQ endpoint"):
        is_local("127.0.0.1:5555")


def test_daemon_refuses_a_public_bind_without_keys(backend):
    from worldsim.serve.daemon import Daemon, DaemonConfig

    with pytest.raises(ValueError, match="reachable from other machines"):  # refused before any socket exists
        Daemon(backend, DaemonConfig(bind="tcp://0.0.0.0:*"))


def test_keys_layout(tmp_path):
    paths = create_keys(tmp_path / "k", "alice")
    assert paths["server_public"].is_file() and paths["client_secret"].is_file()
    assert (tmp_path / "k" / "authorized" / "alice.key").is_file()
    assert paths["client_secret"].stat().st_mode & 0o077 == 0 and paths["server_secret"].stat().st_mode & 0o077 == 0
    token = paths["ws_token"].read_text().strip()
    assert len(token) >= 32 and paths["ws_token"].stat().st_mode & 0o077 == 0
    server_secret = paths["server_secret"].read_text()
    create_keys(tmp_path / "k", "bob")  # a second client keeps the daemon's keys and the gateway token
    assert paths["server_secret"].read_text() == server_secret and paths["ws_token"].read_text().strip() == token
    with pytest.raises(FileExistsError):
        create_keys(tmp_path / "k", "alice")
    with pytest.raises(ValueError):
        create_keys(tmp_path / "k", "../evil")


def test_curve_accepts_authorised_keys_only(backend, make_daemon, tmp_path):
    keys = tmp_path / "keys"
    create_keys(keys, "alice")
    d = make_daemon(backend, keys_dir=str(keys))
    with Client(d.endpoint, curve=ClientCurve.from_dir(keys, "alice"), timeout=20) as c:
        s = c.open("encrypted", fps=0)
        assert c.frame(timeout=20) is not None and c.frame(timeout=20).session == s

    stranger = tmp_path / "stranger"
    create_keys(stranger, "mallory")  # a valid key pair the daemon never authorised
    wrong = ClientCurve(ClientCurve.from_dir(keys, "alice").server_public, *zmq.curve_keypair())
    for curve in (wrong, ClientCurve.from_dir(stranger, "mallory")):
        with pytest.raises(ConnectionLost):
            Client(d.endpoint, curve=curve, timeout=1.5)
    plain = RawPeer(d.endpoint)  # no CURVE at all
    try:
        plain.request("hello", protocol="1.0.0")
        assert plain.recv(1.0) is None
    finally:
        plain.close()
    assert not d.clients  # alice said bye; the others never completed a handshake
