"""The heads-up display: measured FPS, control-to-photon latency, session, held keys, the prompt and its switch
mode, the prompt palette (active entry highlighted), prompt box and help.

Rows are lists of coloured segments; a row wider than the window wraps between segments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pygame

HELP = ("Enter prompt", "1-9 palette", "F2 mode", "F3 pause", "F5 reset", "F12 screenshot", "F1 HUD", "Esc mouse/quit")
TEXT, MODE, ACTIVE = (255, 255, 255), (120, 210, 255), (255, 205, 60)  # RGB of plain text, switch mode, active entry
INDENT = 24  # pixels a wrapped row's continuation is indented by

Segment = tuple[str, tuple[int, int, int]]  # (text, colour)


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
    palette: list[str] = field(default_factory=list)  # labels on number keys 1, 2, ...
    active: int | None = None  # number of the palette entry whose prompt is in effect

    def rows(self) -> list[list[Segment]]:
        lat = "-" if self.latency_ms is None else f"{self.latency_ms:.0f} ms (p95 {self.latency_p95_ms:.0f})"
        paused = "  PAUSED" if self.paused else ""
        plain = [f"session {self.session}  epoch {self.epoch}  frame {self.frame}{paused}",
                 f"FPS {self.fps:.1f} / {self.target_fps:g}   control-to-photon {lat}   dropped {self.dropped}",
                 "keys " + (" ".join(self.held) or "-") + "   axes " + " ".join(f"{a:+.2f}" for a in self.axes)]
        out = [[(t, TEXT)] for t in plain]
        out.append([(f"prompt: {self.prompt}   switch mode ", TEXT), (f"[{self.mode}]", MODE)])
        if self.palette:
            row: list[Segment] = [("palette", TEXT)]
            for i, label in enumerate(self.palette, 1):
                row.append((f"  [{i} {label}]", ACTIVE) if i == self.active else (f"  {i} {label}", TEXT))
            out.append(row)
        for t in (f"recording to {self.recording}" if self.recording else "",
                  "model weights are untrained: frames depict nothing" if self.untrained else "", self.notice):
            if t:
                out.append([(t, TEXT)])
        return out

    def lines(self) -> list[str]:
        """The rows as plain text (the active palette entry in brackets), for status lines on stdout."""
        return ["".join(t for t, _ in row) for row in self.rows()]


class Hud:
    def __init__(self):
        pygame.font.init()
        self.font = pygame.font.Font(None, 20)

    def draw(self, surface: pygame.Surface, state: HudState, visible: bool) -> None:
        rows = state.rows() + [[(("  " if i else "") + h, TEXT) for i, h in enumerate(HELP)]] if visible else []
        if state.typing is not None:
            rows.append([("new prompt ", TEXT), (f"[{state.mode}]", MODE),
                         (f" > {state.typing}_   (Enter send, Esc cancel)", TEXT)])
        if not rows:
            return
        right = surface.get_width() - 10
        placed: list[tuple[pygame.Surface, int, int]] = []  # (rendered segment, x, y)
        y = 8
        for row in rows:
            x, height = 10, 0
            for text, colour in row:
                r = self.font.render(text, True, colour)
                if x > 10 and x + r.get_width() > right:  # wrap before this segment
                    x, y, height = 10 + INDENT, y + height, 0
                    r = self.font.render(text.lstrip(), True, colour)
                placed.append((r, x, y))
                x, height = x + r.get_width(), max(height, r.get_height())
            y += height
        box = pygame.Surface((max(r.get_width() + x for r, x, _ in placed) + 2, y), pygame.SRCALPHA)
        box.fill((0, 0, 0, 150))
        surface.blit(box, (4, 4))
        for r, x, y in placed:
            surface.blit(r, (x, y))
