"""``worldsim play`` headless (SDL dummy driver) against a real daemon, with injected key state, recording a
dataset that loads back; and the dataset format on its own."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ["SDL_AUDIODRIVER"] = "dummy"
os.environ["PYGAME_HIDE_SUPPORT_PROMPT"] = "1"

import pygame  # noqa: E402

from worldsim.client import Client  # noqa: E402
from worldsim.dataset import DatasetWriter, load_dataset  # noqa: E402

KEYS = ["W", "A", "S", "D", "Space", "Shift"]


def press(key: int) -> None:
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=key, mod=0, unicode="", scancode=0))


def script(sample: int) -> list[str]:
    """Held keys per video frame; some samples also type into the window like a user would."""
    if sample == 10:
        press(pygame.K_F12)  # screenshot
    if sample == 16:
        press(pygame.K_RETURN)  # open the prompt box, type, send
        pygame.event.post(pygame.event.Event(pygame.TEXTINPUT, text="a desert road"))
        press(pygame.K_F2)  # recache -> cut
        press(pygame.K_RETURN)
    if sample == 40:
        press(pygame.K_F5)  # reset: a new episode
    return ["W"] if (sample // 6) % 2 == 0 else ["Right", "Shift"]  # the arrow drives D


def test_play_headless_records_a_dataset(backend, make_daemon, tmp_path):
    from clients.play.app import PlayApp, PlayConfig
    from clients.play.controls import ScriptedInput

    d = make_daemon(backend)
    rec = tmp_path / "rec"
    with Client(d.endpoint, name="play-test") as client:
        app = PlayApp(client, PlayConfig(record=str(rec), max_frames=75, grab_mouse=False,
                                         screenshot_dir=str(tmp_path / "shots")), ScriptedInput(script))
        summary = app.run()
    assert summary["error"] is None and summary["frames_shown"] == 75
    assert summary["fps"] > 8 and summary["latency_ms"]["median"] is not None
    (frame_shot,) = (tmp_path / "shots").glob("worldsim_s*_e0_f??????.png")
    window_shot = frame_shot.with_name(frame_shot.stem + "_window.png")
    frame = Image.open(frame_shot).convert("RGB")
    assert frame.size == (32, 32)  # the video frame at its own size
    window = np.asarray(Image.open(window_shot).convert("RGB"))
    assert window.shape == (768, 768, 3)  # the default window: the 32 px video scaled by 24
    video = np.asarray(frame.resize((768, 768), Image.BILINEAR)).astype(int)
    diff = np.abs(window.astype(int) - video).mean(axis=2)
    assert diff[200:].mean() < 10 and diff[:40, :200].mean() > 30  # the frame, under the HUD's top-left panel

    episodes = load_dataset(rec)
    assert len(episodes) == 2 and summary["recorded_frames"] == sum(len(e) for e in episodes)
    first, second = episodes
    assert first.frames.shape[1:] == (32, 32, 3) and first.frames.dtype == np.uint8
    assert first.meta["epoch"] == 0 and second.meta["epoch"] == 1 and second.frame_index[0] == 0
    assert np.array_equal(first.frame_index, np.arange(len(first)))  # every frame, in order
    assert [p["text"] for p in first.prompts] == ["a quiet forest path at dawn", "a desert road"]
    assert first.prompts[1]["mode"] == "cut" and first.prompts[1]["from_frame"] > 0
    assert not first.control_present[0]  # nothing leads into frame 0
    held = {tuple(KEYS[i] for i in np.flatnonzero(row)) for row in first.keys[first.control_present]}
    assert held <= {("W",), ("D", "Shift"), ()} and ("W",) in held and ("D", "Shift") in held
    assert first.axes.shape == (len(first), 2) and first.embedding.shape == (len(first), 5)


def test_dataset_round_trip_and_checks(tmp_path):
    control = {"keys": ["W"], "axes": ["mouse_dx"], "embedding_dim": 0, "frames_per_latent": 4}
    w = DatasetWriter(tmp_path, control, 16.0, 8, 8)
    ep = w.new_episode(seed=1)
    ep.add_prompt(0, 0, "start", "open")
    for i in range(70):  # crosses a shard boundary
        ep.add_frame(np.full((8, 8, 3), i, np.uint8), i, i // 12, None if i == 0 else {"keys": [i % 2], "axes": [0.5]})
    ep.close()
    (e,) = load_dataset(tmp_path)
    assert len(e) == 70 and e.embedding is None and len(e.meta["shards"]) == 2
    assert e.frames[69, 0, 0, 0] == 69 and e.keys[:4, 0].tolist() == [0, 1, 0, 1] and not e.control_present[0]
    with pytest.raises(ValueError, match="another stream"):
        DatasetWriter(tmp_path, control, 16.0, 16, 16)
    with pytest.raises(ValueError, match="must be"):
        w.new_episode().add_frame(np.zeros((4, 4, 3), np.uint8), 0, 0, None)


def test_play_command_spawns_a_daemon(tmp_path):
    rec = tmp_path / "cli"
    out = subprocess.run([sys.executable, "-m", "worldsim", "play", "--spawn-daemon", "--serve-args",
                          "--preset tiny --height 32 --width 32", "--headless", "--max-frames", "30",
                          "--record", str(rec), "--timeout", "120"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "SDL_VIDEODRIVER": "dummy", "SDL_AUDIODRIVER": "dummy"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "showed 30 frames" in out.stderr and "UNTRAINED" in out.stderr
    (episode,) = load_dataset(rec)
    assert len(episode) >= 30 and episode.frames.shape[1:] == (32, 32, 3)
