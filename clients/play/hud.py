"""The heads-up display: measured FPS, control-to-photon latency, session, held keys, prompt box and help."""

from __future__ import annotations

from dataclasses import dataclass, field

import pygame

HELP = "Enter prompt  F2 mode  F3 pause  F5 reset  F12 screenshot  F1 HUD  Esc mouse/quit"


@dataclass
class HudState:
    session: int = 0
    epoch: int = 0
    frame: int = 0
    fps: float = 0.0
    target_fps: float = 0.0
    latency_ms: float | None = None
    latency_p95_ms: float | None = None
    dropped: int = 0
    held: list[str] = field(default_factory=list)
    axes: list[float] = field(default_factory=list)
    prompt: str = ""
    mode: str = "recache"
    typing: str | None = None  # the prompt box's text while it is open
    paused: bool = False
    recording: str | None = None
    notice: str = ""
    untrained: bool = False

    def lines(self) -> list[str]:
        lat = "-" if self.latency_ms is None else f"{self.latency_ms:.0f} ms (p95 {self.latency_p95_ms:.0f})"
        out = [f"session {self.session}  epoch {self.epoch}  frame {self.frame}" + ("  PAUSED" if self.paused else ""),
               f"FPS {self.fps:.1f} / {self.target_fps:g}   control-to-photon {lat}   dropped {self.dropped}",
               "keys " + (" ".join(self.held) or "-") + "   axes " + " ".join(f"{a:+.2f}" for a in self.axes),
               f"prompt [{self.mode}]: {self.prompt}"]
        if self.recording:
            out.append(f"recording to {self.recording}")
        if self.untrained:
            out.append("model weights are untrained: frames depict nothing")
        if self.notice:
            out.append(self.notice)
        return out


class Hud:
    def __init__(self):
        pygame.font.init()
        self.font = pygame.font.Font(None, 20)

    def draw(self, surface: pygame.Surface, state: HudState, visible: bool) -> None:
        lines = state.lines() + [HELP] if visible else []
        if state.typing is not None:
            lines.append(f"new prompt [{state.mode}] > {state.typing}_   (Enter send, Esc cancel)")
        if not lines:
            return
        rendered = [self.font.render(t, True, (255, 255, 255)) for t in lines]
        w = max(r.get_width() for r in rendered) + 12
        h = sum(r.get_height() for r in rendered) + 8
        box = pygame.Surface((w, h), pygame.SRCALPHA)
        box.fill((0, 0, 0, 150))
        surface.blit(box, (4, 4))
        y = 8
        for r in rendered:
            surface.blit(r, (10, y))
            y += r.get_height()
