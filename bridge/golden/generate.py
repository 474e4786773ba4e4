"""Writes messages.json: protocol v1 messages and their exact msgpack bytes, shared by every codec's tests
(Python in tests/test_bridge_golden.py, JavaScript in worldsim/serve/web/msgpack.js, C# and GDScript in the
engine bridges). Run it only when a message is added; the bytes of an existing entry must never change.

JSON cannot hold msgpack's bin type: a value {"$bin": "<hex>"} stands for bin data. Floats in the vectors are never
integral (1.0 would be an integer to a JavaScript encoder; protocol v1 accepts either where a number is expected).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import msgpack

OUT = Path(__file__).with_name("messages.json")
EMBEDDING = struct.pack("<5f", 0.5, -0.25, 0.125, 0.0, 1.5)

MESSAGES = {
    # client -> daemon
    "hello": {"type": "hello", "seq": 1, "protocol": "1.1.0", "client": "godot-sample"},
    "open": {"type": "open", "seq": 2, "prompt": "a snowy mountain village at dusk", "seed": 42, "format": "jpeg",
             "jpeg_quality": 80, "fps": 16, "echo_controls": False, "lookahead": 0.25},
    "open_nil_format": {"type": "open", "seq": 3, "prompt": "a quiet forest", "format": None},
    "input_controls": {"type": "input", "seq": 4, "session": 1,
                       "controls": {"keys": [[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0]],
                                    "axes": [[0.5, -0.25], [0.125, 0.0625]]}, "t": 1764560000.5},
    "input_embedding": {"type": "input", "seq": 5, "session": 1, "controls": {"embedding": EMBEDDING}},
    "input_hold": {"type": "input", "seq": 6, "session": 1, "hold": {"keys": [0, 0, 0, 1, 0, 0]}},
    "input_prompt": {"type": "input", "seq": 7, "session": 1,
                     "prompt": {"text": "the same street in heavy rain", "mode": "recache", "sink": "keep"}},
    "pause": {"type": "pause", "seq": 8, "session": 1},
    "reset": {"type": "reset", "seq": 9, "session": 1},
    "close": {"type": "close", "seq": 10, "session": 1},
    "stats": {"type": "stats", "seq": 11},
    "ping": {"type": "ping", "seq": 12},
    "bye": {"type": "bye", "seq": 13},
    # daemon -> client
    "opened": {"type": "opened", "re": 2, "session": 1, "epoch": 0, "fps": 16.5, "format": "jpeg", "lookahead": 0.25},
    "ok": {"type": "ok", "re": 8, "session": 1, "op": "pause", "epoch": 0, "paused": True},
    "closed": {"type": "closed", "re": 10, "session": 1, "reason": "client", "stats": {"frames_sent": 300}},
    "error": {"type": "error", "code": "bad_controls", "message": "keys rows have 2 values, the schema has 6",
              "re": 4, "session": 1},
    "error_fatal": {"type": "error", "code": "session_failed", "message": "out of memory", "session": 1,
                    "fatal": True},
    "pong": {"type": "pong", "re": 12, "t": 1764560000.25},
    "shutdown": {"type": "shutdown", "reason": "daemon stopping (SIGTERM)"},
    "stats_reply": {"type": "stats", "re": 11, "sessions": {"1": {"fps": 15.9, "frames_dropped": 0}}},
    "frame_header": {"type": "frame", "session": 1, "epoch": 0, "chunk": 3, "index": 45, "i": 0, "n": 12,
                     "format": "jpeg", "shape": [480, 832, 3], "t_gen": 1764560001.125, "t_send": 1764560001.25,
                     "gen_ms": 312.5, "batch": 1, "input_seq": 4, "input_t": 1764560000.5, "prompt_seq": 0},
    # integer widths, string lengths, nesting and non-ASCII text
    "integers": [0, 127, 128, 255, 256, 65535, 65536, 4294967295, 4294967296, 9007199254740991, -1, -32, -33, -128,
                 -129, -32768, -32769, -2147483648, -2147483649, -9007199254740991],
    "strings": ["", "x" * 31, "y" * 32, "z" * 255, "w" * 256, "fjörður — 雪の村 🌨"],
    "nested": {"a": [[], {}, [None, True, False]], "b": {"c": {"d": [0.5, -0.75]}}},
    "long_array": list(range(20)),
    "bin_sizes": [b"", b"\x00" * 255, b"\x01" * 256],
}


def to_json(value):
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def main() -> None:
    vectors = [{"name": name, "value": to_json(value), "msgpack": msgpack.packb(value, use_bin_type=True).hex()}
               for name, value in MESSAGES.items()]
    header = msgpack.packb(MESSAGES["pong"], use_bin_type=True)
    framed = {"name": "gateway_pong", "header": to_json(MESSAGES["pong"]), "payload": "",
              "message": (struct.pack("<I", len(header)) + header).hex()}
    frame_header = msgpack.packb(MESSAGES["frame_header"], use_bin_type=True)
    payload = bytes.fromhex("ffd8ffe000104a464946")  # the first bytes of a JPEG, as a stand-in payload
    framed_frame = {"name": "gateway_frame", "header": to_json(MESSAGES["frame_header"]), "payload": payload.hex(),
                    "message": (struct.pack("<I", len(frame_header)) + frame_header + payload).hex()}
    OUT.write_text(json.dumps({"protocol": "1.1.0", "messages": vectors, "gateway": [framed, framed_frame]},
                              indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
