"""The Godot 4 client (bridge/godot): what can be checked without a Godot binary.

Every .gd file parses with gdtoolkit's Godot 4 grammar, passes gdlint's default rules and is gdformat-clean; the
project, plugin and scene files reference files that exist; the client's protocol constants match the daemon's; and
the session-log importer (tools/import_recording.py) turns a log of a live gateway session into the dataset
`worldsim play --record` would write. Nothing here runs GDScript: msgpack.gd is checked against
bridge/golden/messages.json only by golden/golden_test.gd inside Godot (see bridge/godot/README.md).
"""

from __future__ import annotations

import configparser
import contextlib
import json
import os
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from worldsim.dataset import load_dataset
from worldsim.serve.gateway import split_message
from worldsim.serve.protocol import CLIENT_TYPES, PROTOCOL_VERSION

ROOT = Path(__file__).resolve().parents[1]
GODOT = ROOT / "bridge" / "godot"
ADDON = GODOT / "addons" / "worldsim"
IMPORTER = GODOT / "tools" / "import_recording.py"
GDSCRIPTS = sorted(GODOT.rglob("*.gd"))
GDTOOLKIT = "gdtoolkit>=4,<5"


def need_gdtoolkit() -> None:
    """Skip without gdtoolkit 4 (the Godot 4 grammar); fail under CI, where it is a declared test dependency."""
    try:
        from importlib.metadata import version

        import gdtoolkit  # noqa: F401

        major = int(version("gdtoolkit").split(".")[0])
    except ImportError:
        major = None
    if major is None or major < 4:
        why = f"gdtoolkit 4 is needed to parse and lint the GDScript files (pip install \"{GDTOOLKIT}\")"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def res_path(res: str) -> Path:
    assert res.startswith("res://"), res
    return GODOT / res.removeprefix("res://")


# ---- GDScript: parse, lint, format ---------------------------------------------------------------------------------

def test_the_addon_sample_and_golden_test_are_all_there():
    names = {p.relative_to(GODOT).as_posix() for p in GDSCRIPTS}
    assert names >= {"addons/worldsim/msgpack.gd", "addons/worldsim/plugin.gd", "addons/worldsim/worldsim_client.gd",
                     "samples/sample.gd", "golden/golden_test.gd"}


@pytest.mark.parametrize("script", GDSCRIPTS, ids=lambda p: p.relative_to(GODOT).as_posix())
def test_gdscript_parses_lints_and_is_formatted(script):
    need_gdtoolkit()
    from gdtoolkit.formatter import format_code
    from gdtoolkit.linter import DEFAULT_CONFIG, lint_code
    from gdtoolkit.parser import parser

    code = script.read_text()
    parser.parse(code)  # raises on a syntax error
    problems = lint_code(code, DEFAULT_CONFIG)
    assert not problems, "\n".join(f"{script.name}:{p.line}: {p.description} ({p.name})" for p in problems)
    assert format_code(code, max_line_length=100) == code, f"{script.name} is not gdformat-clean (run gdformat)"


def test_gdlint_catches_a_broken_file():
    """The checks above are live: a syntax error, a lint problem and unformatted code are all reported."""
    need_gdtoolkit()
    from gdtoolkit.formatter import format_code
    from gdtoolkit.linter import DEFAULT_CONFIG, lint_code
    from gdtoolkit.parser import parser
    from lark.exceptions import UnexpectedInput

    with pytest.raises(UnexpectedInput):
        parser.parse("func broken(:\n\tpass\n")
    assert lint_code("extends Node\n\n\nfunc BadName() -> void:\n\tpass\n", DEFAULT_CONFIG)
    assert format_code("extends Node\nfunc f():\n    return 1\n", max_line_length=100) != \
        "extends Node\nfunc f():\n    return 1\n"


# ---- project, plugin and scene files -------------------------------------------------------------------------------

def godot_cfg(path: Path) -> configparser.ConfigParser:
    """A Godot ConfigFile (project.godot, plugin.cfg): INI sections, values as Godot literals (quotes kept).
    Keys before the first section (project.godot's config_version) go to a [top] section."""
    cfg = configparser.ConfigParser(interpolation=None, comment_prefixes=(";",), delimiters=("=",), strict=True)
    cfg.optionxform = str
    cfg.read_string("[top]\n" + path.read_text())
    return cfg


def unquote(value: str) -> str:
    assert value.startswith('"') and value.endswith('"'), value
    return value[1:-1]


def test_plugin_cfg_names_its_script():
    plugin = godot_cfg(ADDON / "plugin.cfg")["plugin"]
    for key in ("name", "description", "author", "version", "script"):
        assert unquote(plugin[key]), key
    script = ADDON / unquote(plugin["script"])
    code = script.read_text()
    assert code.startswith("@tool\nextends EditorPlugin\n")
    client = re.search(r'path_join\("([^"]+)"\)', code).group(1)  # the autoload the plugin adds
    assert (ADDON / client).is_file()
    assert "class_name WorldsimClient\nextends Node\n" in (ADDON / client).read_text()


def test_project_godot_runs_the_sample():
    project = godot_cfg(GODOT / "project.godot")
    assert project["top"]["config_version"] == "5"
    assert res_path(unquote(project["application"]["run/main_scene"])).is_file()


def parse_scene(path: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(ext_resource id -> res:// path, nodes as header attributes plus their `script` line) of a text scene."""
    text = path.read_text()
    assert re.match(r"\[gd_scene (load_steps=\d+ )?format=3", text), f"{path.name}: not a Godot 4 text scene"
    resources, nodes = {}, []
    for header, body in re.findall(r"^\[(.+?)\]\n((?:(?!\[).*\n?)*)", text, re.M):
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', header))
        if header.startswith("ext_resource"):
            assert attrs["id"] not in resources, f"{path.name}: ext_resource id {attrs['id']} twice"
            resources[attrs["id"]] = attrs["path"]
        elif header.startswith("node"):
            script = re.search(r'^script = ExtResource\("([^"]+)"\)', body, re.M)
            nodes.append({**attrs, "script": script.group(1) if script else ""})
    steps = re.match(r"\[gd_scene load_steps=(\d+)", text)
    if steps:
        assert int(steps.group(1)) == len(resources) + 1, f"{path.name}: load_steps"
    return resources, nodes


@pytest.mark.parametrize("scene", sorted(GODOT.rglob("*.tscn")), ids=lambda p: p.name)
def test_scenes_reference_existing_files_and_nodes(scene):
    resources, nodes = parse_scene(scene)
    assert resources and nodes
    for res in resources.values():
        assert res_path(res).is_file(), f"{scene.name}: {res} does not exist"
    used = set(re.findall(r'ExtResource\("([^"]+)"\)', scene.read_text()))
    assert used == set(resources), f"{scene.name}: declared {sorted(resources)}, used {sorted(used)}"
    paths = {}  # node path -> node
    for i, node in enumerate(nodes):
        if i == 0:
            assert "parent" not in node, "the first node is the root"
            path = "."
        else:
            assert node["parent"] in paths, f"{scene.name}: {node['name']}'s parent {node['parent']} is no node"
            path = node["name"] if node["parent"] == "." else f"{node['parent']}/{node['name']}"
        paths[path] = node
    code = res_path(resources[nodes[0]["script"]]).read_text()  # the nodes the root's script looks up exist
    for ref in re.findall(r'(?<!["\w])\$([A-Za-z_][\w/]*)', code):
        assert ref in paths, f"{scene.name}'s script uses ${ref}, which the scene does not have"
    consts = dict(re.findall(r'^const (\w+) := preload\("([^"]+)"\)', code, re.M))
    for kind, ref in re.findall(r"^@onready var \w+: (\w+) = \$([\w/]+)", code, re.M):
        node = paths[ref]  # typed as the scene's node class, or as the script it carries
        carries = kind in consts and consts[kind] == resources.get(node["script"])
        assert kind == node["type"] or carries, f"${ref} is no {kind}"


def test_preloaded_files_exist():
    for script in GDSCRIPTS:
        for ref in re.findall(r'preload\("([^"]+)"\)', script.read_text()):
            target = res_path(ref) if ref.startswith("res://") else script.parent / ref
            assert target.is_file(), f"{script.name} preloads {ref}, which does not exist"


def test_golden_test_reads_the_repository_golden_file():
    """golden_test.gd resolves the vectors relative to the Godot project folder, so none are copied into it."""
    code = (GODOT / "golden" / "golden_test.gd").read_text()
    relative = re.search(r'project\.path_join\("([^"]+)"\)', code).group(1)
    assert (GODOT / relative).resolve() == ROOT / "bridge" / "golden" / "messages.json"
    assert not list(GODOT.rglob("messages.json"))


def load_importer():
    sys.path.insert(0, str(IMPORTER.parent))
    try:
        import import_recording
    finally:
        sys.path.pop(0)
    return import_recording


# ---- protocol facts the GDScript client hard-codes -----------------------------------------------------------------

CLIENT_GD = (ADDON / "worldsim_client.gd").read_text()


def gd_const(name: str) -> str:
    return re.search(rf"^const {name} := (.+)$", CLIENT_GD, re.M).group(1)


def test_client_constants_match_the_daemon_and_the_importer():
    assert json.loads(gd_const("PROTOCOL_VERSION")) == PROTOCOL_VERSION
    answered = json.loads(gd_const("ANSWERED"))
    assert set(answered) == set(CLIENT_TYPES) - {"input", "bye"}
    sent = set(re.findall(r'(?:_request\(|send_message\(\{"type": )\s*"(\w+)"', CLIENT_GD))
    assert sent == set(CLIENT_TYPES), "the client sends every request type of protocol v1"
    import_recording = load_importer()
    assert json.loads(gd_const("LOG_MAGIC")).encode() == import_recording.MAGIC
    assert int(gd_const("LOG_SENT"), 16) == import_recording.SENT
    assert int(gd_const("LOG_RECEIVED"), 16) == import_recording.RECEIVED


# ---- session logs -> dataset ---------------------------------------------------------------------------------------

class LoggingPeer:
    """A gateway client that logs every message as WorldsimClient.start_recording does: the magic line, then
    tag | u32 little-endian length | the message as it crossed the WebSocket."""

    def __init__(self, url: str, log: Path):
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(url, max_size=None, compression=None, open_timeout=10))
        self.log = self._stack.enter_context(log.open("wb"))
        self.log.write(b"worldsim-session-log 1\n")
        self.seq = 0

    def _record(self, tag: bytes, data: bytes) -> None:
        self.log.write(tag + struct.pack("<I", len(data)) + data)

    def send(self, kind: str, **fields) -> int:
        self.seq += 1
        raw = msgpack.packb({"type": kind, "seq": self.seq, **fields}, use_bin_type=True)
        self._record(b">", raw)
        self.ws.send(raw)
        return self.seq

    def recv(self, timeout: float) -> tuple[dict, bytes]:
        data = self.ws.recv(timeout)
        self._record(b"<", data)
        header, payload = split_message(data)
        return header, bytes(payload)

    def reply(self, seq: int, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            header, _ = self.recv(deadline - time.monotonic())
            if header.get("re") == seq:
                return header

    def close(self) -> None:
        self.send("bye")
        self._stack.close()


def test_session_log_becomes_the_dataset_play_would_record(backend, make_daemon, make_gateway, tmp_path):
    """A live session through the gateway, logged as the Godot client logs it (held controls, an embedding, a prompt
    switch, a reset), imported with the CLI: one episode per epoch, every frame, the controls the daemon echoed and
    the prompts in effect."""
    daemon = make_daemon(backend)
    log = tmp_path / "session.wslog"
    peer = LoggingPeer(make_gateway(daemon).url, log)
    keys, axes, embedding = [1, 0, 1, 0, 0, 0], [0.25, -0.5], [0.5, -0.25, 0.125, 0.0, 1.5]
    frames: list[dict] = []
    try:
        welcome = peer.reply(peer.send("hello", protocol=PROTOCOL_VERSION, client="godot-test"))
        assert welcome["control"]["embedding_dim"] == len(embedding)
        session = peer.reply(peer.send("open", prompt="a harbour", seed=3, fps=0, echo_controls=True))["session"]
        peer.send("input", session=session, hold={"keys": keys, "axes": axes,
                                                  "embedding": struct.pack("<5f", *embedding)})
        deadline, switch, reset_seq = time.monotonic() + 60, None, None
        while time.monotonic() < deadline:
            header, _ = peer.recv(deadline - time.monotonic())
            if header.get("type") != "frame":
                continue
            frames.append(header)
            if switch is None:  # after the first chunk, which keeps the open prompt
                switch = peer.send("input", session=session, prompt={"text": "a desert", "mode": "recache"})
            held = header.get("control", {}).get("keys") == keys and header["prompt_seq"] == switch
            if reset_seq is None and held:
                reset_seq = peer.send("reset", session=session)
            if header["epoch"] == 1 and header["index"] >= 4:
                break
        assert reset_seq is not None and frames[-1]["epoch"] == 1, "the hold, the switch or the reset never showed"
        stats = peer.reply(peer.send("close", session=session))["stats"]
    finally:
        peer.close()

    out = subprocess.run([sys.executable, str(IMPORTER), str(log), str(tmp_path / "rec")], capture_output=True,
                         text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    logged = frames  # in arrival order: every frame of epoch 0, then of epoch 1
    summary = json.loads(out.stdout)
    assert summary["frames"] >= len(logged) and summary["sessions"] == [session]
    assert stats["frames_sent"] >= summary["frames"]  # the daemon sent every frame the dataset holds

    episodes = load_dataset(tmp_path / "rec")
    assert [ep.meta["epoch"] for ep in episodes] == [0, 1]
    said = {0: ("a harbour", "open"), switch: ("a desert", "recache")}
    for ep in episodes:
        mine = [f for f in logged if f["epoch"] == ep.meta["epoch"]]
        assert list(ep.frame_index[:len(mine)]) == [f["index"] for f in mine]
        changes = [f for i, f in enumerate(mine) if i == 0 or f["prompt_seq"] != mine[i - 1]["prompt_seq"]]
        expected = [{"from_frame": f["index"], "chunk": f["chunk"], "text": said[f["prompt_seq"]][0],
                     "mode": said[f["prompt_seq"]][1]} for f in changes]
        assert ep.prompts[:len(expected)] == expected
        for i, f in enumerate(mine):
            assert ep.control_present[i] == ("control" in f)
            if "control" in f:
                np.testing.assert_array_equal(ep.keys[i], f["control"]["keys"])
                np.testing.assert_array_equal(ep.axes[i], np.float32(f["control"]["axes"]))
                np.testing.assert_array_equal(ep.embedding[i], np.frombuffer(f["control"]["embedding"], "<f4"))
        assert ep.frames.shape[1:] == (welcome["video"]["height"], welcome["video"]["width"], 3)
        assert ep.meta["seed"] == 3 and ep.meta["session"] == session
    held = [i for i, f in enumerate(logged) if f.get("control", {}).get("keys") == keys and f["epoch"] == 0]
    np.testing.assert_array_equal(episodes[0].embedding[held[0]], np.float32(embedding))
    assert [p["text"] for p in episodes[0].prompts] == ["a harbour", "a desert"]
    assert [p["text"] for p in episodes[1].prompts] == ["a desert"]  # a reset keeps the current prompt


def synthetic_log(path: Path, records: list[tuple[bytes, bytes]]) -> None:
    path.write_bytes(b"worldsim-session-log 1\n" + b"".join(t + struct.pack("<I", len(d)) + d for t, d in records))


def test_importer_refuses_what_is_not_a_session_log(tmp_path):
    import_recording = load_importer()
    other = tmp_path / "other.bin"
    other.write_bytes(b"PK\x03\x04 not a log")
    with pytest.raises(ValueError, match="not a worldsim session log"):
        import_recording.import_log(other, tmp_path / "rec")
    bad_tag = tmp_path / "bad.wslog"
    synthetic_log(bad_tag, [(b"?", b"\x80")])
    with pytest.raises(ValueError, match="record tag 0x3f at byte 23"):
        import_recording.import_log(bad_tag, tmp_path / "rec")
    frame = msgpack.packb({"type": "frame", "session": 9, "epoch": 0}, use_bin_type=True)
    early = tmp_path / "early.wslog"
    synthetic_log(early, [(b"<", struct.pack("<I", len(frame)) + frame)])
    with pytest.raises(ValueError, match="session 9 comes before the welcome"):
        import_recording.import_log(early, tmp_path / "rec")
    cut = tmp_path / "cut.wslog"  # a game that stopped mid-record: the partial record is ignored
    synthetic_log(cut, [(b">", msgpack.packb({"type": "ping", "seq": 1}))])
    cut.write_bytes(cut.read_bytes() + b"<\xff\x00\x00\x00partial")
    assert list(import_recording.read_log(cut)) == [(ord(">"), msgpack.packb({"type": "ping", "seq": 1}))]
    assert import_recording.main([str(other), str(tmp_path / "rec")]) == 1
