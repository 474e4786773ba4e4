"""Turn a session log of the Godot client into a worldsim dataset (docs/DATASET.md) for ``worldsim train``.

    python bridge/godot/tools/import_recording.py session.wslog runs/rec

``WorldsimClient.start_recording(path)`` writes the log: ``worldsim-session-log 1\\n``, then one record per
WebSocket message, ``tag (1 byte: ">" sent by the client, "<" received from the gateway) | u32 little-endian
length | the message``, exactly as it crossed the WebSocket (bridge/PROTOCOL.md §14). GDScript has no .npz writer,
so the frames, the controls the daemon echoed and the prompts are turned into episodes here, by the recorder
``worldsim play --record`` uses (clients/play/recorder.py): same files, same semantics. Every session in the log
becomes episodes of one dataset (a reset starts a new episode). Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from collections.abc import Iterator
from pathlib import Path

import msgpack

from clients.play.recorder import Recorder
from worldsim.client import Frame
from worldsim.serve.gateway import split_message
from worldsim.serve.protocol import Welcome

MAGIC = b"worldsim-session-log 1\n"
SENT, RECEIVED = ord(">"), ord("<")
_RECORD = struct.Struct("<BI")


def read_log(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(tag, message) per record. A record cut short at the end (the game stopped mid-write) ends the log."""
    data = Path(path).read_bytes()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path}: not a worldsim session log (it must start with {MAGIC!r})")
    pos = len(MAGIC)
    while pos + _RECORD.size <= len(data):
        tag, n = _RECORD.unpack_from(data, pos)
        if tag not in (SENT, RECEIVED):
            raise ValueError(f"{path}: record tag 0x{tag:02x} at byte {pos} is neither '>' nor '<'")
        end = pos + _RECORD.size + n
        if end > len(data):
            return
        yield tag, data[pos + _RECORD.size:end]
        pos = end


def import_log(path: str | Path, root: str | Path) -> dict:
    """Write the frames of every session in the log at ``path`` into the dataset at ``root``; returns a summary."""
    welcome: Welcome | None = None
    opens: dict[int, tuple[str, int]] = {}  # seq of an open -> (prompt, seed)
    sessions: dict[int, tuple[str, int]] = {}  # session -> (prompt, seed) of its open
    prompts: dict[int, dict[int, tuple[str, str]]] = {}  # session -> {input seq: (text, mode)}
    recorders: dict[int, Recorder] = {}
    frames = without_controls = 0
    try:
        for tag, raw in read_log(path):
            if tag == SENT:
                msg = msgpack.unpackb(raw, raw=False)
                if msg.get("type") == "open":
                    opens[msg["seq"]] = (msg.get("prompt") or "", msg.get("seed") or 0)
                elif msg.get("type") == "input" and msg.get("prompt"):
                    p = msg["prompt"]
                    prompts.setdefault(msg["session"], {})[msg["seq"]] = (p["text"], p.get("mode") or "soft")
                    if msg["session"] in recorders:
                        recorders[msg["session"]].prompt_sent(msg["seq"], p["text"], p.get("mode") or "soft")
                continue
            header, payload = split_message(raw)
            kind = header.get("type")
            if kind == "welcome":
                welcome = Welcome.from_wire(header)
            elif kind == "opened" and header.get("re") in opens:
                sessions[header["session"]] = opens[header["re"]]
            elif kind == "frame":
                s = header["session"]
                if s not in recorders:
                    if welcome is None or s not in sessions:
                        raise ValueError(f"{path}: a frame of session {s} comes before the welcome or its opened "
                                         "reply (start_recording must be called before connect_to_url and open)")
                    prompt, seed = sessions[s]
                    recorders[s] = Recorder(root, welcome, s, seed, prompt)
                    for seq, (text, mode) in prompts.get(s, {}).items():
                        recorders[s].prompt_sent(seq, text, mode)
                frame = Frame(header, bytes(payload), 0.0)
                without_controls += frame.control is None
                recorders[s].add(frame)
                frames += 1
    finally:
        for r in recorders.values():
            r.close()
    return {"frames": frames, "sessions": sorted(recorders), "frames_without_controls": without_controls,
            "dataset": str(root)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("log", help="session log written by WorldsimClient.start_recording()")
    parser.add_argument("dataset", help="dataset directory (created, or extended if it holds the same stream)")
    args = parser.parse_args(argv)
    try:
        summary = import_log(args.log, args.dataset)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    if summary["frames_without_controls"]:
        print(f"warning: {summary['frames_without_controls']} frames carry no controls (frame 0 of a stream has "
              "none; if most lack them, the session was opened without echo_controls)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
