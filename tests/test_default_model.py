"""The embedded default model (worldsim/default_model): a small trained package that ships inside the wheel, is
what `worldsim serve` serves without --model, and follows the controls it was trained on."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve_helpers import frames_for

from worldsim.client import Client
from worldsim.codecs.toy_codec import ToyCodec
from worldsim.model_package import DEFAULT_PACKAGE, default_package, read_package
from worldsim.runtime import RuntimeOptions, build_runtime
from worldsim.train.evaluate import EvalConfig, Generator, ModelSpec, held_commands, held_out_episodes, theme_start
from worldsim.world import AXES, KEYS
from worldsim.world.themes import THEMES

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]
SIZE_BUDGET = 30 * 2**20  # bytes (issue 12)


def _strings(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_the_default_model_is_a_small_trained_package_naming_no_machine_path():
    pkg = read_package(default_package())
    files = [p for p in DEFAULT_PACKAGE.iterdir() if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= SIZE_BUDGET
    assert pkg.provenance["untrained"] is False and pkg.provenance["steps"] > 0
    manifest = json.loads((DEFAULT_PACKAGE / "worldsim-model.json").read_text())
    assert not [s for s in _strings(manifest) if Path(s).is_absolute()]  # the embed script made them file names


def test_every_theme_of_the_palette_starts_from_its_world():
    """The default palette's prompts (each theme's first) have start frames: the toy world's first frame of the
    theme at the place the provenance names; the daemon opens the palette's first prompt from it."""
    pkg = read_package(default_package())
    places = pkg.provenance["starts"]["toy_world_places"]
    assert set(places) == set(THEMES) and set(pkg.starts) == {theme.prompts[0] for theme in THEMES.values()}
    for name, theme in THEMES.items():
        assert places[name] >= 20_000  # no training (seeds from 0) or evaluation (from 10,000) episode starts there
        image = np.asarray(Image.open(pkg.starts[theme.prompts[0]]).convert("RGB"))
        assert np.array_equal(image, theme_start(name, places[name])), name


def test_the_wheel_carries_the_default_model(tmp_path):
    """A non-editable install gets the package: it is package data of the wheel (pyproject)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("worldsim", "clients", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
                    "-w", str(tmp_path / "out"), str(src)], check=True, capture_output=True, timeout=300)
    wheel, = (tmp_path / "out").glob("worldsim-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in DEFAULT_PACKAGE.iterdir():
        assert f"worldsim/default_model/{f.name}" in names


def test_serve_refuses_both_model_and_preset():
    out = subprocess.run([sys.executable, "-m", "worldsim", "serve", "--model", str(DEFAULT_PACKAGE), "--preset",
                          "tiny", "--bind", "tcp://127.0.0.1:*"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--model PATH or --preset NAME, not both" in out.stderr


def test_the_daemon_serves_it_as_trained(make_daemon):
    d = make_daemon(build_runtime(RuntimeOptions(model=str(default_package()))))
    with Client(d.endpoint, timeout=60) as c:
        model = c.welcome.model
        assert model["untrained"] is False and model["decoder"] == "toy" and model["package"] == str(DEFAULT_PACKAGE)
        assert tuple(c.welcome.control.keys) == KEYS and tuple(c.welcome.control.axes) == AXES
        s = c.open("green woods with a stream", seed=0, fps=0)
        frames, deadline = [], time.monotonic() + 60
        while len(frames) < 4 and time.monotonic() < deadline:
            f = c.frame(1)
            if f is not None and f.session == s:
                frames.append(f.image)
    assert len(frames) == 4 and frames[0].shape == (64, 64, 3)
    assert frames[0].std() > 5  # a picture, not a flat field


def test_the_daemon_opens_a_palette_prompt_from_its_start_frame(make_daemon):
    """What `worldsim play` shows first: the forest's start frame (through the codec), then the model's frames."""
    pkg = read_package(default_package())
    prompt = THEMES["forest"].prompts[0]
    start = np.asarray(Image.open(pkg.starts[prompt]).convert("RGB")).astype(float)
    d = make_daemon(build_runtime(RuntimeOptions(model=str(default_package()))))
    with Client(d.endpoint, timeout=60) as c:
        assert prompt in c.welcome.model["starts"]
        frames = [f.image.astype(float) for f in frames_for(c, c.open(prompt, seed=0, fps=0), 4, 60)]
    psnr = [10 * np.log10(255 ** 2 / np.mean((f - start) ** 2)) for f in frames]
    assert psnr[0] > 21 and psnr[3] > 20, psnr  # measured: 23.9 (the codec's blur), then 23.7, 23.5, 23.5


def test_mirrored_commands_move_the_view_in_opposite_directions():
    """From held-out world frames, each command (mouse_dx +1, W, D) held for 8 frames and, from the same context and
    noise, its mirror (mouse_dx -1, S, A): the view moves the world's way under the command and the other way under
    its mirror, in each episode (turns in the far view, walks and strafes in the near ground)."""
    pkg = read_package(default_package())
    codec_path = pkg.file(pkg.codec["path"])
    cfg = EvalConfig(episodes=2, chunks=8, held_frames=8)
    codec = ToyCodec.load(codec_path)
    generator = Generator(ModelSpec("default", DEFAULT_PACKAGE), codec, codec_path, cfg)
    assert generator.move_reference is not None  # the package's reference flow is served
    held, strips = held_commands([generator], held_out_episodes(cfg, 1)[:2], cfg, 1, codec)
    assert len(strips["default"]) == 3 and strips["default"][0][1].shape == (9, 64, 64, 3)  # context + 8 frames
    # measured (px per frame, command / mirror): turn +7.5 / -4.4, walk +1.9 / -0.7, strafe +3.2 / -2.3; the world
    # +7.0 / -7.0, +1.8 / -1.6, +3.2 / -3.1
    for kind, least in (("turn", 1.0), ("move", 0.25), ("strafe", 1.0)):
        truth, coded, model = (held[source][kind] for source in ("ground_truth", "codec", "default"))
        assert truth["reversed"] == 2 and truth["px_per_frame"][0] > 1.5  # the probe itself sees the world move
        assert coded["reversed"] == 2, coded  # the world through the codec keeps the motion
        assert model["reversed"] == 2, (kind, model)
        command, mirror = model["px_per_frame"]
        assert command > least and mirror < -least, (kind, model)
