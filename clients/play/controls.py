"""Keyboard and mouse to the daemon's control schema, sampled once per video frame.

Each schema key name (``W``, ``Space``, ``Shift``, ``Up``, ...) maps to pygame key codes; the arrow keys also
drive ``W``/``A``/``S``/``D`` when the schema has those and no arrow keys of its own. A key counts as pressed in
a sample if it is held at sampling time or went down since the previous sample (held-key semantics, and a tap
shorter than a frame is not lost). Mouse motion (relative, while grabbed) is summed between samples and
scaled by the sensitivity into the axes named ``mouse_dx``/``mouse_x``/``yaw`` and ``mouse_dy``/``mouse_y``/``pitch``.

Key state comes from an :class:`InputSource`: :class:`PygameInput` polls ``pygame.key.get_pressed()``, and tests
inject :class:`ScriptedInput` (events posted to pygame do not change ``get_pressed``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

import pygame

ALIASES = {"shift": ("left shift", "right shift"), "ctrl": ("left ctrl", "right ctrl"),
           "control": ("left ctrl", "right ctrl"), "alt": ("left alt", "right alt"), "enter": ("return",)}
ARROWS = {"W": "up", "A": "left", "S": "down", "D": "right"}
X_AXES = ("mouse_dx", "mouse_x", "yaw")
Y_AXES = ("mouse_dy", "mouse_y", "pitch")


def key_codes(name: str) -> tuple[int, ...]:
    """pygame key codes for a schema key name; () if pygame knows no such key."""
    codes = []
    for n in ALIASES.get(name.lower(), (name.lower(),)):
        try:
            codes.append(pygame.key.key_code(n))
        except ValueError:
            pass
    return tuple(codes)


class InputSource(Protocol):
    def held(self, codes: set[int]) -> set[int]:
        """Which of ``codes`` (pygame key codes) are held right now."""


class PygameInput:
    def held(self, codes: set[int]) -> set[int]:
        state = pygame.key.get_pressed()
        return {c for c in codes if state[c]}


class ScriptedInput:
    """Key names held as a function of the sample number (0, 1, 2, ...: one sample per video frame)."""

    def __init__(self, script: Callable[[int], Iterable[str]]):
        self.script = script
        self.sample = 0

    def held(self, codes: set[int]) -> set[int]:
        names = self.script(self.sample)
        self.sample += 1
        return {c for name in names for c in key_codes(name)} & codes


class ControlMapper:
    def __init__(self, keys: list[str], axes: list[str], sensitivity: float = 0.02):
        self.keys, self.axes, self.sensitivity = list(keys), list(axes), sensitivity
        self.codes = [set(key_codes(k)) for k in self.keys]
        own_arrows = {"up", "down", "left", "right"} & {k.lower() for k in self.keys}
        if not own_arrows:
            for i, k in enumerate(self.keys):
                if k.upper() in ARROWS:
                    self.codes[i].add(pygame.key.key_code(ARROWS[k.upper()]))
        self.watched = set().union(*self.codes)
        self.unmapped = [k for k, cs in zip(self.keys, self.codes) if not cs]
        self._tapped: set[int] = set()
        self._mouse = [0.0, 0.0]

    def key_down(self, code: int) -> None:
        self._tapped.add(code)

    def mouse_motion(self, dx: float, dy: float) -> None:
        self._mouse[0] += dx
        self._mouse[1] += dy

    def release_all(self) -> None:
        self._tapped.clear()
        self._mouse = [0.0, 0.0]

    def sample(self, source: InputSource, enabled: bool = True) -> dict[str, list[float]]:
        """One control row per source for the next video frame; resets taps and mouse motion."""
        held = (source.held(self.watched) | self._tapped) if enabled else set()
        row: dict[str, list[float]] = {}
        if self.keys:
            row["keys"] = [1.0 if cs & held else 0.0 for cs in self.codes]
        if self.axes:
            dx, dy = (self._mouse if enabled else (0.0, 0.0))
            row["axes"] = [max(-1.0, min(1.0, (dx if a in X_AXES else dy if a in Y_AXES else 0.0) * self.sensitivity))
                           for a in self.axes]
        self.release_all()
        return row

    def held_names(self, row: dict[str, list[float]]) -> list[str]:
        return [k for k, v in zip(self.keys, row.get("keys", [])) if v]
