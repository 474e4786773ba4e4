"""The prompt palette of ``worldsim play``: palette files, and number keys switching prompts in a headless player
against a real daemon (digits typed into the prompt box stay text)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

os.environ["SDL_VIDEODRIVER"] = "dummy"
os.environ["SDL_AUDIODRIVER"] = "dummy"
os.environ["PYGAME_HIDE_SUPPORT_PROMPT"] = "1"

import pygame  # noqa: E402

from clients.play.palette import PromptPalette  # noqa: E402
from worldsim.client import Client  # noqa: E402
from worldsim.dataset import load_dataset  # noqa: E402
from worldsim.world.themes import THEMES  # noqa: E402


def test_default_palette_is_the_five_themes():
    p = PromptPalette.default()
    assert [e.label for e in p.entries] == ["forest", "desert", "snow", "lava", "dungeon"]
    assert [e.text for e in p.entries] == [THEMES[e.label].prompts[0] for e in p.entries]
    assert p.entry(3).text == "a snowy field at noon" and p.entry(6) is None and p.entry(0) is None
    assert p.active("a desert road") == 2 and p.active("a desert road at dusk") is None


def test_palette_file(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("# my palette\n\ncity: a rainy neon city street at night\n  a snowy mountain village  \n"
                 "wide: 16:9 framing, the second colon stays\n", encoding="utf-8")
    p = PromptPalette.load(f)
    assert [(e.label, e.text, e.line) for e in p.entries] == [
        ("city", "a rainy neon city street at night", 3),
        ("a snowy mounta..", "a snowy mountain village", 4),
        ("wide", "16:9 framing, the second colon stays", 5)]
    p.check(36)
    with pytest.raises(ValueError, match=r"prompts\.txt:3: prompt 'city' has 33 characters; the daemon accepts "
                                         r"at most 20"):
        p.check(20)
    assert PromptPalette.load(None) == PromptPalette.default()


@pytest.mark.parametrize("text, error", [
    ("", r"bad\.txt: no prompts"),
    ("# only a comment\n\n", r"bad\.txt: no prompts"),
    ("".join(f"prompt {i}\n" for i in range(10)), r"bad\.txt:10: more than 9 prompts"),
    ("fine\nsnow:\n", r"bad\.txt:2: label 'snow' has no prompt"),
])
def test_bad_palette_files(tmp_path, text, error):
    f = tmp_path / "bad.txt"
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=error):
        PromptPalette.load(f)


def test_unreadable_palette_file(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read prompt palette .*missing\.txt"):
        PromptPalette.load(tmp_path / "missing.txt")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"cannot read prompt palette .*latin1\.txt"):
        PromptPalette.load(tmp_path / "latin1.txt")


def key(code: int) -> None:
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=code, mod=0, unicode="", scancode=0))


def script(sample: int) -> list[str]:
    """Per video frame: F2 then 3 (the third prompt, mode cut); later a typed prompt with digits in it."""
    if sample == 8:
        key(pygame.K_F2)  # recache -> cut
        key(pygame.K_3)
    if sample == 40:
        key(pygame.K_RETURN)
        for ch in "room 42":  # a keyboard sends both a key event and the text
            key(pygame.key.key_code(ch) if ch != " " else pygame.K_SPACE)
            pygame.event.post(pygame.event.Event(pygame.TEXTINPUT, text=ch))
        key(pygame.K_RETURN)
    return []


def test_number_keys_switch_prompts_and_digits_in_the_box_do_not(backend, make_daemon, tmp_path):
    from clients.play.app import PlayApp, PlayConfig
    from clients.play.controls import ScriptedInput

    d = make_daemon(backend)
    rec = tmp_path / "rec"
    with Client(d.endpoint, name="palette-test") as client:
        app = PlayApp(client, PlayConfig(record=str(rec), max_frames=70, grab_mouse=False), ScriptedInput(script))
        assert app.hud_state.active == 1  # the opening prompt is the palette's first
        summary = app.run()
    assert summary["error"] is None
    sent = sorted(app.recorder.prompts.items())  # prompt_seq -> (text, mode), everything the player sent
    assert [v for _, v in sent] == [("a quiet forest path at dawn", "open"), ("a snowy field at noon", "cut"),
                                    ("room 42", "cut")]
    assert app.hud_state.prompt == "room 42" and app.hud_state.active is None

    (episode,) = load_dataset(rec)  # the daemon's frame headers say which switch each frame was made under
    assert [(p["text"], p["mode"]) for p in episode.prompts] == [
        ("a quiet forest path at dawn", "open"), ("a snowy field at noon", "cut"), ("room 42", "cut")]
    assert 0 < episode.prompts[1]["from_frame"] < episode.prompts[2]["from_frame"]


def test_a_number_key_cuts_to_the_models_start_frame_where_it_has_one(backend, make_daemon, tmp_path):
    """With the switch mode at recache, key 2 (the desert, which the model has a start frame for) cuts to it, key 3
    (the snow, which it has none for) switches by recache."""
    import dataclasses

    from clients.play.app import PlayApp, PlayConfig
    from clients.play.controls import ScriptedInput

    desert = PromptPalette.default().entry(2).text
    with_starts = dataclasses.replace(backend, start_frames={desert: np.zeros((32, 32, 3), np.uint8)})
    d = make_daemon(with_starts)

    def keys(sample: int) -> list[str]:
        if sample in (4, 12):
            key(pygame.K_2 if sample == 4 else pygame.K_3)
        return []

    with Client(d.endpoint, name="palette-test") as client:
        assert client.welcome.model["starts"] == [desert]
        app = PlayApp(client, PlayConfig(record=str(tmp_path / "rec"), max_frames=20, grab_mouse=False),
                      ScriptedInput(keys))
        assert app.run()["error"] is None
    sent = [v for _, v in sorted(app.recorder.prompts.items())][1:]  # after the opening prompt
    assert sent == [(desert, "cut"), (PromptPalette.default().entry(3).text, "recache")]
    assert app.hud_state.mode == "recache"  # the mode F2 sets is unchanged


def test_palette_prompts_must_fit_the_daemon(backend, make_daemon, tmp_path):
    from clients.play.app import PlayApp, PlayConfig

    d = make_daemon(backend, max_prompt_chars=30)
    palette = PromptPalette.parse("short\nlong: a prompt longer than the daemon allows\n", "mine.txt")
    with Client(d.endpoint, name="palette-test") as client:
        with pytest.raises(ValueError, match=r"mine\.txt:2: prompt 'long' has 38 characters; the daemon accepts at "
                                             r"most 30"):
            PlayApp(client, PlayConfig(prompt="short", palette=palette, grab_mouse=False))


def test_play_command_refuses_a_bad_palette_before_connecting(tmp_path):
    f = tmp_path / "ten.txt"
    f.write_text("".join(f"prompt {i}\n" for i in range(10)), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "worldsim", "play", "--prompts", str(f), "--headless",
                          "--connect", "tcp://127.0.0.1:9", "--timeout", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "ten.txt:10: more than 9 prompts" in out.stderr, out.stderr[-2000:]
    assert "connecting" not in out.stderr
