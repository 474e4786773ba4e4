"""Training episodes from the toy world: varied, piecewise-held controls, idle stretches and theme switches.

An episode is a random control plan played through the world:

- the plan is a run of segments (``EpisodeConfig.segment`` frames each): a held key combination (walk, strafe,
  run, diagonal), or an idle stretch where nothing is pressed; on top, a smooth turn (constant, ramp or half
  sine of ``mouse_dx``), sometimes a slow look (``mouse_dy``), sometimes a jump (a ``Space`` tap). It is planned
  in closed loop: a player stuck against an object turns away instead of pushing on;
- the prompt (and with it the theme, ``theme_for_prompt``) may switch at chunk boundaries (``chunk_frames``
  video frames per chunk).

Written with the shared dataset writer (docs/DATASET.md): control row t drives frame t-1 -> t, frame 0 has none.
Each episode directory also gets ``world.npz`` with the ground truth: poses [N, 4] (x, y, heading, pitch), jump [N]
and theme index [N] (into :data:`THEME_NAMES`), and ``meta.json`` a ``world`` entry with the start state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import __version__
from ..dataset import DatasetWriter
from ..dataset.episodes import write_npz
from .game import AXES, KEYS, World, WorldConfig, WorldState, advance, control_schema, key_row
from .themes import THEMES, theme_for_prompt

THEME_NAMES = tuple(THEMES)
COMBOS = (("W",), ("W",), ("S",), ("A",), ("D",), ("W", "A"), ("W", "D"), ("S", "A"), ("S", "D"),
          ("W", "Shift"), ("W", "Shift"), ("W", "A", "Shift"), ("W", "D", "Shift"), ())  # () = only turning


@dataclass(frozen=True)
class EpisodeConfig:
    """What an episode looks like. Probabilities are per segment unless said otherwise."""

    frames: int = 192
    chunk_frames: int = 3  # video frames per chunk (3 latent frames x 1 frame per latent for the toy codec)
    fps: float = 16.0
    segment: tuple[int, int] = (4, 24)  # min, max frames a segment holds its controls
    idle: float = 0.15  # nothing pressed, no mouse motion
    turn: float = 0.5  # a smooth turn on top of the keys
    turn_speed: tuple[float, float] = (0.15, 1.0)  # |mouse_dx| range of a turn's peak
    backward: float | None = None  # chance a walking segment walks back (S for W); None: COMBOS' mix (3 of 11)
    look: float = 0.15  # a slow look up or down
    jump: float = 0.08  # a Space tap at the segment's start
    blocked: int = 3  # frames stuck against an object before the player turns away
    switches: int = 2  # at most this many theme switches per episode (uniform 0..switches)
    switch_mode: str = "recache"  # the prompt-switch mode recorded for the model
    world: WorldConfig = field(default_factory=WorldConfig)


@dataclass
class EpisodeData:
    """One generated episode, before writing. Row t of keys/axes drives frame t-1 -> t (row 0 is unused: zeros)."""

    frames: np.ndarray  # [N, H, W, 3] uint8
    keys: np.ndarray  # [N, 6] float32
    axes: np.ndarray  # [N, 2] float32
    prompts: list[dict]  # {"from_frame", "chunk", "text", "mode"}
    states: tuple[WorldState, ...]  # N ground-truth states, states[0] the start
    seed: int


def _segment(rng: np.random.Generator, cfg: EpisodeConfig, pitch: float) -> tuple[np.ndarray, np.ndarray]:
    """One held segment: keys [m, 6] and axes [m, 2] (idle, or a key combination with optional turn/look/jump)."""
    m = int(rng.integers(cfg.segment[0], cfg.segment[1] + 1))
    keys = np.zeros((m, len(KEYS)), np.float32)
    axes = np.zeros((m, len(AXES)), np.float32)
    if rng.random() < cfg.idle:
        return keys, axes
    combo = COMBOS[rng.integers(len(COMBOS))]
    if cfg.backward is not None and {"W", "S"} & set(combo):
        walk = "S" if rng.random() < cfg.backward else "W"
        combo = tuple(walk if k in ("W", "S") else k for k in combo)
    keys[:] = key_row(combo)
    if rng.random() < cfg.turn or not keys[0].any():
        peak = rng.uniform(*cfg.turn_speed) * rng.choice((-1.0, 1.0))
        profile = (np.ones(m), np.linspace(0.3, 1.0, m), np.sin(np.pi * (np.arange(m) + 0.5) / m))
        axes[:, 0] = peak * profile[rng.integers(3)]
    if rng.random() < cfg.look:  # mostly back towards level: a tilted view hides the near ground
        level = -np.sign(pitch) if pitch and rng.random() < 0.75 else rng.choice((-1.0, 1.0))
        axes[:, 1] = -level * rng.uniform(0.1, 0.4)  # mouse down (+) tilts the view down
    if rng.random() < cfg.jump:
        keys[0, KEYS.index("Space")] = 1.0
    return keys, axes


def _turn_away(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A segment that turns on the spot (no keys): how a player gets unstuck from an object."""
    m = int(rng.integers(6, 13))
    axes = np.zeros((m, len(AXES)), np.float32)
    axes[:, 0] = rng.uniform(0.6, 1.0) * rng.choice((-1.0, 1.0))
    return np.zeros((m, len(KEYS)), np.float32), axes


def _distance(a: WorldState, b: WorldState, size: int) -> float:
    """How far the player moved between two states (on the wrapping map)."""
    dx, dy = ((b.x - a.x + size / 2) % size - size / 2), ((b.y - a.y + size / 2) % size - size / 2)
    return float(np.hypot(dx, dy))


def control_plan(rng: np.random.Generator, cfg: EpisodeConfig, world: World, start: WorldState,
                 themes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """keys [N, 6] and axes [N, 2] float32 (row 0, before the first frame, all zeros), planned in closed loop:
    when an object blocks the player for ``cfg.blocked`` frames the segment ends and the player turns away.
    ``themes`` [N]: the theme of each frame (objects, hence collisions, depend on it)."""
    n, physics = cfg.frames, cfg.world.physics
    keys = np.zeros((n, len(KEYS)), np.float32)
    axes = np.zeros((n, len(AXES)), np.float32)
    state, t, stuck = start, 1, 0
    while t < n:
        seg_keys, seg_axes = _turn_away(rng) if stuck >= cfg.blocked else _segment(rng, cfg, state.pitch)
        stuck = 0
        for k, a in zip(seg_keys, seg_axes):
            if t >= n or stuck >= cfg.blocked:
                break
            keys[t], axes[t] = k, a
            nxt = advance(state, k, a, physics, world.maps(state))
            moved = _distance(state, nxt, world.config.map_size)
            stuck = stuck + 1 if k[:4].any() and moved < 0.25 * physics.walk else 0
            state, t = replace(nxt, theme=themes[t]), t + 1
    return keys, axes


def theme_plan(rng: np.random.Generator, cfg: EpisodeConfig) -> list[dict]:
    """Prompt entries: the opening theme at frame 0, then up to ``cfg.switches`` switches at chunk boundaries."""
    chunks = (cfg.frames + cfg.chunk_frames - 1) // cfg.chunk_frames
    count = min(int(rng.integers(0, cfg.switches + 1)), chunks - 1)
    at = sorted(rng.choice(np.arange(1, chunks), size=count, replace=False).tolist()) if count else []
    entries, theme = [], None
    for i, chunk in enumerate([0, *at]):
        theme = str(rng.choice([t for t in THEME_NAMES if t != theme]))
        entries.append({"from_frame": chunk * cfg.chunk_frames, "chunk": chunk,
                        "text": str(rng.choice(THEMES[theme].prompts)), "mode": "open" if i == 0 else cfg.switch_mode})
    return entries


def themes_per_frame(prompts: list[dict], frames: int) -> list[str]:
    """The theme in effect at each of ``frames`` frames: the prompt text's theme from its ``from_frame`` on."""
    out = [theme_for_prompt(prompts[0]["text"])] * frames
    for p in prompts[1:]:
        out[p["from_frame"]:] = [theme_for_prompt(p["text"])] * (frames - p["from_frame"])
    return out


def generate_episode(seed: int, cfg: EpisodeConfig = EpisodeConfig()) -> EpisodeData:
    """Plan and play one episode (deterministic for ``seed``)."""
    rng = np.random.default_rng([seed, 2])
    prompts = theme_plan(rng, cfg)
    themes = themes_per_frame(prompts, cfg.frames)
    world = World(cfg.world)
    start = world.start_state(seed, themes[0])
    keys, axes = control_plan(rng, cfg, world, start, themes)
    rollout = world.rollout(start, keys[1:], axes[1:], themes=themes[1:])
    return EpisodeData(frames=rollout.frames, keys=keys, axes=axes, prompts=prompts, states=rollout.states,
                       seed=seed)


def write_episode(writer: DatasetWriter, ep: EpisodeData, cfg: EpisodeConfig) -> Path:
    """Append one episode to a dataset directory; returns the episode directory."""
    out = writer.new_episode(seed=ep.seed, server=f"worldsim {__version__}",
                             model={"name": "toy-world", "ground_truth": True},
                             world={"start": asdict(ep.states[0]), "config": asdict(cfg.world),
                                    "chunk_frames": cfg.chunk_frames})
    for p in ep.prompts:
        out.add_prompt(p["from_frame"], p["chunk"], p["text"], p["mode"])
    for t, frame in enumerate(ep.frames):
        control = None if t == 0 else {"keys": ep.keys[t], "axes": ep.axes[t]}
        out.add_frame(frame, index=t, chunk=t // cfg.chunk_frames, control=control)
    out.close()
    truth = {"poses": np.array([(s.x, s.y, s.heading, s.pitch) for s in ep.states]),
             "jump": np.array([s.jump for s in ep.states], np.int64),
             "theme": np.array([THEME_NAMES.index(s.theme) for s in ep.states], np.int64)}
    write_npz(out.dir / "world.npz", truth)
    return out.dir


def episode_seeds(seed: int, count: int) -> list[int]:
    """Independent per-episode seeds derived from one dataset seed."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(count)]


def write_dataset(out: str | Path, episodes: int, cfg: EpisodeConfig = EpisodeConfig(), seed: int = 0,
                  workers: int = 1, progress: bool = False) -> list[Path]:
    """Generate ``episodes`` episodes into ``out`` (appending after existing ones); returns their directories.

    ``workers`` > 1 generates in that many processes (writing stays in this one, in order).
    """
    cam = cfg.world.camera
    writer = DatasetWriter(out, control_schema(frames_per_latent=1), fps=cfg.fps, height=cam.height,
                           width=cam.width)
    seeds = episode_seeds(seed, episodes)
    bar = tqdm(total=episodes, unit="episode", disable=not progress)
    dirs = []
    if workers > 1:
        with Pool(workers) as pool:
            for ep in pool.imap(partial(generate_episode, cfg=cfg), seeds):
                dirs.append(write_episode(writer, ep, cfg))
                bar.update()
    else:
        for s in seeds:
            dirs.append(write_episode(writer, generate_episode(s, cfg), cfg))
            bar.update()
    bar.close()
    return dirs
