"""bridge/golden/messages.json: protocol v1 messages and their exact bytes, checked against every codec that runs
here (Python's, the browser client's under Node). Engine bridges check the same file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from worldsim.serve.gateway import frame_message, split_message
from worldsim.serve.protocol import pack

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "bridge" / "golden" / "messages.json"


def from_json(v):
    if isinstance(v, dict):
        return bytes.fromhex(v["$bin"]) if set(v) == {"$bin"} else {k: from_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_json(x) for x in v]
    return v


def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_python_codec_matches_the_golden_bytes():
    g = golden()
    assert g["protocol"] == "1.1.0" and len(g["messages"]) >= 20
    for entry in g["messages"]:
        value, raw = from_json(entry["value"]), bytes.fromhex(entry["msgpack"])
        assert pack(value) == raw, entry["name"]
        assert msgpack.unpackb(raw, raw=False) == value, entry["name"]
    for entry in g["gateway"]:
        header, payload = from_json(entry["header"]), bytes.fromhex(entry["payload"])
        message = bytes.fromhex(entry["message"])
        assert frame_message(pack(header), payload) == message, entry["name"]
        assert split_message(message) == (header, payload), entry["name"]


def test_golden_file_is_what_the_generator_writes(tmp_path, monkeypatch):
    sys.path.insert(0, str(GOLDEN.parent))
    try:
        import generate
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(generate, "OUT", tmp_path / "messages.json")
    generate.main()
    assert (tmp_path / "messages.json").read_text() == GOLDEN.read_text()


def test_browser_codec_matches_the_golden_bytes():
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("Node.js is needed to check the browser client's codec (apt-get install nodejs)")
        pytest.skip("Node.js not installed (apt-get install nodejs) to check the browser client's codec")
    out = subprocess.run([node, str(ROOT / "tests" / "js" / "check_golden.cjs")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok:")
