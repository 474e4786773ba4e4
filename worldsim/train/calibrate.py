"""Calibrate a reference flow's gains so that its served stream moves as fast as the world (`worldsim world
calibrate-flow`).

A flow fitted by squared error moves the picture less than the world does: under an uncertain speed (a walk into a
tree does not move; the ground's height changes the view) it prefers a short step to a misplaced one, and a served
stream loses part of each step in the codec's round trip. A ``frame_reference`` model renders the motion of its
reference and adds little of its own (docs/EXPERIMENTS.md, "Walking data balanced"), so the stream walks at the
flow's speed. This measures, on the world's own episodes (the training data's seeds, not the evaluation's), each
held command's speed in the world and in the reference stream alone (the context frame moved by the flow, decoded
and encoded again at every frame, as a session moves its reference) with the evaluation's motion cues, and scales
the gain of each key and axis by world / stream, for a few rounds (through the codec the speed is not linear in the
gain). Keys and axes that no held command measures (Space, Shift, mouse_dy) keep their gains.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..codecs.toy_codec import ToyCodec
from ..model.config import ControlConfig
from ..model.reference_flow import ReferenceFlow
from ..world import World
from ..world.episodes import EpisodeConfig
from ..world.game import control_schema
from .evaluate import HELD_COMMANDS, EvalConfig, held_controls, held_motion, held_out_episodes, stream_video

TRAINING_SEED = 0  # `worldsim world dataset`'s default seed: the calibration episodes are training episodes


@dataclass
class CommandSpeed:
    """One held command: its key or axis, and pixels per frame of its motion cue along the world's direction."""

    kind: str  # "turn" | "move" | "strafe" (the evaluation's motion cues)
    control: str  # the key or axis held (mouse_dx for both turn directions)
    mirrored: bool
    world: float
    stream: float


def _feature(flow: ReferenceFlow, control: str) -> int:
    """Index of a key or axis in the flow's gains (its keys first, then its axes)."""
    keys, axes = flow.control.keys, flow.control.axes
    return keys.index(control) if control in keys else len(keys) + axes.index(control)


class Calibration:
    """The held commands' world speeds on ``episodes`` training episodes (computed once), and the stream's."""

    def __init__(self, episodes: int = 16, frames: int = 12):
        self.frames = frames
        cfg = EvalConfig(episodes=episodes, chunks=frames, seed=TRAINING_SEED)
        self.episodes = held_out_episodes(cfg, 1)
        world = World(EpisodeConfig().world)
        self.commands = []  # (kind, control, mirrored, keys, axes, world sums [E])
        for kind, (command, mirror) in HELD_COMMANDS.items():
            for mirrored in (False, True):
                keys, axes = held_controls(kind, mirrored, frames)
                sums = np.array([held_motion(world.rollout(ep.state, keys[1:], axes[1:]).frames, kind, axes, ep.pitch)
                                 for ep in self.episodes])
                self.commands.append((kind, (mirror if mirrored else None) or command, mirrored, keys, axes, sums))

    def speeds(self, flow: ReferenceFlow, codec: ToyCodec) -> list[CommandSpeed]:
        """Each command's world and stream speed, px per frame, signed along the world's motion (episodes where the
        world does not move under the command count with sign +)."""
        def move(latent, controls):
            return flow.move_latents(latent, controls, codec)

        out = []
        for kind, control, mirrored, keys, axes, world in self.commands:
            stream = np.array([held_motion(stream_video(move, codec, ep.frames[0], keys, axes), kind, axes, ep.pitch)
                               for ep in self.episodes])
            sign = np.where(world < 0, -1.0, 1.0)
            out.append(CommandSpeed(kind, control, mirrored, float((world * sign).mean() / self.frames),
                                    float((stream * sign).mean() / self.frames)))
        return out


def calibrate_gains(flow: ReferenceFlow, codec: ToyCodec, episodes: int = 16, frames: int = 12, rounds: int = 3,
                    limits: tuple[float, float] = (0.25, 4.0), progress=None) -> dict:
    """Set ``flow.gain`` (in place) so each held command's stream speed meets the world's. Returns the report:
    the speeds before and after (``CommandSpeed`` as dicts), the gains per key and axis, and the settings.
    ``progress(round, speeds)`` is called with the speeds measured before (round 0) and after each round."""
    world = ControlConfig(**control_schema(frames_per_latent=1))
    if not flow.reads_controls_of(world):
        raise ValueError(f"the flow reads keys {list(flow.control.keys)} and axes {list(flow.control.axes)}; the "
                         f"calibration holds the toy world's ({list(world.keys)}, {list(world.axes)}): calibrate a "
                         "flow trained on toy-world data")
    cal = Calibration(episodes, frames)
    before = speeds = cal.speeds(flow, codec)
    if progress:
        progress(0, before)
    for r in range(rounds):
        ratios: dict[str, list[float]] = {}
        for s in speeds:
            if abs(s.stream) < 0.05 or np.sign(s.stream) != np.sign(s.world):
                continue  # the stream does not move this way: no gain can make it
            ratios.setdefault(s.control, []).append(s.world / s.stream)
        for control, rs in ratios.items():
            i = _feature(flow, control)
            flow.gain[i] = float(np.clip(flow.gain[i].item() * np.mean(rs), *limits))
        speeds = cal.speeds(flow, codec)
        if progress:
            progress(r + 1, speeds)
    return {"episodes": episodes, "frames": frames, "rounds": rounds, "seed": TRAINING_SEED,
            "gains": {name: round(flow.gain[_feature(flow, name)].item(), 4)
                      for name in (*flow.control.keys, *flow.control.axes)},
            "before": [vars(s) for s in before], "after": [vars(s) for s in speeds]}
