"""Play the toy world in a pygame window: WASD + mouse, exactly the controls a model trained on it receives.

Keys are sampled once per frame (held state), mouse motion is summed between frames and scaled by
``sensitivity`` into ``mouse_dx``/``mouse_dy`` clipped to [-1, 1], as the ``worldsim play`` client does. Number keys
1-5 switch theme, Esc releases the mouse (a click grabs it again; Esc when released quits).
``headless`` uses SDL's dummy video driver (no window; for tests and servers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .game import KEYS, World
from .themes import THEMES, theme_for_prompt

PYGAME_KEYS = {"W": "w", "A": "a", "S": "s", "D": "d", "Space": "space", "Shift": "left shift"}
ARROWS = {"W": "up", "A": "left", "S": "down", "D": "right"}


@dataclass(frozen=True)
class PlayConfig:
    seed: int = 0
    prompt: str = ""  # picks the starting theme (theme_for_prompt)
    fps: float = 16.0  # 0: as fast as it renders
    scale: int = 8  # window pixels per frame pixel
    sensitivity: float = 0.02  # mouse pixels -> axis units (50 px per frame = 1)
    frames: int = 0  # stop after this many frames (0: until closed)
    headless: bool = False


def play(cfg: PlayConfig = PlayConfig()) -> int:
    """Run the game loop; returns the number of frames shown."""
    if cfg.headless:
        os.environ["SDL_VIDEODRIVER"] = "dummy"
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pygame

    pygame.display.init()  # video and events only: no audio device needed
    try:
        return _loop(cfg, pygame)
    finally:
        pygame.quit()


def _loop(cfg: PlayConfig, pygame) -> int:
    world = World()
    frame = world.reset(cfg.seed, theme_for_prompt(cfg.prompt))
    h, w = frame.shape[:2]
    screen = pygame.display.set_mode((w * cfg.scale, h * cfg.scale))
    codes = [{pygame.key.key_code(PYGAME_KEYS[k])} | ({pygame.key.key_code(ARROWS[k])} if k in ARROWS else set())
             for k in KEYS]
    themes = list(THEMES)
    clock, shown, grabbed = pygame.time.Clock(), 0, not cfg.headless
    _grab(pygame, grabbed)
    while not cfg.frames or shown < cfg.frames:
        mouse = np.zeros(2)
        for event in pygame.event.get():
            if event.type == pygame.QUIT:
                return shown
            if event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE:
                if not grabbed:
                    return shown
                grabbed = False
                _grab(pygame, grabbed)
            elif event.type == pygame.KEYDOWN and pygame.K_1 <= event.key < pygame.K_1 + len(themes):
                world.set_theme(themes[event.key - pygame.K_1])
            elif event.type == pygame.MOUSEBUTTONDOWN and not grabbed:
                grabbed = True
                _grab(pygame, grabbed)
            elif event.type == pygame.MOUSEMOTION and grabbed:
                mouse += event.rel
        held = pygame.key.get_pressed()
        keys = np.array([any(held[c] for c in cs) for cs in codes], np.float32)
        axes = np.clip(mouse * cfg.sensitivity, -1.0, 1.0)
        frame = world.step(keys, axes)
        surface = pygame.surfarray.make_surface(frame.transpose(1, 0, 2))  # pygame wants [W, H, 3]
        screen.blit(pygame.transform.scale(surface, screen.get_size()), (0, 0))
        pygame.display.flip()
        s = world.state
        pygame.display.set_caption(f"worldsim toy world: {s.theme} (1-5 themes, Esc releases the mouse)  "
                                   f"x {s.x:.0f} y {s.y:.0f} heading {np.degrees(s.heading):.0f}")
        shown += 1
        if cfg.fps:
            clock.tick(cfg.fps)
    return shown


def _grab(pygame, on: bool) -> None:
    pygame.event.set_grab(on)
    pygame.mouse.set_visible(not on)
