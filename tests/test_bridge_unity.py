"""The Unity client's engine-free core (bridge/unity/Runtime/Core), compiled with Mono's mcs: golden msgpack bytes,
a whole session through the WebSocket gateway of an in-process daemon, and CaptureWriter's engine captures imported
by `worldsim dataset import` (tests/csharp/ConsoleTest.cs)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_helpers import JsonLines, wait_for
from worldsim.cli import main
from worldsim.client import Client
from worldsim.dataset import load_dataset
from worldsim.serve.protocol import PROTOCOL_VERSION

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bridge" / "unity"
CORE = PACKAGE / "Runtime" / "Core"
INSTALL = "apt-get install mono-mcs mono-runtime"
KEYS, AXES, EMBEDDING = [1, 0, 0, 1, 0, 1], [0.5, -0.25], [0.5, -0.25, 0.125, 0.0, 1.5]
PROMPT, SEED = "a harbour at dawn", 7


@pytest.fixture(scope="module")
def console(tmp_path_factory) -> list[str]:
    """`mono ConsoleTest.exe`, built by mcs from tests/csharp/ConsoleTest.cs and the client's Core sources."""
    mcs, mono = shutil.which("mcs"), shutil.which("mono")
    if mcs is None or mono is None:
        if os.environ.get("CI"):
            pytest.fail(f"Mono's mcs and mono are needed to test the Unity client ({INSTALL})")
        pytest.skip(f"Mono not installed ({INSTALL}) to test the Unity client")
    exe = tmp_path_factory.mktemp("csharp") / "ConsoleTest.exe"
    sources = [ROOT / "tests" / "csharp" / "ConsoleTest.cs", *sorted(CORE.glob("*.cs"))]
    out = subprocess.run([mcs, "-langversion:7.2", "-warnaserror+", "-nologo", f"-out:{exe}", *map(str, sources)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"mcs failed:\n{out.stdout}\n{out.stderr}"
    return [mono, str(exe)]


def test_package_layout():
    """Versions agree with the protocol, and every asset Unity imports from the package has a .meta with its own
    GUID (a package added by git URL is read-only: Unity ignores assets without one). Samples~ is not imported."""
    manifest = json.loads((PACKAGE / "package.json").read_text())
    assert manifest["version"] == PROTOCOL_VERSION and manifest["unity"] == "2021.3"
    assert all((PACKAGE / s["path"]).is_dir() for s in manifest["samples"])
    client = (CORE / "WorldsimClient.cs").read_text()
    assert f'ProtocolVersion = "{PROTOCOL_VERSION}"' in client
    assets = [p for p in PACKAGE.rglob("*") if p.suffix != ".meta" and "Samples~" not in p.relative_to(PACKAGE).parts]
    assert {p.with_name(p.name + ".meta") for p in assets} == {p for p in PACKAGE.rglob("*.meta")}
    guids = [re.search(r"^guid: ([0-9a-f]{32})$", p.with_name(p.name + ".meta").read_text(), re.M).group(1)
             for p in assets]
    assert len(set(guids)) == len(guids)
    core = json.loads((CORE / "Worldsim.Core.asmdef").read_text())
    assert core["noEngineReferences"] and not any("UnityEngine" in p.read_text() for p in CORE.glob("*.cs"))


def test_codec_matches_the_golden_bytes(console):
    out = subprocess.run([*console, "golden", str(ROOT / "bridge" / "golden" / "messages.json")],
                         capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    failed = [line for line in lines if not line["ok"]]
    assert out.returncode == 0 and not failed, f"{failed}\n{out.stderr}"
    golden = json.loads((ROOT / "bridge" / "golden" / "messages.json").read_text())
    names = {e["name"] for e in golden["messages"]}
    for check in ("encode", "decode"):
        assert {line["name"] for line in lines if line["check"] == check} == names
    assert {line["name"] for line in lines if line["check"] == "split"} == {e["name"] for e in golden["gateway"]}
    assert sum(line["check"] == "refused" for line in lines) >= 12
    assert sum(line["check"] == "split_refused" for line in lines) == 4
    assert sum(line["check"] == "json_refused" for line in lines) == 14
    assert {"json_parsed", "json_nesting"} <= {line["check"] for line in lines}


def test_live_session_through_the_gateway(console, backend, make_daemon, make_gateway, tmp_path, caplog):
    """Handshake with a token, a JPEG session with controls, an embedding and a prompt switch, errors, heartbeats,
    an rgb24 session with a reset, a clean close, then the daemon's shutdown; checked from both ends."""
    d = make_daemon(backend, heartbeat_s=0.4)
    gw = make_gateway(d, token="unity-secret")
    csv = lambda values: ",".join(map(str, values))  # noqa: E731
    cmd = [*console, "live", gw.url, "--token", "unity-secret", "--prompt", PROMPT, "--seed", str(SEED),
           "--keys", csv(KEYS), "--axes", csv(AXES), "--embedding", csv(EMBEDDING), "--frames", "30",
           "--dump", str(tmp_path)]
    with caplog.at_level(logging.INFO, logger="worldsim.serve"):
        checks = JsonLines(cmd, key="check", failed=lambda m: not m["ok"])
        try:
            assert "is the token right" in checks.until("token_required")["error"]
            welcome = checks.until("handshake")
            h, w = welcome["height"], welcome["width"]
            assert welcome["embedding_dim"] == len(EMBEDDING) and len(welcome["keys"]) == len(KEYS)
            sent = checks.until("inputs_sent")
            assert len(checks.named("local_refusal")) == 5
            frames = checks.until("frames_jpeg")
            assert frames["count"] >= 30 and frames["last_prompt_seq"] == sent["prompt_seq"]
            echo = checks.until("echoed_controls")  # the last frame: made after every input, so from the held state
            assert echo["keys"] == KEYS
            assert np.allclose(echo["embedding"], EMBEDDING)
            assert checks.until("error_for_input")["message"]["code"] == "unknown_session"
            assert checks.until("error_for_request")["code"] == "unknown_session"
            assert checks.until("heartbeat")["pings"] >= 2
            stats = checks.until("close")["stats"]
            assert stats["inputs"] == 3 and stats["prompt_switches"] == 1 and stats["frames_sent"] >= 30
            checks.until("frames_rgb24")
            checks.until("reset")
            checks.until("disposed")
            hellos = lambda: [r.fields["client"] for r in caplog.records  # noqa: E731
                              if r.getMessage() == "client_hello"]
            [tag] = [t for t in hellos() if t.startswith("unity-console-test#")]
            gone = lambda: [r.fields for r in caplog.records if r.getMessage() == "client_gone"]  # noqa: E731
            assert wait_for(lambda: {"client": tag, "reason": "bye", "sessions": []} in gone(), 5)
            assert not d.sessions

            checks.until("ready_for_shutdown")
            d.stop("test over")
            assert checks.until("shutdown")["reason"] == "test over"
            checks.until("done")
            assert checks.proc.wait(30) == 0, checks.proc.stderr.read()
        finally:
            checks.kill()
    # The client without the token never got past the gateway's HTTP check.
    assert sorted(t.split("#")[0] for t in hellos()) == ["unity-console-shutdown", "unity-console-test"]
    opened = [r.fields for r in caplog.records if r.getMessage() == "session_open"]
    assert [(o["seed"], o["format"]) for o in opened] == [(SEED, "jpeg"), (SEED, "rgb24")]
    relayed = [r.fields["frames_sent"] for r in caplog.records if r.getMessage() == "ws_closed"]
    assert sum(relayed) >= frames["count"] + 12  # the gateway sent at least what the client counted

    # What the C# client received is what the daemon made: a decodable JPEG of the welcome's size, and the rgb24
    # stream's first frame byte for byte as a Python client gets it (same prompt and seed).
    assert np.asarray(Image.open(io.BytesIO((tmp_path / "last.jpg").read_bytes()))).shape == (h, w, 3)
    first = (tmp_path / "first.rgb").read_bytes()
    d2 = make_daemon(backend)
    with Client(d2.endpoint) as c:
        s = c.open(PROMPT, seed=SEED, fps=0)
        frame = c.frame(30)
        assert frame is not None and frame.session == s and frame.index == 0
        assert bytes(frame.payload) == first


COURTYARD, CELLAR = "a castle courtyard", 'a "dark" cellar \u2014 na\u00efve'
CAPTURE_ENGINE = 'unity-console-test "Mono" C:\\games \u00fc'


def pattern(episode: int, frame: int, channels: int = 3) -> np.ndarray:
    """The 24x16 test image ConsoleTest.cs writes as a PNG: (x*17 + y*29 + frame*41 + episode*67 + channel*85) mod
    256."""
    y, x, c = np.indices((16, 24, channels))
    return ((x * 17 + y * 29 + frame * 41 + episode * 67 + c * 85) % 256).astype(np.uint8)


def test_capture_writer_output_imports_as_episodes(console, tmp_path, capsys):
    """CaptureWriter (run under Mono as a game would call it) writes a capture that `worldsim dataset import` turns
    into the frames, controls, gaps and prompts the game gave it; bad calls are refused with the problem named."""
    jpegs = []
    for i in range(2):  # JPEG frames come from these files; the writer files their bytes as they are
        jpegs.append(tmp_path / f"in_{i}.jpg")
        pixels = np.random.default_rng(i).integers(0, 256, (16, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(jpegs[-1], quality=90)
    cap = tmp_path / "capture"
    out = subprocess.run([*console, "capture", str(cap), "--jpegs", ",".join(map(str, jpegs))],
                         capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    failed = [line for line in lines if not line["ok"]]
    assert out.returncode == 0 and not failed and lines[-1]["check"] == "capture_done", f"{failed}\n{out.stderr}"
    assert [line["name"] for line in lines if line["check"] == "capture_refused"] == [
        "episode before begin", "fps NaN", "negative embedding width", "frame before an episode", "keys width",
        "NaN axis", "infinite embedding", "frame size", "PNG bytes as jpg", "embedding without keys and axes",
        "unknown extension", "missing embedding", "JPEG bytes as png", "episode after dispose",
        "another frames_per_latent", "another fps", "another schema"]
    assert [line["lines"] for line in lines if line["check"] == "capture_flushed"] == [1, 3]  # read while open

    # On disk: the first writer's capture.json, only the frames written, lines as the layout says.
    assert json.loads((cap / "capture.json").read_text()) == {
        "format": "worldsim-capture", "version": 1, "fps": 16, "engine": CAPTURE_ENGINE,
        "control": {"keys": ["W", "A", "S", "D"], "axes": ["mouse_dx", "mouse_dy"], "embedding_dim": 3,
                    "frames_per_latent": 4}}
    assert sorted(p.name for p in cap.iterdir()) == ["capture.json", "episode_000000", "episode_000001",
                                                     "episode_000002"]
    assert sorted(p.name for p in (cap / "episode_000000").iterdir()) == [
        "000000.png", "000001.png", "000011.png", "000012.png", "000013.png", "frames.jsonl"]
    rows = [json.loads(line) for line in (cap / "episode_000000" / "frames.jsonl").read_text().splitlines()]
    assert rows[0] == {"image": "000000.png", "prompt": COURTYARD}  # the first frame's row is left out
    assert rows[1] == {"image": "000001.png", "keys": [1, 0, 0, 1], "axes": [0.1, -0.03],  # no repeated prompt
                       "embedding": [0.25, -1e-07, 3e09]}
    assert rows[2]["index"] == 11 and rows[3] == {"image": "000012.png"}

    assert main(["dataset", "import", str(cap), str(tmp_path / "data"), "--quiet"]) == 0
    e0, e1, e2 = load_dataset(tmp_path / "data")
    assert [e.meta["capture"] for e in (e0, e1, e2)] == ["episode_000000", "episode_000001", "episode_000002"]
    assert {e.meta["engine"] for e in (e0, e1, e2)} == {CAPTURE_ENGINE}  # the appending writer kept capture.json

    assert np.array_equal(e0.frames, np.stack([pattern(0, i) for i in (0, 1, 11, 12, 13)]))
    assert e0.frame_index.tolist() == [0, 1, 11, 12, 13]  # a skipped step and seven refused calls are the gap
    assert e0.control_present.tolist() == [False, True, True, False, True]
    assert e0.keys.tolist() == [[0, 0, 0, 0], [1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]
    f32 = lambda *v: np.array(v, np.float32)  # noqa: E731
    assert np.array_equal(e0.axes, np.stack([f32(0, 0), f32(0.1, -0.03), f32(0, 0), f32(0, 0), f32(1, -1)]))
    assert np.array_equal(e0.embedding[1], f32(0.25, -1e-7, 3e9)) and e0.embedding[4].tolist() == [1, 1, 1]
    assert [(p["from_frame"], p["text"]) for p in e0.prompts] == [(0, COURTYARD), (2, CELLAR), (4, COURTYARD)]

    with Image.open(jpegs[0]) as a, Image.open(jpegs[1]) as b:
        decoded = [np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))]
    assert np.array_equal(e1.frames, np.stack([decoded[0], pattern(1, 1, 4)[..., :3], decoded[1]]))  # alpha dropped
    assert e1.frame_index.tolist() == [0, 1, 3] and e1.control_present.tolist() == [False, True, True]
    assert e1.axes[1].tolist() == [0.25, 0.75] and e1.embedding[2].tolist() == [-1, -2, -3]

    assert np.array_equal(e2.frames, np.stack([pattern(2, 0), pattern(2, 1)]))
    assert e2.prompts[0]["text"] == "a harbour" and e2.keys[1].tolist() == [0, 0, 0, 1]
    capsys.readouterr()
    assert main(["dataset", "info", str(tmp_path / "data")]) == 0
    info = capsys.readouterr().out
    assert "24x16 at 16 fps" in info and "3 episode(s), 10 frames" in info and CELLAR in info
