"""The pygame reference client: show the stream, send keyboard/mouse controls per video frame, switch prompts
(typed into the prompt box, or picked from the palette with the number keys 1-9).

Set ``SDL_VIDEODRIVER=dummy`` before importing this module to run without a display (``worldsim play --headless``
does). Frames arrive a chunk at a time; they are shown at the stream's frame rate from a short buffer that skips
ahead when it holds more than a chunk and a half, so latency stays bounded.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pygame

from worldsim.client import Client, ConnectionLost, Frame, ServerError
from worldsim.serve.protocol import SWITCH_MODES
from worldsim.serve.stats import RateMeter, Recent

from .controls import ControlMapper, InputSource, PygameInput
from .hud import Hud, HudState
from .palette import PromptPalette
from .recorder import Recorder

REDRAW_S = 0.1  # HUD refresh when no new frame or input arrives


@dataclass
class PlayConfig:
    prompt: str = "a quiet forest path at dawn"
    seed: int = 0
    format: str = "rgb24"  # rgb24 for local daemons, jpeg for remote ones
    mode: str = "recache"  # prompt switch mode (F2 cycles)
    window: tuple[int, int] | None = None  # (width, height); default: the video scaled up to about 768 px
    sensitivity: float = 0.02  # axis units per pixel of mouse motion
    record: str | None = None  # dataset directory
    screenshot_dir: str = "."
    max_frames: int | None = None  # stop after showing this many frames
    grab_mouse: bool = True
    status_every_s: float = 0.0  # print the HUD's first lines to stdout this often (headless runs)
    palette: PromptPalette | None = None  # prompts on the number keys 1-9; None: PromptPalette.default()


class PlayApp:
    def __init__(self, client: Client, config: PlayConfig, source: InputSource | None = None):
        self.client, self.cfg = client, config
        pygame.display.init()  # key names resolve only once pygame's display is up
        self.source = source or PygameInput()
        w = client.welcome
        self.fps = float(w.video["fps"])
        self.chunk_frames = int(w.video["frames_per_chunk"])
        self.video_size = (int(w.video["width"]), int(w.video["height"]))
        self.mapper = ControlMapper(list(w.control.keys), list(w.control.axes), config.sensitivity)
        self.has_controls = bool(w.control.keys or w.control.axes)
        self.palette = config.palette or PromptPalette.default()
        self.starts = set(w.model.get("starts", ()))  # prompts the model package has a start frame for
        self.palette.check(int(w.prompt["max_chars"]))
        self.hud_state = HudState(prompt=config.prompt, mode=config.mode, target_fps=self.fps,
                                  untrained=bool(w.model.get("untrained")), recording=config.record,
                                  palette=[e.label for e in self.palette.entries],
                                  active=self.palette.active(config.prompt))
        self.buffer: deque[Frame] = deque()
        self.shown_rate, self.latency = RateMeter(), Recent(256)
        self.shown = self.skipped = 0
        self.current: Frame | None = None
        self.running, self.show_hud, self.grabbed = True, True, False
        self.recorder: Recorder | None = None
        self.session: int | None = None
        self.epoch = 0
        self.hud: Hud | None = None
        self._scaled: tuple | None = None  # (frame, window size, scaled surface)
        self.notice_until = 0.0

    # ---- setup -------------------------------------------------------------------------------------------------
    def _open(self) -> None:
        c = self.cfg
        self.session = self.client.open(c.prompt, seed=c.seed, format=c.format, echo_controls=c.record is not None)
        self.hud_state.session = self.session
        if c.record:
            self.recorder = Recorder(c.record, self.client.welcome, self.session, c.seed, c.prompt)

    def _window(self) -> pygame.Surface:
        if self.cfg.window:
            size = self.cfg.window
        else:
            vw, vh = self.video_size
            k = max(1, round(768 / max(vw, vh)))
            size = (vw * k, vh * k)
        pygame.display.set_caption("worldsim play")
        return pygame.display.set_mode(size, pygame.RESIZABLE)

    def _set_grab(self, on: bool) -> None:
        if not self.cfg.grab_mouse:
            return
        self.grabbed = on
        pygame.event.set_grab(on)
        pygame.mouse.set_visible(not on)

    # ---- input -------------------------------------------------------------------------------------------------
    def notify(self, text: str, seconds: float = 5.0) -> None:
        self.hud_state.notice = text
        self.notice_until = time.monotonic() + seconds

    def _handle(self, ev: pygame.event.Event) -> None:
        hs = self.hud_state
        if ev.type == pygame.QUIT:
            self.running = False
        elif ev.type == pygame.TEXTINPUT and hs.typing is not None:
            hs.typing = (hs.typing + ev.text)[: self.client.welcome.prompt["max_chars"]]
        elif ev.type == pygame.MOUSEMOTION and self.grabbed:
            self.mapper.mouse_motion(*ev.rel)
        elif ev.type == pygame.MOUSEBUTTONDOWN and not self.grabbed:
            self._set_grab(True)
        elif ev.type == pygame.KEYDOWN:
            self._key(ev.key)

    def _key(self, key: int) -> None:
        hs = self.hud_state
        if key == pygame.K_F2:
            hs.mode = SWITCH_MODES[(SWITCH_MODES.index(hs.mode) + 1) % len(SWITCH_MODES)]
        elif hs.typing is not None:
            if key == pygame.K_RETURN:
                self.switch_prompt(hs.typing)
                hs.typing = None
            elif key == pygame.K_ESCAPE:
                hs.typing = None
            elif key == pygame.K_BACKSPACE:
                hs.typing = hs.typing[:-1]
        elif key == pygame.K_RETURN:
            hs.typing = ""
            self.mapper.release_all()
        elif key == pygame.K_ESCAPE:
            if self.grabbed:
                self._set_grab(False)
            else:
                self.running = False
        elif key == pygame.K_F1:
            self.show_hud = not self.show_hud
        elif key == pygame.K_F3:
            self.toggle_pause()
        elif key == pygame.K_F5:
            self.reset()
        elif key == pygame.K_F12:
            self.screenshot()
        elif pygame.K_1 <= key <= pygame.K_9 and key not in self.mapper.watched:  # schema keys stay controls
            self.pick(key - pygame.K_0)
        else:
            self.mapper.key_down(key)

    # ---- actions -----------------------------------------------------------------------------------------------
    def switch_prompt(self, text: str, mode: str | None = None) -> None:
        """Switch to ``text`` with ``mode`` (default: the HUD's, which F2 cycles)."""
        if not text.strip():
            return
        mode = mode or self.hud_state.mode
        seq = self.client.send(self.session, prompt=text, mode=mode)
        if self.recorder is not None:
            self.recorder.prompt_sent(seq, text, mode)
        self.hud_state.prompt = text
        self.hud_state.active = self.palette.active(text)
        start = " to the model's start frame" if mode == "cut" and text in self.starts else ""
        self.notify(f"prompt switch ({mode}{start}) applies at the next chunk", 3)

    def pick(self, number: int) -> None:
        """Number key ``number``: switch to that palette entry's prompt; a cut to its start frame when the model
        package has one (``welcome.model.starts``: the scene changes at once), else with the current mode."""
        entry = self.palette.entry(number)
        if entry is None:
            self.notify(f"no prompt on key {number}: the palette has {len(self.palette.entries)}", 3)
        else:
            self.switch_prompt(entry.text, "cut" if entry.text in self.starts else None)

    def toggle_pause(self) -> None:
        hs = self.hud_state
        reply = self.client.resume(self.session) if hs.paused else self.client.pause(self.session)
        hs.paused = bool(reply["paused"])

    def reset(self) -> None:
        self.epoch = self.client.reset(self.session)["epoch"]
        self.buffer.clear()
        self.hud_state.epoch = self.epoch
        self.notify("stream reset", 2)

    def screenshot(self) -> Path | None:
        """Save the current video frame at its own size, and beside it (``*_window.png``) the window as last
        drawn, HUD included: what a person sees, without an X screen grabber."""
        if self.current is None:
            return None
        f = self.current
        path = Path(self.cfg.screenshot_dir) / f"worldsim_s{self.session}_e{f.epoch}_f{f.index:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        pygame.image.save(self._surface(self.current), str(path))
        pygame.image.save(pygame.display.get_surface(), str(path.with_name(path.stem + "_window.png")))
        self.notify(f"saved {path}", 3)
        return path

    # ---- the loop ----------------------------------------------------------------------------------------------
    def _send_controls(self) -> None:
        typing = self.hud_state.typing is not None
        row = self.mapper.sample(self.source, enabled=not typing and not self.hud_state.paused)
        self.hud_state.held, self.hud_state.axes = self.mapper.held_names(row), row.get("axes", [])
        if self.has_controls and not self.hud_state.paused:
            self.client.send(self.session, controls={k: [v] for k, v in row.items()})

    def _receive(self) -> None:
        try:
            frames = self.client.frames_ready()
        except ServerError as e:
            self.notify(f"daemon: {e}", 8)
            if e.fatal:
                self.running = False
            return
        for f in frames:
            if f.session != self.session or f.epoch < self.epoch:
                continue
            if self.recorder is not None:
                self.recorder.add(f)
            self.buffer.append(f)

    def _next_frame(self) -> Frame | None:
        if len(self.buffer) > self.chunk_frames * 3 // 2:  # too far behind: skip to the newest chunk
            while len(self.buffer) > self.chunk_frames:
                self.buffer.popleft()
                self.skipped += 1
        return self.buffer.popleft() if self.buffer else None

    def _surface(self, frame: Frame) -> pygame.Surface:
        img = np.ascontiguousarray(frame.image)
        return pygame.image.frombuffer(img.tobytes(), (img.shape[1], img.shape[0]), "RGB")

    def _draw(self, screen: pygame.Surface, frame: Frame | None) -> None:
        screen.fill((0, 0, 0))
        if frame is not None:
            sw, sh = screen.get_size()
            vw, vh = self.video_size
            k = min(sw / vw, sh / vh)
            size = (max(1, int(vw * k)), max(1, int(vh * k)))
            if self._scaled is None or self._scaled[:2] != (frame, size):  # scale each frame once per window size
                self._scaled = (frame, size, pygame.transform.smoothscale(self._surface(frame), size))
            screen.blit(self._scaled[2], ((sw - size[0]) // 2, (sh - size[1]) // 2))
        if time.monotonic() > self.notice_until:
            self.hud_state.notice = ""
        self.hud.draw(screen, self.hud_state, self.show_hud)

    def _update_hud(self) -> None:
        hs = self.hud_state
        hs.fps = self.shown_rate.rate()
        hs.latency_ms = None if not self.latency.values else self.latency.quantile(0.5) * 1e3
        hs.latency_p95_ms = None if not self.latency.values else self.latency.quantile(0.95) * 1e3
        hs.dropped = self.client.frames_dropped + self.skipped
        if self.current is not None:
            hs.frame = self.current.index

    def run(self) -> dict:
        """Play until the window closes, Esc (twice), ``max_frames`` or a lost daemon; returns a summary."""
        screen = self._window()
        self.hud = Hud()
        self._open()
        self._set_grab(True)
        pygame.key.start_text_input()
        frame_dt = 1.0 / self.fps
        next_sample = next_show = time.monotonic()
        last_status = last_draw = time.monotonic()
        error = None
        try:
            while self.running:
                events = pygame.event.get()
                for ev in events:
                    self._handle(ev)
                now = time.monotonic()
                if now >= next_sample:
                    self._send_controls()
                    next_sample = max(next_sample + frame_dt, now - frame_dt)
                self._receive()
                shown_new = False
                if now >= next_show:
                    frame = self._next_frame()
                    if frame is not None:
                        self.current, shown_new = frame, True
                        next_show = max(next_show + frame_dt, now - frame_dt)
                if shown_new or events or now - last_draw >= REDRAW_S:  # redraw only when something changed
                    last_draw = now
                    self._update_hud()
                    self._draw(screen, self.current)
                    pygame.display.flip()
                if shown_new:
                    self._photon(self.current)
                if self.cfg.status_every_s and now - last_status >= self.cfg.status_every_s:
                    last_status = now
                    print(" | ".join(self.hud_state.lines()[:2]), flush=True)
                wake = min(next_sample, next_show if self.buffer else now + 0.005)
                time.sleep(min(0.01, max(0.0, wake - time.monotonic())))
        except ConnectionLost as e:
            error = str(e)
            print(f"worldsim play: {e}", file=sys.stderr)
        finally:
            if self.recorder is not None:
                self.recorder.close()
            pygame.display.quit()
        return self.summary(error)

    def _photon(self, frame: Frame) -> None:
        """A new frame reached the screen: count it and measure the control-to-photon latency of every input it is
        the first to show (bridge/PROTOCOL.md)."""
        self.shown += 1
        self.shown_rate.tick()
        for latency in self.client.core.inputs_shown(frame.header.get("input_seq", -1), time.monotonic()):
            self.latency.add(latency)
        if self.cfg.max_frames and self.shown >= self.cfg.max_frames:
            self.running = False

    def summary(self, error: str | None = None) -> dict:
        return {"session": self.session, "frames_shown": self.shown, "fps": round(self.shown_rate.rate(), 2),
                "latency_ms": self.latency.summary(), "dropped": self.client.frames_dropped + self.skipped,
                "recorded_frames": self.recorder.frames if self.recorder else 0, "record_dir": self.cfg.record,
                "error": error}
