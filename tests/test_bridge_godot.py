"""The Godot 4 client (bridge/godot): what can be checked without a Godot binary.

Every .gd file parses with gdtoolkit's Godot 4 grammar, passes gdlint's default rules and is gdformat-clean; the
project, plugin and scene files reference files that exist; the client's protocol constants match the daemon's; and
the capture writer's format facts (file and folder names, the fields of capture.json and of a frames.jsonl line),
read from capture_writer.gd's source, are those `worldsim dataset import` reads. Nothing here runs GDScript: the
capture test lays a capture out in Python by the writer's names and rules, and msgpack.gd is checked against
bridge/golden/messages.json only by golden/golden_test.gd inside Godot (see bridge/godot/README.md).
"""

from __future__ import annotations

import configparser
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worldsim.cli import main
from worldsim.dataset import capture, load_dataset, read_info
from worldsim.serve.protocol import CLIENT_TYPES, PROTOCOL_VERSION

ROOT = Path(__file__).resolve().parents[1]
GODOT = ROOT / "bridge" / "godot"
ADDON = GODOT / "addons" / "worldsim"
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
                     "addons/worldsim/capture_writer.gd", "samples/sample.gd", "samples/capture_sample.gd",
                     "golden/golden_test.gd"}


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


# ---- protocol facts the GDScript client hard-codes -----------------------------------------------------------------

CLIENT_GD = (ADDON / "worldsim_client.gd").read_text()
WRITER_GD = (ADDON / "capture_writer.gd").read_text()


def gd_const(code: str, name: str) -> str:
    """The literal a top-level `const NAME := literal` line of ``code`` assigns."""
    found = re.search(rf"^const {name} := (.+)$", code, re.M)
    assert found, f"no const {name}"
    return found.group(1)


def test_client_constants_match_the_daemon():
    assert json.loads(gd_const(CLIENT_GD, "PROTOCOL_VERSION")) == PROTOCOL_VERSION
    answered = json.loads(gd_const(CLIENT_GD, "ANSWERED"))
    assert set(answered) == set(CLIENT_TYPES) - {"input", "bye"}
    sent = set(re.findall(r'(?:_request\(|send_message\(\{"type": )\s*"(\w+)"', CLIENT_GD))
    assert sent == set(CLIENT_TYPES), "the client sends every request type of protocol v1"


# ---- the capture writer's format against the importer (worldsim.dataset.capture) ----------------------------------

INFO_FIELDS = {"format", "version", "control", "fps", "engine"}  # capture.json, docs/DATASET.md
CONTROL_FIELDS = {"keys", "axes", "embedding_dim", "frames_per_latent"}


def writer_const(name: str):
    return json.loads(gd_const(WRITER_GD, name))


def written_keys(function: str) -> set[str]:
    """The dictionary keys one function of capture_writer.gd writes: `{"key": ...}` literals and `line["key"] =`.
    A function runs to the two blank lines gdformat puts before the next one (the files are gdformat-clean)."""
    body = re.search(rf"^func {function}\(.*?(?=\n\n\n|\Z)", WRITER_GD, re.M | re.S)
    assert body, f"capture_writer.gd has no func {function}"
    return {a or b for a, b in re.findall(r'"(\w+)": |\bline\["(\w+)"\] =', body.group(0))}


def test_capture_writer_declares_the_importers_format():
    """The facts the GDScript writer hard-codes, read from its source, equal the importer's."""
    assert WRITER_GD.startswith("class_name WorldsimCaptureWriter\nextends RefCounted\n")
    assert writer_const("FORMAT") == capture.FORMAT and writer_const("VERSION") == capture.VERSION
    assert written_keys("_line") == capture.FIELDS, "a frames.jsonl line can hold every field the importer knows"
    assert written_keys("_info") == INFO_FIELDS
    assert written_keys("_checked_schema") == CONTROL_FIELDS


def test_a_capture_laid_out_by_the_writers_rules_imports(tmp_path, capsys):
    """Python lays out a capture with capture_writer.gd's names (read from its source) and by the rules its comments
    state (the GDScript itself only runs in Godot): capture.json, zero-padded episode folders imported in number
    order, frames named by capture step (PNG and JPEG), no control on an episode's first line, `index` after a
    skipped step, a prompt only where it changes, an empty folder from a run that captured nothing and an image
    saved without its line (a crash between the two). `worldsim dataset import` and `info` take it as intended."""
    cap, out = tmp_path / "capture", tmp_path / "data"
    control = {"keys": ["W", "A", "S", "D", "Shift"], "axes": ["mouse_dx"], "embedding_dim": 2,
               "frames_per_latent": 2}
    info = {"format": writer_const("FORMAT"), "version": writer_const("VERSION"), "control": control, "fps": 16.0,
            "engine": "test game (Godot 4.3)"}
    assert set(info) == written_keys("_info") and set(control) == written_keys("_checked_schema")
    cap.mkdir()
    (cap / writer_const("INFO_FILE")).write_text(json.dumps(info, indent=2) + "\n")
    episode, image = writer_const("EPISODE_NAME"), writer_const("IMAGE_NAME")
    rng = np.random.default_rng(0)

    def lay_out(number: int, ext: str, lines: dict[int, dict], orphan: int | None = None) -> list[np.ndarray]:
        """Episode folder `number`: the image of each capture step, then frames.jsonl with a line per step in
        `lines` (its fields besides `image`); `orphan`: a step whose image was saved but not its line."""
        folder = cap / (episode % number)
        folder.mkdir()
        pixels = {}
        for step in [*lines, *([] if orphan is None else [orphan])]:
            pixels[step] = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels[step]).save(folder / (image % (step, ext)))
        text = "".join(json.dumps({"image": image % (step, ext), **fields}) + "\n" for step, fields in lines.items())
        (folder / writer_const("LINES_FILE")).write_text(text)
        return [pixels[step] for step in lines]

    row = {"keys": [1, 0, 0, 0, 1], "axes": [0.25], "embedding": [0.5, -1.0]}
    pngs = lay_out(9, "png", {0: {"prompt": "a meadow"}, 1: row, 3: {"index": 3, **row, "prompt": "a pond"}, 4: row})
    lay_out(10, "jpg", {0: {}, 1: {**row, "axes": [-0.5]}}, orphan=2)
    (cap / (episode % 11)).mkdir()

    assert main(["dataset", "import", str(cap), str(out), "--quiet"]) == 0
    eps = load_dataset(out)
    assert [ep.meta["capture"] for ep in eps] == [episode % 9, episode % 10]  # 9 before 10: zero-padded names
    first, second = eps
    assert np.array_equal(first.frames, np.stack(pngs))  # PNG is lossless
    assert first.frame_index.tolist() == [0, 1, 3, 4] and first.control_present.tolist() == [False, True, True, True]
    assert first.keys[2].tolist() == [1, 0, 0, 0, 1] and first.embedding[3].tolist() == [0.5, -1.0]
    assert [p["text"] for p in first.prompts] == ["a meadow", "a pond"]
    assert second.frames.shape == (2, 6, 8, 3) and second.axes[1].tolist() == [-0.5]
    assert second.meta["engine"] == info["engine"] and second.meta["source"] == "capture"
    assert read_info(out)["control"] == control and read_info(out)["fps"] == 16.0
    assert main(["dataset", "info", str(out)]) == 0
    assert "2 episode(s), 6 frames" in capsys.readouterr().out
