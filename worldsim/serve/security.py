"""CurveZMQ keys and the bind-address policy.

The daemon binds to loopback by default. Any other TCP address needs CURVE keys (``--keys DIR``) unless
``--insecure`` is given. A key directory made by :func:`create_keys` (``worldsim keys DIR``) holds:

    DIR/server.key             the daemon's public key: give it to clients
    DIR/server.key_secret      the daemon's secret key: stays on the daemon host
    DIR/authorized/NAME.key    public keys of the clients the daemon accepts (one file per client)
    DIR/NAME.key_secret        a client's key pair: give it (with server.key) to that client only
    DIR/ws.token               the WebSocket gateway's token (``--ws-token-file``): give it to its clients

A client with a key not in ``authorized/`` (or without CURVE) completes no handshake and receives nothing.
"""

from __future__ import annotations

import ipaddress
import os
import re
from urllib.parse import urlsplit
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

SERVER = "server"
WS_TOKEN = "ws.token"
AUTHORIZED = "authorized"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "[::1]")


def is_local(endpoint: str) -> bool:
    """True for ipc://, inproc://, and tcp:// or a ws:// / wss:// URL on a loopback address."""
    m = re.fullmatch(r"(\w+)://(.*)", endpoint)
    if m is None:
        raise ValueError(f"not a ZeroMQ endpoint: {endpoint!r} (e.g. tcp://127.0.0.1:5555)")
    scheme, rest = m[1], m[2]
    if scheme in ("ipc", "inproc"):
        return True
    if scheme in ("ws", "wss"):
        host = urlsplit(endpoint).hostname or ""
    else:
        host = rest.rsplit(":", 1)[0] if scheme == "tcp" else rest
    if host in LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # an interface name or hostname, '*' or 0.0.0.0: not loopback


def check_bind(endpoint: str, keys_dir: str | Path | None, insecure: bool) -> str | None:
    """Refuse a non-loopback bind without keys; returns a warning for an insecure one (else None)."""
    if is_local(endpoint) or keys_dir is not None:
        return None
    if not insecure:
        raise ValueError(f"{endpoint} is reachable from other machines: give CurveZMQ keys with --keys DIR "
                         "(make them with `worldsim keys DIR`), or pass --insecure to serve unencrypted and "
                         "unauthenticated")
    return (f"serving on {endpoint} WITHOUT encryption or authentication (--insecure): anyone who can reach this "
            "address can use the daemon and watch its frames")


def create_keys(directory: str | Path, client: str = "client") -> dict[str, Path]:
    """Make the daemon's key pair and the gateway token (if missing) and a key pair for ``client``, authorised."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", client) or client == SERVER:
        raise ValueError(f"client name {client!r} must be 1-64 letters, digits, '_', '.', '-' and not {SERVER!r}")
    d = Path(directory)
    (d / AUTHORIZED).mkdir(parents=True, exist_ok=True)
    if not (d / f"{SERVER}.key_secret").is_file():
        _, secret = zmq.auth.create_certificates(d, SERVER)
        os.chmod(secret, 0o600)
    if not (d / WS_TOKEN).is_file():
        fd = os.open(d / WS_TOKEN, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    if (d / f"{client}.key_secret").exists():
        raise FileExistsError(f"{d / (client + '.key_secret')} exists; choose another client name")
    public, secret = zmq.auth.create_certificates(d, client)
    os.chmod(secret, 0o600)  # secret keys: owner only
    shutil.move(public, d / AUTHORIZED / f"{client}.key")
    return {"server_public": d / f"{SERVER}.key", "server_secret": d / f"{SERVER}.key_secret",
            "client_secret": d / f"{client}.key_secret", "client_public": d / AUTHORIZED / f"{client}.key",
            "ws_token": d / WS_TOKEN}


@dataclass
class ServerCurve:
    """A running authenticator plus the keys to put on the daemon's socket."""

    authenticator: ThreadAuthenticator
    public: bytes
    secret: bytes

    def apply(self, socket: zmq.Socket) -> None:
        socket.curve_secretkey = self.secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def stop(self) -> None:
        self.authenticator.stop()


def _load(path: Path, want_secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise FileNotFoundError(f"missing key file {path} (make keys with `worldsim keys DIR`)")
    public, secret = zmq.auth.load_certificate(path)
    if want_secret and secret is None:
        raise ValueError(f"{path} holds no secret key")
    return public, secret


def start_server_curve(ctx: zmq.Context, keys_dir: str | Path) -> ServerCurve:
    d = Path(keys_dir)
    public, secret = _load(d / f"{SERVER}.key_secret", want_secret=True)
    authorized = d / AUTHORIZED
    if not authorized.is_dir() or not any(authorized.glob("*.key")):
        raise FileNotFoundError(f"{authorized} holds no client keys; add one with `worldsim keys {d} --client NAME`")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(authorized))
    return ServerCurve(auth, public, secret)


@dataclass(frozen=True)
class ClientCurve:
    """What a client needs: the daemon's public key and its own key pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_dir(cls, keys_dir: str | Path, client: str = "client") -> "ClientCurve":
        d = Path(keys_dir)
        server_public, _ = _load(d / f"{SERVER}.key", want_secret=False)
        public, secret = _load(d / f"{client}.key_secret", want_secret=True)
        return cls(server_public, public, secret)

    def apply(self, socket: zmq.Socket) -> None:
        socket.curve_serverkey = self.server_public
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret
