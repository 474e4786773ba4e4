"""The Node.js client (bridge/node): golden msgpack bytes, a live session and CURVE against an in-process daemon."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serve_helpers import JsonLines, wait_for

from worldsim.serve.protocol import PROTOCOL_VERSION

NODE_DIR = Path(__file__).resolve().parent.parent / "bridge" / "node"
INSTALL = "Node.js >= 18 and npm (apt-get install nodejs npm)"


def missing(why: str):
    if os.environ.get("CI"):
        pytest.fail(f"{why}: the Node.js client's tests need {INSTALL}")
    pytest.skip(f"{why}; install {INSTALL} to test the Node.js client")


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, after `npm ci` installed bridge/node's locked dependencies (once per module)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        missing("node or npm is not installed")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 18:
        missing(f"node is {version}")
    out = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_DIR,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"npm ci in {NODE_DIR} failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return node


class NodeScript(JsonLines):
    """test/live.js, reporting one JSON line per event ("fail" lines fail the test)."""

    def __init__(self, node: str, *args: str):
        super().__init__([node, "test/live.js", *args], cwd=NODE_DIR, key="event",
                         failed=lambda m: m["event"] == "fail")

    def finish(self, timeout: float = 30) -> None:
        assert self.until("done")
        assert self.proc.wait(timeout) == 0, self.proc.stderr.read()


def test_codec_matches_the_golden_bytes(node):
    out = subprocess.run([node, "check_golden.js"], cwd=NODE_DIR, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok: ")


def test_live_session(node, backend, make_daemon):
    """Handshake, echoed controls and embedding, prompt switch, >= 30 rgb24 frames, refusals, heartbeats over a
    quiet spell longer than the idle timeout, bye, close and shutdown: checked in the script's lines and in the
    daemon (its clients, the session's stats) while the script holds."""
    d = make_daemon(backend, idle_timeout_s=2.0, heartbeat_s=0.5)
    script = NodeScript(node, d.endpoint)
    try:
        welcome = script.until("welcome")
        assert welcome["protocol"] == PROTOCOL_VERSION and welcome["heartbeat_s"] == 0.5
        video, control = welcome["video"], welcome["control"]
        assert control["keys"] == ["W", "A", "S", "D", "Space", "Shift"] and control["embedding_dim"] == 5
        session = script.until("opened")["session"]

        echo = script.until("controls_echo")
        assert echo["keys"] == [1, 0, 0, 0, 0, 1] and echo["axes"] == [0.25, -0.5] and echo["input_t"] == 12.5
        echo = script.until("embedding_echo")
        assert echo["embedding"] == [0.5, -0.25, 0.125, 0, 1.5] and echo["keys"] == [1, 0, 0, 0, 0, 1]
        script.until("prompt_switched")
        frames = script.until("frames")
        assert frames["count"] >= 30 and frames["right_size"] == frames["count"] and frames["sessions"] == [session]
        assert frames["first"] == ["rgb24", [video["height"], video["width"], 3], video["height"] * video["width"] * 3]

        script.until("invalid")
        refused = {r["what"]: r for r in script.named("refused")}
        assert refused["hello 2.0.0"]["code"] == "version_mismatch"
        assert refused["close 999"]["code"] == "unknown_session"
        assert refused["open jpeg_quality 0"]["code"] == "bad_field"
        assert refused["input of 2 keys"]["code"] == "bad_controls"
        assert refused["input of 2 keys"]["re"] == refused["input of 2 keys"]["seq"]
        assert all(isinstance(r["re"], int) for r in refused.values())

        quiet = script.until("after_quiet", timeout=30)
        assert quiet["quiet_s"] > d.limits.idle_timeout_s and quiet["prompt_switches"] == 1

        script.until("holding")
        # The daemon's side: only this client is left (the other said bye), and the session saw the inputs.
        assert wait_for(lambda: [c.name for c in d.clients.values()] == ["node-live-test"], 5), d.clients
        assert list(d.sessions) == [session]
        report = d.sessions[session].report()
        assert report["inputs"] >= 3 and report["prompt_switches"] == 1 and report["frames_sent"] >= 30
        script.proc.stdin.write("go\n")
        script.proc.stdin.flush()

        closed = script.until("closed")
        assert closed["reason"] == "client" and closed["session"] == session and closed["frames_sent"] >= 30
        assert wait_for(lambda: not d.sessions, 5)
        d.stop("test over")
        assert script.until("shutdown") == {"event": "shutdown", "reason": "test over", "error": "ConnectionLost"}
        script.finish()
    finally:
        script.kill()


def test_curve(node, backend, make_daemon, tmp_path, caplog):
    """Keys made by `worldsim keys`: the client with its key pair gets JPEG frames, one with another key no welcome."""
    keys = tmp_path / "keys"
    subprocess.run([sys.executable, "-m", "worldsim", "keys", str(keys)], check=True, capture_output=True, timeout=60)
    d = make_daemon(backend, keys_dir=str(keys))
    with caplog.at_level(logging.INFO, logger="worldsim.serve"):
        script = NodeScript(node, d.endpoint, "--keys", str(keys))
        try:
            got = script.until("curve_frames")
            assert got["count"] == 5 and got["jpeg"] == 5
            assert script.until("curve_refused")["error"] == "ConnectionLost"
            script.finish()
        finally:
            script.kill()
    hellos = [r.fields["client"] for r in caplog.records if r.getMessage() == "client_hello"]
    assert len(hellos) == 1 and hellos[0].startswith("node-live-curve#")
