"""Does a frame_reference toy model render the motion its reference frame carries? (the held-command probe, three ways)

    python benchmarks/reference_probe.py --model worldsim/default_model --codec worldsim/default_model/codec.safetensors

Each held-out episode's last context frame is continued for --frames frames under a held command (W, D, mouse
right) and its mirror, three ways: ``own``, as served (each frame's reference is the model's previous frame);
``answer``, the reference replaced by the world's frame being generated (through the codec), under the same
controls (a package's reference flow left out: the answer has moved already); ``answer_idle``, the same with no
key or mouse held; ``warp_alone`` / ``flow_alone``, for a model with a reference warp or a package with a
reference flow, that alone iterated on its own output (no DiT); ``round_trip``: the codec's decode and encode alone,
iterated with nothing moved (any motion it shows is the codec's own). For a package with a reference flow the
``own`` stream is also split into its two halves: ``own_reference``, how far each frame's reference moved from the
model's previous frame (decoded), and ``own_vs_reference``, how far the model's frame moved from its reference.
Printed: pixels per frame of the cue each command moves (the held-command probe of ``worldsim.train.evaluate``),
along the world's direction, under the command and its mirror, with the world's own. A model that copies its
reference streams at about the codec's speed in the ``answer`` rows whatever it learned of the controls; the
``own`` rows show how much of the motion it predicts.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from worldsim.codecs.toy_codec import ToyCodec
from worldsim.model.control import Controls
from worldsim.train.evaluate import (EvalConfig, Generator, ModelSpec, decoded_frames, episode_controls, held_controls,
                                     held_motion, held_out_episodes, held_summary, stream_video, to_tensor)
from worldsim.world import World
from worldsim.world.episodes import EpisodeConfig
from worldsim.world.metrics import KINDS, estimate_motion, horizons

MODES = ("own", "answer", "answer_idle")


@torch.no_grad()
def held_video(g: Generator, codec: ToyCodec, ep, keys: np.ndarray, axes: np.ndarray, truth: np.ndarray, mode: str,
               seed: int, references: list | None = None) -> np.ndarray:
    """The context frame and the model's frames under held controls [frames + 1, ...], with ``mode``'s reference;
    ``references``: a list that receives each frame's reference as the package's flow moved it (``own`` only),
    decoded [H, W, 3]."""
    frames = len(keys) - 1
    held = replace(ep, keys=keys, axes=axes, prompts=[ep.prompts[0]] * (frames + 1))
    context = codec.encode(to_tensor(ep.frames[:1], "cpu"))  # [1, C, 1, h, w]
    answers = codec.encode(to_tensor(truth, "cpu"))  # [1, C, frames + 1, h, w]
    session = g.session(ep.prompts[0], (context.shape[1], *context.shape[3:]), seed)
    session.push_context(context, episode_controls(held, 0, 1, "cpu"))
    if mode != "own":
        session.move_reference = None  # a package's reference flow would move the answer a second time
    elif references is not None and g.move_reference is not None:
        def recorded(last: torch.Tensor, controls: Controls) -> torch.Tensor:
            moved = g.move_reference(last, controls)
            references.append(decoded_frames(codec.decode(moved))[0])
            return moved
        session.move_reference = recorded
    out = [ep.frames[0]]
    for t in range(1, frames + 1):
        controls = episode_controls(held, t, t + 1, "cpu")
        if mode != "own":
            session._last = answers[:, :, t:t + 1]  # the reference the next step reads (the session's last frame)
        if mode == "answer_idle":
            controls = replace(controls, keys=torch.zeros_like(controls.keys), axes=torch.zeros_like(controls.axes))
        out.append(decoded_frames(codec.decode(session.step(controls)))[0])
    return np.stack(out)


def step_motion(starts: np.ndarray, ends: np.ndarray, kind: str, axes: np.ndarray, pitch: float) -> float:
    """The ``kind`` cue's motion from each frame of ``starts`` [N, H, W, 3] to the same frame of ``ends``, summed
    (frame i is stream frame i + 1: its horizon), in pixels."""
    rows = horizons(axes, pitch=pitch)
    return float(sum(getattr(estimate_motion(a, b, rows[i + 1]), kind) for i, (a, b) in enumerate(zip(starts, ends))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a toy model package (its own sampler) or DiT checkpoint")
    p.add_argument("--codec", required=True, help="the toy codec the model was trained with")
    p.add_argument("--episodes", type=int, default=6)
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = EvalConfig(episodes=args.episodes, chunks=args.frames)
    codec = ToyCodec.load(args.codec)
    g = Generator(ModelSpec("model", Path(args.model)), codec, Path(args.codec), cfg)
    if g.n != 1 or not g.model.cfg.frame_reference:
        raise SystemExit("the probe needs a frame_reference model generating one frame per chunk")
    world = World(EpisodeConfig().world)
    episodes = held_out_episodes(cfg, 1)
    alone = {}
    if g.model.cfg.reference_warp:
        alone["warp_alone"] = lambda latent, c: g.model.reference_warp(latent, *g.model.control_embedding.features(
            c, 1, 1))
    if g.move_reference is not None:
        alone["flow_alone"] = g.move_reference
    alone["round_trip"] = lambda latent, c: codec.encode(codec.decode(latent))
    halves = ("own_reference", "own_vs_reference") if g.move_reference is not None else ()
    for kind in KINDS:
        sums = {mode: np.zeros((len(episodes), 2)) for mode in ("world", *MODES, *halves, *alone)}
        for i, ep in enumerate(episodes):
            for j, mirrored in enumerate((False, True)):
                keys, axes = held_controls(kind, mirrored, args.frames)
                truth = world.rollout(ep.state, keys[1:], axes[1:]).frames  # [frames + 1, H, W, 3]
                sums["world"][i, j] = held_motion(truth, kind, axes, ep.pitch)
                for mode in MODES:
                    references: list[np.ndarray] = []
                    video = held_video(g, codec, ep, keys, axes, truth, mode, cfg.seed + i, references)
                    sums[mode][i, j] = held_motion(video, kind, axes, ep.pitch)
                    if mode == "own" and halves:
                        if len(references) != args.frames:
                            raise SystemExit(f"the flow moved {len(references)} references in {args.frames} frames")
                        refs = np.stack(references)  # [frames, H, W, 3]: the reference of stream frames 1..
                        sums[halves[0]][i, j] = step_motion(video[:-1], refs, kind, axes, ep.pitch)
                        sums[halves[1]][i, j] = step_motion(refs, video[1:], kind, axes, ep.pitch)
                for mode, move in alone.items():
                    sums[mode][i, j] = held_motion(stream_video(move, codec, ep.frames[0], keys, axes), kind, axes,
                                                   ep.pitch)
        for mode, s in sums.items():
            along = held_summary(s, sums["world"], args.frames)["px_per_frame"]
            print(f"{kind:7s} {mode:16s} {along[0]:+.2f} / {along[1]:+.2f} px per frame (command / mirror)", flush=True)


if __name__ == "__main__":
    main()
