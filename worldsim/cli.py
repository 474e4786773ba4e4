"""The ``worldsim`` command line: a thin face over the library.

Each subcommand is a :class:`Command` in :data:`COMMANDS` with ``add_arguments(parser)`` and ``run(args) -> int``.
To add one (``serve``, ``play``, ``generate``, ``train``, ...), write those two functions and append a
``Command``. Keep imports of heavy modules (torch, the model) inside ``run`` so ``worldsim --help`` stays fast,
and keep the real work in the library: ``run`` only parses, calls and reports.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from worldsim import __version__
from worldsim.pipeline.options import add_model_folder_arguments, default_threads
from worldsim.resources import configs_dir

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    # Passthrough commands receive every argument after their name, unparsed, in ``args.rest``
    # (their own ``-h``/``--help`` included).
    passthrough: bool = False
    # Commands with trailing positionals (``train``'s key=value overrides) also get the ones argparse could not place
    # after an option in ``args.rest``, instead of an "unrecognized arguments" error.
    extra_positionals: bool = False


# --- presets ---------------------------------------------------------------------------------------------------


def _presets_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def _preset_description(path: Path) -> str:
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    return str(data.get("description", "")) if isinstance(data, dict) else ""


def _presets_run(args: argparse.Namespace) -> int:
    from worldsim.model.config import load_preset, preset_dirs

    paths: dict[str, Path] = {}
    for d in preset_dirs():
        if d.is_dir():
            for p in sorted(d.glob("*.yaml")):
                paths.setdefault(p.stem, p)
    if not paths:
        print("no model presets found in: " + ", ".join(str(d) for d in preset_dirs()), file=sys.stderr)
        return 1

    rows, failed = [], 0
    for name, path in sorted(paths.items()):
        try:
            cfg = load_preset(path)  # by path: a name with a dot (wan2.1-...) would read as a file name
        except (OSError, ValueError) as e:
            print(f"error: preset {name!r}: {e}", file=sys.stderr)
            failed += 1
            continue
        rows.append((name, str(cfg.dim), str(cfg.num_layers), str(cfg.num_heads), _preset_description(path)))

    header = ("name", "dim", "layers", "heads", "description")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
    return 1 if failed else 0


# --- bench -----------------------------------------------------------------------------------------------------

BENCH_SCRIPT = REPO_ROOT / "benchmarks" / "stream_latency.py"


def _bench_arguments(parser: argparse.ArgumentParser) -> None:
    pass  # everything after ``bench`` goes to benchmarks/stream_latency.py (try ``worldsim bench --help``)


def _bench_run(args: argparse.Namespace) -> int:
    if not BENCH_SCRIPT.is_file():
        print(f"error: benchmark script not found: {BENCH_SCRIPT} "
              "(`worldsim bench` runs from a source checkout of worldsim)", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("worldsim_bench_stream_latency", BENCH_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        print(f"error: {BENCH_SCRIPT} defines no main(argv) function", file=sys.stderr)
        return 2
    rc = module.main(list(args.rest))
    return 0 if rc is None else int(rc)


# --- generate / inspect ----------------------------------------------------------------------------------------


def _generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path,
                   help="a Wan2.1-T2V-1.3B folder (as published, or its diffusers layout), a worldsim model package "
                        "(OUT/final of a worldsim train run) or a checkpoint file (default: the embedded toy-world "
                        "model)")
    p.add_argument("--prompt", help="text prompt (the prompt for chunk 0 when --schedule starts later)")
    p.add_argument("--schedule", type=Path, help="JSONL prompt schedule: worldsim {prompt, chunk|seconds, mode} "
                                                 "lines or LongLive {prompts, switch_frame_indices} lines")
    p.add_argument("--schedule-index", type=int, default=0, help="which line of a LongLive schedule (default 0)")
    p.add_argument("--switch-frames", type=lambda s: [int(x) for x in s.split(",") if x.strip()],
                   help="LongLive switch indices in latent frames, e.g. 40,80 (when the file has none)")
    p.add_argument("--switch-mode", default="recache", choices=("soft", "recache", "cut"),
                   help="how a scheduled prompt switch is made when its line names no mode (default recache)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=float, default=5.0, help="video length, rounded up to whole chunks (5)")
    length.add_argument("--chunks", type=int, help="video length in chunks (12 frames each, 9 for the first)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("video.mp4"), help="output mp4 (default video.mp4)")
    p.add_argument("--height", type=int, help="video height (default: a package's; 480 for a Wan2.1 folder)")
    p.add_argument("--width", type=int, help="video width (default: a package's; 832 for a Wan2.1 folder)")
    p.add_argument("--fps", type=float, help="frames per second (default: a package's, else 16)")
    p.add_argument("--crf", type=int, default=18, help="H.264 quality, lower is better (default 18)")
    p.add_argument("--window", type=int, help="rolling KV window in latent frames (default: a package's, else 21)")
    p.add_argument("--sink", type=int, help="sink latent frames kept forever (default: a package's, else 0)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp16", "fp32"),
                   help="DiT and decoder precision; auto: bf16 on a GPU, fp32 on the CPU")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, default=default_threads(),
                   help=f"torch CPU threads (default {default_threads()}: all cores but one, for the video encoder)")
    add_model_folder_arguments(p, decoder_default=None)


def _generate_run(args: argparse.Namespace) -> int:
    import torch

    from worldsim.model_package import default_package
    from worldsim.pipeline.generate import GenerateConfig, generate

    if args.threads < 1:
        print(f"error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        cfg = GenerateConfig(
            model=args.model or default_package(), prompt=args.prompt, out=args.out, seconds=args.seconds,
            chunks=args.chunks, seed=args.seed, schedule=args.schedule, schedule_index=args.schedule_index,
            switch_frames=args.switch_frames, switch_mode=args.switch_mode, checkpoint=args.checkpoint,
            use_ema=args.use_ema, decoder=args.decoder or "auto", taehv=args.taehv, height=args.height,
            width=args.width, fps=args.fps, window_frames=args.window, sink_frames=args.sink, device=args.device,
            dtype=args.dtype, attn=args.attn, compile=args.compile, offload_text_encoder=args.offload_text_encoder,
            crf=args.crf, progress=not args.quiet)
        r = generate(cfg)
    except (ValueError, RuntimeError, OSError) as err:  # model-folder and checkpoint errors are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {r.path}: {r.frames} frames {r.width}x{r.height} at {r.fps} fps ({r.frames / r.fps:.2f} s of video, "
          f"{r.chunks} chunks{', prompt switches at chunks ' + str(r.switch_chunks) if r.switch_chunks else ''}); "
          f"loading {r.load_s:.1f} s, streaming {r.stream_s:.1f} s = {r.realtime_fps:.2f} frames/s, "
          f"first frames after {r.first_frame_s:.2f} s")
    return 0


def _inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, help="model folder to check")
    p.add_argument("--checkpoint", type=Path, help="a Self-Forcing checkpoint to check too")
    p.add_argument("--taehv", type=Path, help="TAEHV weights to check (default: taew2_1.* in the folder)")


def _inspect_run(args: argparse.Namespace) -> int:
    from worldsim.pipeline.folders import ModelFolderError, find_model_folder

    try:
        folder = find_model_folder(args.model, checkpoint=args.checkpoint, taehv=args.taehv)
    except ModelFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(folder.report())
    return 1 if folder.missing("wan") else 0


# --- serve / keys / play ---------------------------------------------------------------------------------------
# The work lives in worldsim.serve.command and clients.play.command; both import torch/pygame only inside run.


def _serve_arguments(p: argparse.ArgumentParser) -> None:
    from worldsim.serve.command import add_serve_arguments

    add_serve_arguments(p)


def _serve_run(args: argparse.Namespace) -> int:
    from worldsim.serve.command import run_serve

    return run_serve(args)


def _keys_arguments(p: argparse.ArgumentParser) -> None:
    from worldsim.serve.command import add_keys_arguments

    add_keys_arguments(p)


def _keys_run(args: argparse.Namespace) -> int:
    from worldsim.serve.command import run_keys

    return run_keys(args)


def _gateway_arguments(p: argparse.ArgumentParser) -> None:
    from worldsim.serve.command import add_gateway_arguments

    add_gateway_arguments(p)


def _gateway_run(args: argparse.Namespace) -> int:
    from worldsim.serve.command import run_gateway

    return run_gateway(args)


def _play_arguments(p: argparse.ArgumentParser) -> None:
    from clients.play.command import add_arguments

    add_arguments(p)


def _play_run(args: argparse.Namespace) -> int:
    from clients.play.command import run

    return run(args)


# --- train -----------------------------------------------------------------------------------------------------


def _train_arguments(p: argparse.ArgumentParser) -> None:
    from worldsim.train.stages import STAGES  # a name table only: no torch

    p.add_argument("stage", choices=sorted(STAGES), help="what to train (README: Training)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="recipe overrides with dotted keys and YAML values, e.g. optim.lr=3e-4 data.batch_size=8")
    p.add_argument("--config", type=Path, help="recipe YAML (default configs/train/<stage>.yaml)")
    p.add_argument("--data", help="dataset directory (overrides data.path)")
    p.add_argument("--out", help="output directory: checkpoints, metrics, samples, final weights (overrides out)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("--max-steps", type=int, help="optimizer steps to train to (overrides max_steps)")
    p.add_argument("--max-minutes", type=float, help="also stop and export after this much training time, at a step "
                                                     "boundary (overrides max_minutes; 0: no limit)")
    p.add_argument("--init", type=Path, help="start the trained model from this checkpoint (any supported format; "
                                             "a missing control module starts at zero: the control fine-tune path; "
                                             "codec: a toy codec file)")


def _train_run(args: argparse.Namespace) -> int:
    import logging
    import os

    from worldsim.checkpoints import CheckpointError
    from worldsim.train.config import load_recipe
    from worldsim.train.trainer import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    recipe = args.config or configs_dir() / "train" / f"{args.stage.replace('-', '_')}.yaml"
    overrides = list(args.overrides) + list(args.rest)
    for key, value in (("data.path", args.data), ("out", args.out), ("max_steps", args.max_steps),
                       ("max_minutes", args.max_minutes)):
        if value is not None:
            overrides.append(f"{key}={value}")
    try:
        result = train(args.stage, load_recipe(recipe, overrides), resume=args.resume, init=args.init)
    except (ValueError, OSError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")):  # torchrun / accelerate launch: one summary, from the main process
        return 0
    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.last_metrics.items())
    print(f"trained {args.stage} to step {result.step}{': ' + shown if shown else ''}; outputs in {result.out}")
    return 0


# --- world (the toy game) ---------------------------------------------------------------------------------------


def _world_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="world_command", metavar="SUBCOMMAND", required=True)
    play = sub.add_parser("play", help="play the toy world in a window (WASD + mouse, 1-5 switch themes)")
    play.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    play.add_argument("--prompt", default="", help="picks the starting theme by keyword (default: forest)")
    play.add_argument("--fps", type=float, default=16.0, help="frame rate (default 16; 0: as fast as it renders)")
    play.add_argument("--scale", type=int, default=8, help="window pixels per frame pixel (default 8)")
    play.add_argument("--sensitivity", type=float, default=0.02, help="mouse pixels to axis units (default 0.02)")
    play.add_argument("--frames", type=int, default=0, help="stop after N frames (default 0: until closed)")
    play.add_argument("--headless", action="store_true", help="no window (SDL dummy video driver)")
    data = sub.add_parser("dataset", help="write toy-world episodes in the dataset format (docs/DATASET.md)")
    data.add_argument("--episodes", type=int, required=True, help="how many episodes to add")
    data.add_argument("--out", type=Path, required=True, help="dataset directory (created, or appended to)")
    data.add_argument("--frames-per-episode", type=int, default=192, help="frames per episode (default 192)")
    data.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    data.add_argument("--size", type=int, default=64, help="frame height and width (default 64)")
    data.add_argument("--chunk-frames", type=int, default=3, help="video frames per chunk (default 3)")
    data.add_argument("--switches", type=int, default=2,
                      help="at most this many theme switches per episode, drawn uniformly from 0 (default 2)")
    data.add_argument("--turn", type=float, metavar="P",
                      help="chance a segment turns while its keys are held (default 0.5; lower gives more walking "
                           "and strafing without turning)")
    data.add_argument("--idle", type=float, metavar="P", help="chance a segment holds nothing (default 0.15)")
    data.add_argument("--backward", type=float, metavar="P",
                      help="chance a walking segment walks back, S instead of W, running included (default: the "
                           "built-in mix: 3 of the 11 walking key combinations walk back; 0.5 balances the two)")
    data.add_argument("--workers", type=int, default=1, help="generating processes (default 1)")
    data.add_argument("--quiet", action="store_true", help="no progress bar")
    cal = sub.add_parser("calibrate-flow", help="set a reference flow's gains so that its stream moves as fast as the "
                                                "world under each held key and mouse axis (README, Training)")
    cal.add_argument("--flow", type=Path, required=True, help="reference flow file (`worldsim train flow`)")
    cal.add_argument("--codec", type=Path, required=True, help="the toy codec it is served with")
    cal.add_argument("--out", type=Path, required=True, help="calibrated flow file to write")
    cal.add_argument("--episodes", type=int, default=16, help="training-seed episodes measured (default 16)")
    cal.add_argument("--frames", type=int, default=12, help="frames each command is held (default 12)")
    cal.add_argument("--rounds", type=int, default=3, help="measure-and-rescale rounds (default 3)")


def _world_run(args: argparse.Namespace) -> int:
    if args.world_command == "play":
        from worldsim.world.play import PlayConfig, play

        shown = play(PlayConfig(seed=args.seed, prompt=args.prompt, fps=args.fps, scale=args.scale,
                                sensitivity=args.sensitivity, frames=args.frames, headless=args.headless))
        print(f"played {shown} frames")
        return 0
    if args.world_command == "calibrate-flow":
        return _calibrate_flow(args)
    from worldsim.world import Camera, WorldConfig
    from worldsim.world.episodes import EpisodeConfig, write_dataset

    if args.switches < 0:
        print(f"error: --switches must be >= 0, got {args.switches}", file=sys.stderr)
        return 2
    mix = {name: p for name, p in (("turn", args.turn), ("idle", args.idle), ("backward", args.backward))
           if p is not None}
    for name, p in mix.items():
        if not 0 <= p <= 1:
            print(f"error: --{name} is a probability in [0, 1], got {p}", file=sys.stderr)
            return 2
    cfg = EpisodeConfig(frames=args.frames_per_episode, chunk_frames=args.chunk_frames, switches=args.switches, **mix,
                        world=WorldConfig(camera=Camera(height=args.size, width=args.size)))
    try:
        dirs = write_dataset(args.out, args.episodes, cfg, seed=args.seed, workers=args.workers,
                             progress=not args.quiet)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {len(dirs)} episodes of {cfg.frames} frames ({args.size}x{args.size}) to {args.out}")
    return 0


def _calibrate_flow(args: argparse.Namespace) -> int:
    import torch

    from worldsim.checkpoints import CheckpointError
    from worldsim.codecs.toy_codec import ToyCodec
    from worldsim.model.reference_flow import ReferenceFlow
    from worldsim.train.calibrate import calibrate_gains

    for name in ("episodes", "frames", "rounds"):
        if getattr(args, name) < 1:
            print(f"error: --{name} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    torch.set_num_threads(default_threads())
    try:
        flow, codec = ReferenceFlow.load(args.flow), ToyCodec.load(args.codec)
    except (OSError, CheckpointError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    def show(round_: int, speeds) -> None:
        cells = (f"{s.control}{'-' if s.control in flow.control.axes and s.mirrored else ''} {s.stream:+.2f}/"
                 f"{s.world:+.2f}" for s in speeds)
        print(f"{'before' if round_ == 0 else f'round {round_}'}: " + ", ".join(cells), flush=True)

    try:
        report = calibrate_gains(flow, codec, args.episodes, args.frames, args.rounds, progress=show)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print("px per frame, stream/world; gains: " + ", ".join(f"{k} {v:.2f}" for k, v in report["gains"].items()))
    flow.save(args.out, calibration=report)
    print(f"wrote {args.out}")
    return 0


# --- dataset (engine captures, inspection) --------------------------------------------------------------------


def _size_arg(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 832x480, got {text!r}") from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return w, h


def _dataset_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="dataset_command", metavar="SUBCOMMAND", required=True)
    imp = sub.add_parser("import", help="convert an engine capture (docs/DATASET.md, 'Engine captures') into "
                                        "training episodes")
    imp.add_argument("capture", type=Path, help="capture directory (capture.json + one folder per episode)")
    imp.add_argument("out", type=Path, help="dataset directory (created, or appended to if its schema matches)")
    imp.add_argument("--size", type=_size_arg, help="resize frames to WxH (default: keep the captured size)")
    imp.add_argument("--prompt", default="", help="text for episodes whose frames name no prompt (default: none)")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    info = sub.add_parser("info", help="summarise a dataset directory: schema, size, episodes, frames, prompts")
    info.add_argument("directory", type=Path)


def _dataset_run(args: argparse.Namespace) -> int:
    from worldsim.dataset import episode_dirs, read_info

    try:
        if args.dataset_command == "import":
            from worldsim.dataset.capture import import_capture

            dirs = import_capture(args.capture, args.out, size=args.size, prompt=args.prompt,
                                  progress=not args.quiet)
            print(f"imported {len(dirs)} episode(s) into {args.out}")
            return 0
        info = read_info(args.directory)
        metas = [json.loads((d / "meta.json").read_text()) for d in episode_dirs(args.directory)]
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    c = info["control"]
    print(f"{args.directory}: {info['width']}x{info['height']} at {info['fps']:g} fps; keys {c['keys']}, axes "
          f"{c['axes']}, embedding {c['embedding_dim']}, {c['frames_per_latent']} frames per latent")
    print(f"{len(metas)} episode(s), {sum(m['frames'] for m in metas)} frames; prompts: "
          f"{sorted({p['text'] for m in metas for p in m['prompts']})}")
    return 0


# --- registry and entry point ----------------------------------------------------------------------------------

COMMANDS: list[Command] = [
    Command("presets", "list the model presets in configs/model", _presets_arguments, _presets_run),
    Command("bench", "streaming latency benchmark (arguments go to benchmarks/stream_latency.py)",
            _bench_arguments, _bench_run, passthrough=True),
    Command("serve", "run the generation daemon (ZeroMQ, protocol v1; see bridge/PROTOCOL.md)",
            _serve_arguments, _serve_run),
    Command("play", "the pygame client: play a stream with keyboard and mouse, switch prompts, record",
            _play_arguments, _play_run),
    Command("keys", "make CurveZMQ keys for serving beyond this machine", _keys_arguments, _keys_run),
    Command("gateway", "WebSocket gateway to a running daemon (browsers, Godot, Unity; bridge/PROTOCOL.md)",
            _gateway_arguments, _gateway_run),
    Command("generate", "text-to-video into an mp4 from a Wan2.1 folder (+ Self-Forcing checkpoint) or a model package",
            _generate_arguments, _generate_run),
    Command("inspect", "check a model folder: what is there, what is missing and how to download it",
            _inspect_arguments, _inspect_run),
    Command("train", "train a stage (codec, teacher, ode-init, self-forcing) from a recipe in configs/train",
            _train_arguments, _train_run, extra_positionals=True),
    Command("world", "the procedural toy world: play it, or write training episodes from it",
            _world_arguments, _world_run),
    Command("dataset", "training episodes: import an engine capture, or summarise a dataset directory",
            _dataset_arguments, _dataset_run),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worldsim", description="Real-time action-conditioned world simulator.")
    parser.add_argument("--version", action="version", version=f"worldsim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, add_help=not cmd.passthrough)
        cmd.add_arguments(p)
        p.set_defaults(_command=cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    cmd: Command | None = getattr(args, "_command", None)
    if cmd is None:
        parser.print_help()
        return 2
    if rest and not (cmd.passthrough or (cmd.extra_positionals and not any(a.startswith("-") for a in rest))):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    return cmd.run(args)


if __name__ == "__main__":
    sys.exit(main())
