"""Evaluate trained toy-world models against the world's ground truth (``worldsim.train.evaluate``).

    python benchmarks/toy_eval.py --codec runs/codec/final/codec.safetensors \\
        --model student=runs/self_forcing/final/generator.safetensors:4 \\
        --model teacher=runs/teacher/final/teacher.safetensors:16 --episodes 8 --chunks 60 --out runs/eval

Each model continues the first chunk of fresh held-out episodes for --chunks chunks twice, from the same context
with the same noise: driven by the episodes' controls and prompts, and with the controls mirrored (W<->S, A<->D,
mouse deltas negated). Reported per model:

- counterfactual controllability per kind (turn, move, strafe): over the control rows commanding one motion, the
  balanced, signed score of the pairs in which both rollouts move confidently (1: opposite directions, the true one
  as commanded; 0.5, exactly, for a model that ignores the controls) and the detection rate (pairs with confident
  motion in both rollouts); results.json has each outcome (correct, reversed, same, no_motion) and per-sign scores;
- motion agreement with the commanded direction (true controls only; its chance level is the mismatched row's);
- PSNR and SSIM against the ground truth of the first generated chunk, and per chunk;
- drift of image statistics over the first and the last two chunks (--chunks 60: 10x the toy recipe's training clips),
  paired with each episode's ground truth; and the theme drift: each frame's colour-histogram distance to its
  theme's look (the world's frames of the theme at held-out places), per window of --drift-window frames, first
  and last window and their ratio (the Self Forcing paper's drift, which a rollout that merely shows another part
  of the world keeps; the ground truth's own ratio is the drift-free level: above 1 when its episodes walk into
  other parts of the world), with a 90% bootstrap interval over the episodes, and each model's difference of ratios
  from the ground truth, from the world elsewhere (below) and from every other model with its interval (paired:
  both resampled alike, so an interval that excludes 0 separates them);
- seconds per chunk (denoising only).

Next to them, references scored the same way: the ground truth (the world under the true and the mirrored
controls), the codec's reconstruction, a frozen video, ``ignores_controls`` (the true ground truth as both
rollouts), ``mismatched`` (the ground truth scored against up to 7 other episodes' controls: the chance levels;
needs --episodes 2 or more), ``shuffled`` (frames in random order) and ``elsewhere`` (the world under the mirrored
controls scored as the true rollout: a drift-free video that goes elsewhere, the level of the paired drift).
Writes ``results.json`` and a ``strip_<model>.png`` per model (per episode: ground truth, generated, mirrored ground
truth, generated under the mirrored controls) to --out.
"""

from __future__ import annotations

import argparse
import sys

import torch

from worldsim.pipeline.options import parse_step_indices
from worldsim.train.evaluate import (EvalConfig, ModelSpec, evaluate, format_drift, format_held, format_prompted,
                                     format_switches, format_table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = EvalConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", action="append", required=True, metavar="NAME=PATH[:STEPS]",
                   help="a worldsim DiT .safetensors and its denoising steps per chunk (default 4, the served "
                        "few-step sampler; N > 4: N evenly spaced steps, as the teacher samples); repeatable")
    p.add_argument("--codec", required=True, help="the toy codec the models were trained with")
    p.add_argument("--episodes", type=int, default=d.episodes, help=f"held-out episodes (default {d.episodes})")
    p.add_argument("--switches", type=int, default=d.switches,
                   help="theme switches per held-out episode, at most (default 2, as the training data; 0: every "
                        "episode keeps one theme and counts for the theme drift)")
    p.add_argument("--drift-window", type=int, default=d.drift_window,
                   help=f"frames per window of the theme drift (default {d.drift_window}: a toy training clip)")
    p.add_argument("--chunks", type=int, default=d.chunks, help=f"generated chunks per episode (default {d.chunks}: "
                                                               "10x the toy recipe's 6-chunk training clips)")
    p.add_argument("--seed", type=int, default=d.seed, help=f"episode and noise seed (default {d.seed}; the "
                                                           "training data is generated with seed 0)")
    p.add_argument("--window", type=int, default=d.window_frames,
                   help=f"KV window in latent frames, every model (default {d.window_frames}: the training clip and "
                        "the default package's; a preset without a package serves 12)")
    p.add_argument("--sink", type=int, default=d.sink_frames,
                   help=f"sink frames, every model (default {d.sink_frames}, as the default package's; a preset "
                        "without a package serves 3)")
    p.add_argument("--strip-episodes", type=int, default=d.strip_episodes, help="episodes per PNG strip")
    p.add_argument("--strip-every", type=int, default=d.strip_every, help="every Nth frame in the strips")
    p.add_argument("--held-frames", type=int, default=12, metavar="N",
                   help="held-command probe: each kind's command and its mirror held N frames from every episode's "
                        "context (default 12; 0: off)")
    p.add_argument("--prompt-frames", type=int, default=320, metavar="N",
                   help="from-a-prompt probes: each theme streamed N frames from its prompt alone, and from a start "
                        "frame of its world, no controls held, as worldsim play opens (default 320: 20 s at 16 fps; "
                        "0: off)")
    p.add_argument("--switch-frames", type=int, default=96, metavar="N",
                   help="theme-switch probe: from each theme's start frame, a switch to the next theme by each mode, "
                        "then N frames (default 96: 6 s at 16 fps; 0: off)")
    p.add_argument("--prompt-streams", type=int, default=d.prompt_streams, metavar="N",
                   help=f"from-a-prompt probe: streams (noise seeds) per theme, averaged (default {d.prompt_streams})")
    p.add_argument("--control-guidance", type=float, metavar="S",
                   help="classifier-free guidance on the controls for every model (1: off; default: a package's "
                        "own sampler, else 1)")
    p.add_argument("--text-guidance", type=float, metavar="S",
                   help="classifier-free guidance on the prompt for every model (1: off; default: a package's own "
                        "sampler, else 1)")
    p.add_argument("--guided-steps", type=parse_step_indices, metavar="I,J,..",
                   help="the denoising steps guidance applies to, 0 = the first (default: a package's own, else all)")
    p.add_argument("--reference-start", type=int, metavar="K",
                   help="a frame-reference model's chunks start from their reference noised to denoising step K, "
                        "skipping the steps before it (0: every step from noise; default: a package's own, else 0)")
    p.add_argument("--chunk-latents", type=int, metavar="N",
                   help="latent frames per generated chunk (default: each model's training chunk; as serve's "
                        "--chunk-latents)")
    p.add_argument("--device", default=d.device, help="cpu, cuda, ...")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on a shared CPU)")
    p.add_argument("--out", default="runs/eval", help="results.json and PNG strips (default runs/eval)")
    args = p.parse_args(argv)
    if args.episodes < 1 or args.chunks < 2 or args.strip_every < 1 or args.prompt_streams < 1 or \
            (args.chunk_latents is not None and args.chunk_latents < 1) or args.switches < 0:
        p.error("--episodes must be >= 1, --chunks >= 2 (early and late spans), --strip-every, --prompt-streams "
                "and --chunk-latents >= 1, --switches >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        specs = [ModelSpec.parse(m) for m in args.model]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg = EvalConfig(episodes=args.episodes, chunks=args.chunks, seed=args.seed, window_frames=args.window,
                     sink_frames=args.sink, strip_episodes=args.strip_episodes, strip_every=args.strip_every,
                     held_frames=args.held_frames, prompt_frames=args.prompt_frames, prompt_streams=args.prompt_streams,
                     switch_frames=args.switch_frames, drift_window=args.drift_window, switches=args.switches,
                     control_guidance=args.control_guidance, text_guidance=args.text_guidance,
                     guided_steps=args.guided_steps, reference_start=args.reference_start,
                     chunk_frames=args.chunk_latents, device=args.device)
    results = evaluate(specs, args.codec, cfg, out=args.out)
    print(format_table(results))
    print(format_drift(results))
    if "held_commands" in results:
        print(format_held(results))
    for key in ("from_prompt", "from_start"):
        if key in results:
            print(format_prompted(results, key))
    if "theme_switch" in results:
        print(format_switches(results))
    print(f"results and strips in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
