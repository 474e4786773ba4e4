"""Every message the daemon sends, built in one place (the wire format is specified in ``bridge/PROTOCOL.md``).

Control messages are single-part msgpack maps; frames are ``[header, payload]`` with :func:`frame_header`.
Builders return plain dicts (packed by :func:`~worldsim.serve.protocol.pack`), so a field added here is added
for every sender.
"""

from __future__ import annotations

import time
from typing import Any

from .. import __version__
from .protocol import FRAME_FORMATS, PROTOCOL_VERSION, SINK_POLICIES, SWITCH_MODES, ControlSchema, Limits

# Why a session ended, in ``closed.reason``. Only "failed" is ever sent unasked (after a fatal ``error``).
CLOSE_REASONS = {
    "client": "the client sent close (the reply to it, with ``re``)",
    "failed": "generation failed; sent unasked right after the fatal session_failed error",
}


def error(code: str, message: str, re: int | None = None, session: int | None = None, fatal: bool = False) -> dict:
    """An ``error`` (``re``: the seq of the message it answers; ``fatal``: the named session is now closed)."""
    out: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if re is not None:
        out["re"] = re
    if session is not None:
        out["session"] = session
    if fatal:
        out["fatal"] = True
    return out


def welcome(re: int, model: dict, video: dict, schema: ControlSchema, limits: Limits,
            decode_limits: dict[str, int]) -> dict:
    return {"type": "welcome", "re": re, "protocol": PROTOCOL_VERSION, "server": f"worldsim {__version__}",
            "model": model, "video": video, "formats": list(FRAME_FORMATS), "control": schema.to_wire(),
            "prompt": {"max_chars": limits.max_prompt_chars, "modes": list(SWITCH_MODES),
                       "sink_policies": list(SINK_POLICIES)},
            "limits": limits.to_wire() | {"decode": decode_limits}}


def opened(re: int, session: int, epoch: int, fps: float, fmt: str, lookahead_s: float) -> dict:
    return {"type": "opened", "re": re, "session": session, "epoch": epoch, "fps": fps, "format": fmt,
            "lookahead": lookahead_s}


def ok(re: int, session: int, op: str, epoch: int, paused: bool) -> dict:
    return {"type": "ok", "re": re, "session": session, "op": op, "epoch": epoch, "paused": paused}


def closed(session: int, reason: str, stats: dict, re: int | None = None) -> dict:
    assert reason in CLOSE_REASONS, reason
    out = {"type": "closed", "session": session, "reason": reason, "stats": stats}
    if re is not None:
        out["re"] = re
    return out


def pong(re: int) -> dict:
    return {"type": "pong", "re": re, "t": time.time()}


def stats(re: int, sessions: dict[int, dict], daemon: dict) -> dict:
    return {"type": "stats", "re": re, "sessions": {str(s): r for s, r in sessions.items()}, "daemon": daemon}


def shutdown(reason: str) -> dict:
    return {"type": "shutdown", "reason": reason}


def frame_header(session: int, epoch: int, chunk: int, index: int, i: int, n: int, fmt: str,
                 shape: tuple[int, ...], gen_ms: float, batch: int, input_seq: int, prompt_seq: int,
                 input_t: float | None, control: dict | None) -> dict:
    """The header of one frame; ``t_send`` is added when it is sent (see Daemon._send_frames)."""
    out = {"type": "frame", "session": session, "epoch": epoch, "chunk": chunk, "index": index, "i": i, "n": n,
           "format": fmt, "shape": list(shape), "t_gen": time.time(), "gen_ms": gen_ms, "batch": batch,
           "input_seq": input_seq, "prompt_seq": prompt_seq}
    if input_t is not None:
        out["input_t"] = input_t
    if control is not None:
        out["control"] = control
    return out
