"""The toy world: state, physics and the ground-truth rollout of a control sequence.

Controls follow the daemon's default schema (``worldsim serve``, ``worldsim play``, docs/DATASET.md): per video
frame, ``keys`` [6] in the order of :data:`KEYS` (0/1) and ``axes`` [2] in the order of :data:`AXES` (mouse deltas
normalised to about [-1, 1]; clipped to that range here). One control row advances the world by one frame:

- ``W``/``S`` walk forward/back along the heading, ``A``/``D`` strafe left/right, ``Shift`` runs (x RUN);
- ``mouse_dx`` turns (positive: to the right), ``mouse_dy`` looks (positive: mouse moved down, so the view tilts
  down and the horizon rises on screen);
- ``Space`` jumps (from the ground only); the camera rises and falls over ``Physics.jump_frames`` frames.

The turn is applied before the move. Objects stop the player (``Physics.radius`` from their cells; it slides
along them when one axis is free) and the player stands on the bare terrain. Positions wrap at the map edge
(the map tiles the plane). Everything is deterministic for a seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .render import Camera, Pose, Renderer
from .terrain import ThemeMaps, theme_maps
from .themes import DEFAULT_THEME, get_theme

KEYS = ("W", "A", "S", "D", "Space", "Shift")
AXES = ("mouse_dx", "mouse_dy")


def control_schema(frames_per_latent: int = 1) -> dict:
    """The dataset/daemon control schema of the toy world (a per-frame codec: one video frame per latent)."""
    return {"keys": list(KEYS), "axes": list(AXES), "embedding_dim": 0, "frames_per_latent": frames_per_latent}


def key_row(pressed: Iterable[str]) -> np.ndarray:
    """[6] float32 key row with the named keys pressed (names as in KEYS)."""
    pressed = set(pressed)
    unknown = pressed - set(KEYS)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; the toy world knows {list(KEYS)}")
    return np.array([k in pressed for k in KEYS], np.float32)


@dataclass(frozen=True)
class Physics:
    """Movement per frame, in map cells and radians."""

    walk: float = 0.6
    run: float = 2.0  # speed factor while Shift is held
    turn: float = 0.15  # radians per frame at mouse_dx = 1
    look: float = 0.12  # pitch units per frame at mouse_dy = 1 (pitch is clipped to [-1, 1])
    eye: float = 4.0  # eye height above the terrain
    radius: float = 1.5  # the player's body: objects stop it this far from their cells
    jump_frames: int = 8  # frames a jump lasts
    jump_height: float = 4.0  # apex of a jump, above the eye height


@dataclass(frozen=True)
class WorldConfig:
    camera: Camera = field(default_factory=Camera)
    physics: Physics = field(default_factory=Physics)
    map_size: int = 512  # cells per side of the (wrapping) map


@dataclass(frozen=True)
class WorldState:
    """Everything that determines a frame (with the WorldConfig). ``jump`` counts frames into a jump (0: none)."""

    seed: int
    theme: str
    x: float
    y: float
    heading: float  # radians in [0, 2 pi); 0 looks along +x, pi/2 along +y (the map's y grows "south")
    pitch: float = 0.0  # [-1, 1], positive looks up
    jump: int = 0
    tick: int = 0


def advance(state: WorldState, keys: np.ndarray, axes: np.ndarray, physics: Physics, maps: ThemeMaps) -> WorldState:
    """The state one frame later under one control row (keys [6], axes [2]) in the state's maps.

    Scalar math in plain Python (numpy scalars cost more than the arithmetic here)."""
    w, a, s, d, space, shift = (float(v) > 0.5 for v in keys)
    dx, dy = (min(max(float(v), -1.0), 1.0) for v in axes)
    heading = (state.heading + physics.turn * dx) % (2 * math.pi)
    forward, strafe = float(w) - float(s), float(d) - float(a)
    speed = physics.walk * (physics.run if shift else 1.0) / max(math.hypot(forward, strafe), 1.0)
    cos, sin = math.cos(heading), math.sin(heading)
    x, y = _slide(maps, state.x, state.y, speed * (forward * cos - strafe * sin),
                  speed * (forward * sin + strafe * cos), physics.radius)
    pitch = min(max(state.pitch - physics.look * dy, -1.0), 1.0)
    jump = state.jump + 1 if state.jump else int(space)
    if jump > physics.jump_frames:
        jump = 0
    return replace(state, x=x, y=y, heading=heading, pitch=pitch, jump=jump, tick=state.tick + 1)


def _blocked(maps: ThemeMaps, x: float, y: float, radius: float) -> bool:
    """Whether a body of ``radius`` at (x, y) would touch an object (a cell raised above the terrain)."""
    m = maps.size
    x0, x1 = math.floor(x - radius) % m, math.floor(x + radius) % m
    y0, y1 = math.floor(y - radius) % m, math.floor(y + radius) % m
    if x0 <= x1 and y0 <= y1:
        return bool(maps.solid[y0:y1 + 1, x0:x1 + 1].any())
    xs = np.arange(math.floor(x - radius), math.floor(x + radius) + 1) % m  # the body straddles the map edge
    ys = np.arange(math.floor(y - radius), math.floor(y + radius) + 1) % m
    return bool(maps.solid[np.ix_(ys, xs)].any())


def _slide(maps: ThemeMaps, x: float, y: float, dx: float, dy: float, radius: float) -> tuple[float, float]:
    """Move by (dx, dy) unless that hits an object; then along whichever axis is free (sliding along walls)."""
    if dx or dy:
        for mx, my in ((dx, dy), (dx, 0.0), (0.0, dy)):
            if (mx or my) and not _blocked(maps, x + mx, y + my, radius):
                return (x + mx) % maps.size, (y + my) % maps.size
    return x, y


def ground_height(maps: ThemeMaps, x: float, y: float) -> float:
    """Bilinear terrain height at (x, y) (objects excluded), wrapping."""
    g, m = maps.ground, maps.size
    x0, y0 = math.floor(x), math.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0, x1, y1 = x0 % m, y0 % m, (x0 + 1) % m, (y0 + 1) % m
    top = g[y0, x0] * (1 - fx) + g[y0, x1] * fx
    bottom = g[y1, x0] * (1 - fx) + g[y1, x1] * fx
    return float(top * (1 - fy) + bottom * fy)


@dataclass(frozen=True)
class Rollout:
    """Ground truth of a control sequence: frames [T+1, H, W, 3] uint8 and states (T+1), frame 0 the start."""

    frames: np.ndarray
    states: tuple[WorldState, ...]

    @property
    def poses(self) -> np.ndarray:
        """[T+1, 4] float64: x, y, heading, pitch per frame."""
        return np.array([(s.x, s.y, s.heading, s.pitch) for s in self.states])


class World:
    """The playable toy world: ``reset``/``step`` like a game, ``render``/``rollout`` as pure ground truth."""

    def __init__(self, config: WorldConfig = WorldConfig()):
        self.config = config
        self.renderer = Renderer(config.camera)
        self.state: WorldState | None = None

    def maps(self, state: WorldState) -> ThemeMaps:
        return theme_maps(state.seed, state.theme, self.config.map_size)

    def start_state(self, seed: int, theme: str = DEFAULT_THEME) -> WorldState:
        """A seeded start: a random spot clear of objects, random heading, level view."""
        get_theme(theme)
        maps = self.maps(WorldState(seed, theme, 0.0, 0.0, 0.0))
        rng = np.random.default_rng([seed, 1])
        m = self.config.map_size
        for _ in range(256):
            x, y = rng.random(2) * m
            if not _blocked(maps, x, y, 2 * self.config.physics.radius):
                break
        return WorldState(seed=seed, theme=theme, x=float(x), y=float(y), heading=float(rng.random() * 2 * np.pi))

    def reset(self, seed: int = 0, theme: str = DEFAULT_THEME) -> np.ndarray:
        """Start a new episode; returns its first frame [H, W, 3] uint8."""
        self.state = self.start_state(seed, theme)
        return self.render(self.state)

    def set_state(self, state: WorldState) -> np.ndarray:
        """Continue from any state; returns its frame."""
        get_theme(state.theme)
        self.state = state
        return self.render(state)

    def set_theme(self, theme: str) -> None:
        """Switch theme from the next frame on (same place, same layout, new look)."""
        get_theme(theme)
        self.state = replace(self._current(), theme=theme)

    def step(self, keys: Sequence[float] | np.ndarray | None = None,
             axes: Sequence[float] | np.ndarray | None = None) -> np.ndarray:
        """Apply one control row (None: nothing pressed / no motion); returns the next frame."""
        keys = np.zeros(len(KEYS), np.float32) if keys is None else keys
        axes = np.zeros(len(AXES), np.float32) if axes is None else axes
        state = self._current()
        self.state = advance(state, keys, axes, self.config.physics, self.maps(state))
        return self.render(self.state)

    def render(self, state: WorldState) -> np.ndarray:
        """The frame [H, W, 3] uint8 seen from a state."""
        maps = self.maps(state)
        return self.renderer.render(maps, Pose(state.x, state.y, state.heading, state.pitch,
                                               self.eye_height(state, maps)))

    def eye_height(self, state: WorldState, maps: ThemeMaps | None = None) -> float:
        p = self.config.physics
        maps = maps or self.maps(state)
        t = state.jump / (p.jump_frames + 1)
        return ground_height(maps, state.x, state.y) + p.eye + 4 * p.jump_height * t * (1 - t)

    def rollout(self, state: WorldState, keys: np.ndarray, axes: np.ndarray,
                themes: Sequence[str] | None = None) -> Rollout:
        """The frames a control sequence produces from ``state`` (the world's own state is left alone).

        keys [T, 6], axes [T, 2]: row t drives frame t -> t+1. ``themes`` [T] (optional): the theme of frame t+1.
        """
        keys, axes = np.asarray(keys, np.float32), np.asarray(axes, np.float32)
        if keys.shape != (len(keys), len(KEYS)) or axes.shape != (len(keys), len(AXES)):
            raise ValueError(f"keys must be [T, {len(KEYS)}] and axes [T, {len(AXES)}], "
                             f"got {list(keys.shape)} and {list(axes.shape)}")
        states = [state]
        for t in range(len(keys)):
            s = advance(states[-1], keys[t], axes[t], self.config.physics, self.maps(states[-1]))
            states.append(replace(s, theme=themes[t]) if themes is not None else s)
        return Rollout(frames=np.stack([self.render(s) for s in states]), states=tuple(states))

    def _current(self) -> WorldState:
        if self.state is None:
            raise RuntimeError("the world has no state yet: call reset() or set_state() first")
        return self.state
