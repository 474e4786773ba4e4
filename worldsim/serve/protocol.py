"""Protocol v1 of the worldsim daemon: version, error codes, limits, control schema and message validation.

Shared by the daemon and the client library, so it imports neither torch nor the model. Every client message is
one msgpack map; :func:`decode` unpacks it under explicit size limits and :func:`parse` checks every field and
returns a typed message, raising :class:`ProtocolError` (a stable ``code`` and a readable message) otherwise.
The wire format is specified in ``bridge/PROTOCOL.md``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = "1.2.0"  # 1.1: open.lookahead, unasked closed(failed), welcome.limits.decode;
#                             1.2: a package's start frames (welcome.model.starts, open.package_start)

FRAME_FORMATS = ("rgb24", "jpeg")
SWITCH_MODES = ("soft", "recache", "cut")
SINK_POLICIES = ("keep", "refresh")
SESSION_OPS = ("pause", "resume", "reset", "close")
CLIENT_TYPES = ("hello", "open", "input", *SESSION_OPS, "stats", "ping", "bye")
AXIS_CLIP = 4.0  # axes are normalised to about [-1, 1]; larger values are clipped to +-AXIS_CLIP
MAX_SEQ = 2**63 - 1
MAX_SEED = 2**63 - 1
MAX_NAME_CHARS = 128
MAX_LOOKAHEAD_S = 5.0
MAX_MAP_LEN = 32  # entries per msgpack map
MAX_DEPTH = 1024  # nesting depth (msgpack's own decoder stack)

# Stable error codes (the ``code`` field of an ``error`` message) and what each means.
ERROR_CODES = {
    "bad_message": "not a msgpack map, not decodable, multi-part, or over a size limit",
    "unknown_type": "the message type is not one of protocol v1's",
    "missing_field": "a required field is absent",
    "bad_field": "a field has the wrong type or an out-of-range value",
    "bad_controls": "controls do not match the daemon's control schema (widths, row counts, values)",
    "version_mismatch": "the client's protocol major version differs from the daemon's",
    "hello_required": "the first message of a connection must be hello",
    "unknown_session": "no open session with that id belongs to this client",
    "busy": "a session or client limit is reached; retry later",
    "rate_limited": "over the message rate; this message (``re``) was not handled",
    "session_failed": "generation failed for this session, which is now closed",
    "shutting_down": "the daemon is stopping",
    "internal": "an unexpected daemon error; the daemon keeps serving",
}


class ProtocolError(Exception):
    """A request the daemon refuses: ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str):
        assert code in ERROR_CODES, code
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def parse_version(text: Any) -> tuple[int, int, int]:
    """"MAJOR.MINOR.PATCH" -> ints; raises ProtocolError(bad_field) for anything else."""
    m = re.fullmatch(r"(\d{1,6})\.(\d{1,6})\.(\d{1,6})", text) if isinstance(text, str) else None
    if m is None:
        raise ProtocolError("bad_field", f"protocol must be a semver string like {PROTOCOL_VERSION!r}, got {text!r}")
    return int(m[1]), int(m[2]), int(m[3])


def check_compatible(client_version: Any) -> None:
    """Semver rule: the major versions must match; minor versions only add optional fields."""
    major = parse_version(client_version)[0]
    ours = parse_version(PROTOCOL_VERSION)[0]
    if major != ours:
        raise ProtocolError("version_mismatch", f"client speaks protocol {client_version}, this daemon speaks "
                                                f"{PROTOCOL_VERSION}: major versions must match (upgrade the "
                                                f"{'daemon' if major > ours else 'client'})")


# ---- limits and control schema ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What the daemon accepts; announced in ``welcome`` so clients can stay inside it."""

    max_message_bytes: int | None = None  # ZMQ MAXMSGSIZE: larger messages drop the connection (None: fitted)
    max_prompt_chars: int = 2000
    max_samples: int = 256  # control rows per input message
    max_queued_samples: int = 96  # control rows a session buffers before dropping the oldest
    max_sessions: int = 8
    max_sessions_per_client: int = 4
    max_clients: int = 64
    queue_frames: int = 24  # frames buffered per session for a slow client; the oldest are dropped
    idle_timeout_s: float = 10.0  # a client silent this long is dropped and its sessions closed
    heartbeat_s: float = 2.0  # clients send something (``ping`` when idle) at least this often
    rate_per_s: float = 400.0  # messages per second per client (token bucket) ...
    rate_burst: int = 800  # ... with this burst; each message past it is answered rate_limited, not handled
    max_pending_replies: int = 4096  # replies queued for a client that does not read; past this it is dropped
    max_pending_handshakes: int = 256  # peers that have sent something but no hello yet (oldest forgotten)

    def to_wire(self) -> dict[str, Any]:
        return dict(self.__dict__)


def fit_message_limit(schema: "ControlSchema", video_shape: tuple[int, int], max_samples: int) -> int:
    """The smallest sensible inbound limit: a raw start frame at the video size, or ``max_samples`` rows of every
    control source as msgpack floats (9 bytes each), plus room for the rest; at least 64 KiB."""
    h, w = video_shape
    rows = max_samples * (len(schema.keys) + len(schema.axes) + schema.embedding_dim) * 9
    return max(64 << 10, h * w * 3 + (16 << 10), rows + (16 << 10))


@dataclass(frozen=True)
class ControlSchema:
    """The controls a session accepts per video frame: named binary keys, named axes, an engine embedding."""

    keys: tuple[str, ...] = ()
    axes: tuple[str, ...] = ()
    embedding_dim: int = 0
    frames_per_latent: int = 4

    def to_wire(self) -> dict[str, Any]:
        return {"keys": list(self.keys), "axes": list(self.axes), "embedding_dim": self.embedding_dim,
                "frames_per_latent": self.frames_per_latent}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> "ControlSchema":
        return cls(tuple(d["keys"]), tuple(d["axes"]), int(d["embedding_dim"]), int(d["frames_per_latent"]))

    @property
    def empty(self) -> bool:
        return not (self.keys or self.axes or self.embedding_dim)

    def widths(self) -> dict[str, int]:
        return {"keys": len(self.keys), "axes": len(self.axes), "embedding": self.embedding_dim}


@dataclass
class ControlRows:
    """Per-video-frame control rows: keys [n, K] in [0, 1], axes [n, A], embedding [n, D]; absent sources None."""

    keys: np.ndarray | None = None
    axes: np.ndarray | None = None
    embedding: np.ndarray | None = None

    def __len__(self) -> int:
        return next((len(a) for a in (self.keys, self.axes, self.embedding) if a is not None), 0)

    def sources(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in (("keys", self.keys), ("axes", self.axes), ("embedding", self.embedding))
                if v is not None}


# ---- typed messages ---------------------------------------------------------------------------------------------


@dataclass
class Hello:
    seq: int
    protocol: str
    client: str


@dataclass
class StartFrame:
    """An image the stream starts from: ``rgb24`` with ``shape`` [H, W, 3], or ``jpeg``/``png`` bytes."""

    format: str
    data: bytes
    shape: tuple[int, int, int] | None = None


@dataclass
class Open:
    seq: int
    prompt: str
    seed: int = 0
    format: str = "rgb24"
    jpeg_quality: int = 85
    fps: float | None = None  # None: the daemon's fps; 0: unpaced (as fast as the model goes)
    echo_controls: bool = False
    start_frame: StartFrame | None = None
    lookahead: float = 0.0  # seconds of extra buffer a paced session keeps (smoothness over latency)
    package_start: bool = True  # without a start_frame: the model package's frame for the prompt, if it has one


@dataclass
class PromptSwitch:
    text: str
    mode: str = "soft"
    sink: str = "keep"


@dataclass
class Input:
    seq: int
    session: int
    prompt: PromptSwitch | None = None
    controls: ControlRows | None = None  # per-video-frame samples, queued in order
    hold: ControlRows | None = None  # one row: the state used for every frame no sample covers
    t: float | None = None  # the client's clock when it sent this, echoed in frame headers


@dataclass
class SessionOp:
    type: str  # pause | resume | reset | close
    seq: int
    session: int


@dataclass
class Stats:
    seq: int
    session: int | None = None


@dataclass
class Ping:
    seq: int


@dataclass
class Bye:
    seq: int


# ---- decoding ---------------------------------------------------------------------------------------------------


def decode(raw: bytes, limits: Limits, schema: ControlSchema) -> dict[str, Any]:
    """Unpack one control message under explicit msgpack limits; it must be a map (:func:`parse` checks the rest)."""
    if len(raw) > limits.max_message_bytes:
        raise ProtocolError("bad_message", f"message of {len(raw)} bytes exceeds max_message_bytes "
                                           f"({limits.max_message_bytes})")
    try:
        msg = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True, max_ext_len=0,
                              **decode_limits(limits, schema))
    except Exception as e:  # noqa: BLE001 - msgpack raises many types (ValueError, StackError, ExtraData, ...)
        raise ProtocolError("bad_message", f"not a valid msgpack message: {type(e).__name__}: {e}"[:300]) from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", f"a message must be a msgpack map, got {type(msg).__name__}")
    return msg


def decode_limits(limits: Limits, schema: ControlSchema) -> dict[str, int]:
    """The msgpack limits :func:`decode` applies (announced in ``welcome.limits.decode``; depth is fixed)."""
    return {"max_str_len": 4 * limits.max_prompt_chars, "max_bin_len": limits.max_message_bytes,
            "max_array_len": max(limits.max_samples, schema.embedding_dim, len(schema.keys), len(schema.axes), 16),
            "max_map_len": MAX_MAP_LEN}


def peek_seq(msg: Any) -> int | None:
    """The message's ``seq`` if it is a valid one (used to address error replies)."""
    seq = msg.get("seq") if isinstance(msg, dict) else None
    return seq if _is_int(seq) and 0 <= seq <= MAX_SEQ else None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_MISSING = object()


def _get(msg: dict, name: str, kind: str, default: Any = _MISSING, lo: float | None = None,
         hi: float | None = None, choices: tuple | None = None, where: str | None = None) -> Any:
    """Field ``name`` of ``msg`` checked against ``kind`` (int | num | str | bool | bytes | map), range and choices.

    ``where`` names the message (or sub-map) in errors; default: the message's type.
    """
    where = where or msg.get("type")
    if name not in msg or msg[name] is None:
        if default is _MISSING:
            raise ProtocolError("missing_field", f"{where}: field {name!r} is required")
        return default
    v = msg[name]
    ok = {"int": _is_int, "num": lambda x: _is_num(x) and math.isfinite(x), "str": lambda x: isinstance(x, str),
          "bool": lambda x: isinstance(x, bool), "bytes": lambda x: isinstance(x, bytes),
          "map": lambda x: isinstance(x, dict)}[kind](v)
    if not ok:
        raise ProtocolError("bad_field", f"{where}: field {name!r} must be {_KIND_NAMES[kind]}, got {type(v).__name__}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ProtocolError("bad_field", f"{where}: field {name!r} = {v} is outside [{lo}, {hi}]")
    if choices is not None and v not in choices:
        raise ProtocolError("bad_field", f"{where}: field {name!r} = {str(v)[:64]!r} must be one of {list(choices)}")
    return v


_KIND_NAMES = {"int": "an integer", "num": "a finite number", "str": "a string", "bool": "a boolean",
               "bytes": "binary (msgpack bin)", "map": "a map"}


def _text(msg: dict, name: str, max_chars: int, default: Any = _MISSING, where: str | None = None) -> str:
    v = _get(msg, name, "str", default, where=where)
    if isinstance(v, str) and len(v) > max_chars:
        raise ProtocolError("bad_field", f"{where or msg.get('type')}: field {name!r} has {len(v)} characters "
                                         f"(limit {max_chars})")
    return v


def _rows(where: str, value: Any, width: int, source: str, n: int | None, limits: Limits) -> np.ndarray:
    """A [n, width] float32 array from a list of rows (or, for ``embedding``, float32 little-endian bytes)."""
    if width == 0:
        raise ProtocolError("bad_controls", f"{where}: this daemon's control schema has no {source}")
    if isinstance(value, bytes) and source == "embedding":
        if len(value) % (4 * width):
            raise ProtocolError("bad_controls", f"{where}.embedding: {len(value)} bytes are not a whole number of "
                                                f"float32 rows of {width}")
        arr = np.frombuffer(value, dtype="<f4").reshape(-1, width).astype(np.float32)
    elif isinstance(value, list):
        if not all(isinstance(r, list) and len(r) == width for r in value):
            bad = next((r for r in value if not (isinstance(r, list) and len(r) == width)), None)
            got = f"a row of {len(bad)}" if isinstance(bad, list) else f"a {type(bad).__name__}"
            raise ProtocolError("bad_controls", f"{where}.{source}: every row must be a list of {width} numbers "
                                                f"(the schema's {source} width), got {got}")
        if not all(_is_num(x) or isinstance(x, bool) for r in value for x in r):
            raise ProtocolError("bad_controls", f"{where}.{source}: values must be numbers")
        arr = np.asarray(value, dtype=np.float64).reshape(len(value), width).astype(np.float32)
    else:
        raise ProtocolError("bad_controls", f"{where}.{source} must be a list of rows"
                                            + (" or float32 bytes" if source == "embedding" else ""))
    if len(arr) == 0 or len(arr) > limits.max_samples:
        raise ProtocolError("bad_controls", f"{where}.{source}: {len(arr)} rows (need 1..{limits.max_samples})")
    if n is not None and len(arr) != n:
        raise ProtocolError("bad_controls", f"{where}: {source} has {len(arr)} rows but another source has {n}; "
                                            "all sources in one message cover the same frames")
    if not np.isfinite(arr).all():
        raise ProtocolError("bad_controls", f"{where}.{source}: values must be finite")
    if source == "keys" and ((arr < 0) | (arr > 1)).any():
        raise ProtocolError("bad_controls", f"{where}.keys: values must be 0/1 (or a held fraction in [0, 1])")
    if source == "axes":
        np.clip(arr, -AXIS_CLIP, AXIS_CLIP, out=arr)
    if source == "embedding" and (np.abs(arr) > 1e6).any():
        raise ProtocolError("bad_controls", f"{where}.embedding: values must be within +-1e6")
    return arr


def _control_rows(msg: dict, name: str, schema: ControlSchema, limits: Limits, one_row: bool) -> ControlRows | None:
    block = _get(msg, name, "map", None)
    if block is None:
        return None
    if schema.empty:
        raise ProtocolError("bad_controls", f"input.{name}: this model takes no controls (its schema is empty)")
    unknown = sorted(set(block) - {"keys", "axes", "embedding"})
    if unknown:
        raise ProtocolError("bad_controls", f"input.{name}: unknown control sources {[str(u)[:32] for u in unknown]}; "
                                            "use keys, axes, embedding")
    rows, n = ControlRows(), None
    for source, width in schema.widths().items():
        if block.get(source) is None:
            continue
        value = block[source]
        if one_row and isinstance(value, list) and (not value or not isinstance(value[0], list)):
            value = [value]  # hold: one flat row
        arr = _rows(f"input.{name}", value, width, source, n, limits)
        n = len(arr)
        setattr(rows, source, arr)
    if n is None:
        raise ProtocolError("bad_controls", f"input.{name} carries no keys, axes or embedding")
    if one_row and n != 1:
        raise ProtocolError("bad_controls", f"input.{name} is one state (one row per source), got {n} rows")
    return rows


def _start_frame(msg: dict, limits: Limits) -> StartFrame | None:
    sf = _get(msg, "start_frame", "map", None)
    if sf is None:
        return None
    fmt = _get(sf, "format", "str", choices=("rgb24", "jpeg", "png"), where="open.start_frame")
    data = _get(sf, "data", "bytes", where="open.start_frame")
    shape = None
    if fmt == "rgb24":
        shape = sf.get("shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(s) and 0 < s <= 8192 for s in shape)
                and shape[2] == 3):
            raise ProtocolError("bad_field", f"open.start_frame.shape must be [H, W, 3] for rgb24, "
                                             f"got {str(shape)[:64]}")
        if len(data) != shape[0] * shape[1] * 3:
            raise ProtocolError("bad_field", f"open.start_frame: {len(data)} bytes do not match shape {shape}")
        shape = tuple(shape)
    return StartFrame(fmt, data, shape)


def parse(msg: dict[str, Any], schema: ControlSchema, limits: Limits):
    """Check every field of a decoded message against protocol v1 and return the typed message."""
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("missing_field" if kind is None else "bad_field",
                            "every message needs a string field 'type'")
    if kind not in CLIENT_TYPES:
        raise ProtocolError("unknown_type",
                            f"unknown message type {kind[:64]!r}; protocol v1 knows {list(CLIENT_TYPES)}")
    seq = _get(msg, "seq", "int", lo=0, hi=MAX_SEQ)
    if kind == "hello":
        protocol = _text(msg, "protocol", 32)
        parse_version(protocol)
        return Hello(seq, protocol, _text(msg, "client", MAX_NAME_CHARS, ""))
    if kind == "open":
        return Open(seq, _text(msg, "prompt", limits.max_prompt_chars, ""), _get(msg, "seed", "int", 0, 0, MAX_SEED),
                    _get(msg, "format", "str", "rgb24", choices=FRAME_FORMATS),
                    _get(msg, "jpeg_quality", "int", 85, 1, 100), _get(msg, "fps", "num", None, 0, 240),
                    _get(msg, "echo_controls", "bool", False), _start_frame(msg, limits),
                    _get(msg, "lookahead", "num", 0.0, 0, MAX_LOOKAHEAD_S), _get(msg, "package_start", "bool", True))
    if kind == "input":
        prompt = _get(msg, "prompt", "map", None)
        if prompt is not None:
            where = "input.prompt"
            prompt = PromptSwitch(_text(prompt, "text", limits.max_prompt_chars, where=where),
                                  _get(prompt, "mode", "str", "soft", choices=SWITCH_MODES, where=where),
                                  _get(prompt, "sink", "str", "keep", choices=SINK_POLICIES, where=where))
        out = Input(seq, _get(msg, "session", "int", lo=0, hi=MAX_SEQ), prompt,
                    _control_rows(msg, "controls", schema, limits, one_row=False),
                    _control_rows(msg, "hold", schema, limits, one_row=True), _get(msg, "t", "num", None))
        if out.prompt is None and out.controls is None and out.hold is None:
            raise ProtocolError("missing_field", "input needs at least one of 'prompt', 'controls', 'hold'")
        return out
    if kind in SESSION_OPS:
        return SessionOp(kind, seq, _get(msg, "session", "int", lo=0, hi=MAX_SEQ))
    if kind == "stats":
        return Stats(seq, _get(msg, "session", "int", None, 0, MAX_SEQ))
    if kind == "ping":
        return Ping(seq)
    return Bye(seq)


def pack(msg: dict[str, Any]) -> bytes:
    """Serialise a message (numpy scalars become Python numbers)."""
    return msgpack.packb(msg, use_bin_type=True, default=_np_default)


def _np_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__}")


@dataclass
class Welcome:
    """The daemon's capabilities, as received by a client."""

    protocol: str
    server: str
    model: dict[str, Any]
    video: dict[str, Any]
    formats: list[str]
    control: ControlSchema
    prompt: dict[str, Any]
    limits: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> "Welcome":
        return cls(d["protocol"], d["server"], d["model"], d["video"], list(d["formats"]),
                   ControlSchema.from_wire(d["control"]), d["prompt"], d["limits"], d)
