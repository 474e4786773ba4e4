"""What the sync and asyncio clients share: message building, reply matching and frame parsing (no I/O).

Imports no torch: a client starts in well under a second.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from ..serve import frame_format
from ..serve.protocol import PROTOCOL_VERSION, Welcome, pack

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"


class ClientError(Exception):
    """Base of every error the client library raises."""


class ServerError(ClientError):
    """An ``error`` message from the daemon (``code`` is one of protocol.ERROR_CODES)."""

    def __init__(self, msg: dict):
        self.code = str(msg.get("code"))
        self.message = str(msg.get("message"))
        self.session = msg.get("session")
        self.re = msg.get("re")
        self.fatal = bool(msg.get("fatal"))
        where = f" (session {self.session})" if self.session is not None else ""
        super().__init__(f"{self.code}: {self.message}{where}")


class ConnectionLost(ClientError):
    """The daemon went away (shut down, or silent past the idle timeout) or never answered."""


@dataclass
class Frame:
    """One video frame from the daemon, with its header (see bridge/PROTOCOL.md) and payload."""

    header: dict
    payload: Any  # bytes-like
    received: float  # time.monotonic() on arrival
    input_sent: float | None = None  # time.monotonic() when the input named by header["input_seq"] was sent
    received_wall: float = 0.0  # time.time() on arrival (to place the daemon's wall-clock stamps)
    _image: np.ndarray | None = field(default=None, repr=False)

    @property
    def session(self) -> int:
        return self.header["session"]

    @property
    def epoch(self) -> int:
        return self.header["epoch"]

    @property
    def index(self) -> int:
        return self.header["index"]

    @property
    def chunk(self) -> int:
        return self.header["chunk"]

    @property
    def image(self) -> np.ndarray:
        """[H, W, 3] uint8."""
        if self._image is None:
            self._image = frame_format.decode(self.payload, self.header["format"], tuple(self.header["shape"]))
        return self._image

    @property
    def control(self) -> dict[str, np.ndarray] | None:
        """The control row that led into this frame (sessions opened with ``echo_controls``), else None."""
        c = self.header.get("control")
        if c is None:
            return None
        return {k: np.frombuffer(v, "<f4") if isinstance(v, bytes) else np.asarray(v, np.float32) for k, v in c.items()}

    @property
    def chunk_started(self) -> float:
        """When the daemon started generating this frame's chunk, on this client's ``time.monotonic()`` clock
        (from the header's ``t_gen`` and ``gen_ms``; same-host clocks, so exact on loopback)."""
        start_wall = self.header["t_gen"] - self.header["gen_ms"] / 1e3
        return self.received - (self.received_wall - start_wall)

    @property
    def input_latency_s(self) -> float | None:
        """From sending the newest input this frame was made with to receiving the frame."""
        return None if self.input_sent is None else self.received - self.input_sent


def controls_to_wire(controls: dict[str, Any] | None) -> dict[str, Any] | None:
    """{"keys": rows, "axes": rows, "embedding": rows} with lists or numpy arrays -> msgpack-ready map.

    Embedding arrays travel as float32 little-endian bytes (compact); keys and axes as lists of rows.
    """
    if controls is None:
        return None
    out = {}
    for name, value in controls.items():
        if value is None:
            continue
        if isinstance(value, np.ndarray):
            value = value.astype("<f4").tobytes() if name == "embedding" else value.tolist()
        out[name] = value
    return out


def start_frame_to_wire(image: np.ndarray | bytes | None, fmt: str | None = None) -> dict | None:
    """A [H, W, 3] uint8 array (sent as rgb24) or encoded ``jpeg``/``png`` bytes."""
    if image is None:
        return None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"start frame must be [H, W, 3] uint8, got {image.dtype} {list(image.shape)}")
        return {"format": "rgb24", "shape": list(image.shape), "data": np.ascontiguousarray(image).tobytes()}
    if fmt not in ("jpeg", "png"):
        raise ValueError("encoded start frames need fmt='jpeg' or 'png'")
    return {"format": fmt, "data": bytes(image)}


class ClientCore:
    def __init__(self, name: str):
        self.name = name
        self._seq = 0
        self.welcome: Welcome | None = None
        self._input_sent: OrderedDict[int, float] = OrderedDict()
        self._shown_upto = -1  # newest input seq already counted by inputs_shown
        self.last_sent = self._last_ping = time.monotonic()
        self._unanswered_since: float | None = None  # first message sent since the daemon last said anything
        self._epoch: dict[int, int] = {}  # session -> the epoch its last reset started
        self._closed: set[int] = set()  # sessions this client closed

    def restarted(self, session: int, epoch: int) -> None:
        self._epoch[session] = epoch

    def closed(self, session: int) -> None:
        self._closed.add(session)
        self._epoch.pop(session, None)

    def stale(self, frame: "Frame") -> bool:
        """A frame of a session this client closed, or of an epoch before its last reset: replies overtake frames
        already queued (in the daemon, and in a WebSocket gateway), so such frames can still arrive after them."""
        return frame.session in self._closed or frame.epoch < self._epoch.get(frame.session, 0)

    def message(self, kind: str, **fields) -> tuple[int, bytes]:
        """(seq, packed message); None-valued fields are left out."""
        self._seq += 1
        msg = {"type": kind, "seq": self._seq, **{k: v for k, v in fields.items() if v is not None}}
        now = time.monotonic()
        self.last_sent = now
        if self._unanswered_since is None:
            self._unanswered_since = now
        if kind == "ping":
            self._last_ping = now
        if kind == "input":
            self._input_sent[self._seq] = now
            while len(self._input_sent) > 4096:
                self._input_sent.popitem(last=False)
        return self._seq, pack(msg)

    def hello(self) -> tuple[int, bytes]:
        return self.message("hello", protocol=PROTOCOL_VERSION, client=self.name)

    def input(self, session: int, controls=None, hold=None, prompt: str | None = None, mode: str = "soft",
              sink: str = "keep") -> tuple[int, bytes]:
        p = None if prompt is None else {"text": prompt, "mode": mode, "sink": sink}
        return self.message("input", session=session, controls=controls_to_wire(controls),
                            hold=controls_to_wire(hold), prompt=p, t=time.time())

    def input_sent_at(self, seq: int) -> float | None:
        return self._input_sent.get(seq)

    def inputs_shown(self, input_seq: int, shown_at: float) -> list[float]:
        """Control-to-photon of the inputs first shown at ``shown_at`` by a frame made with ``input_seq``: every
        input up to that seq not yet counted (bridge/PROTOCOL.md, "Control-to-photon")."""
        out = [shown_at - sent for seq, sent in self._input_sent.items() if self._shown_upto < seq <= input_seq]
        self._shown_upto = max(self._shown_upto, input_seq)
        return out

    def parse(self, parts: list) -> Frame | dict:
        """An incoming message: a Frame for ``[header, payload]``, else the decoded control map."""
        now = time.monotonic()
        self._unanswered_since = None
        header = msgpack.unpackb(parts[0], raw=False)
        if len(parts) == 2 and isinstance(header, dict) and header.get("type") == "frame":
            return Frame(header, parts[1], now, self.input_sent_at(header.get("input_seq", -1)), time.time())
        if not isinstance(header, dict) or len(parts) != 1:
            raise ClientError(f"unexpected message from the daemon: {len(parts)} parts")
        return header

    def heartbeat_due(self) -> bool:
        """A ping is due when nothing was sent for a heartbeat interval, or nothing came back for one (inputs get
        no reply, so a paused session fed with inputs would otherwise look like a dead daemon)."""
        hb = self.welcome.limits["heartbeat_s"] if self.welcome else 2.0
        now = time.monotonic()
        if now - self.last_sent >= hb:
            return True
        waiting = self._unanswered_since is not None and now - self._unanswered_since >= hb
        return waiting and now - self._last_ping >= hb

    def check_alive(self) -> None:
        """Raise ConnectionLost if the daemon has not answered anything for its idle timeout."""
        timeout = self.welcome.limits["idle_timeout_s"] if self.welcome else 10.0
        if self._unanswered_since is not None and time.monotonic() - self._unanswered_since > timeout:
            raise ConnectionLost(f"the daemon has not answered for {timeout:g} s (its idle timeout)")
