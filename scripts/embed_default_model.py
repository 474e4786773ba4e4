"""Make a trained model package the embedded default (``worldsim/default_model``, installed with the Python package
and served by ``worldsim serve`` / ``worldsim play --spawn-daemon`` without ``--model``).

    python scripts/embed_default_model.py runs/teacher/final --name "toy-world teacher" --steps 8 \\
        --control-guidance 2 --eval runs/eval/results.json

Copies the package's DiT, codec, ``--include`` files, reference flow (its own, or ``--reference-flow FILE`` from
``worldsim train flow``) and start frames (its own, or with ``--theme-starts`` the toy world's first frame of each
theme at a held-out place, for the theme's first prompt: the default palette of ``worldsim play``), keeps its
manifest, serves it with ``--steps``
evenly spaced denoising steps and ``--control-guidance`` / ``--text-guidance`` / ``--guided-steps`` (speed / quality
choices: the package's own sampler otherwise), and rewrites the provenance so that it names no path of the machine
it was trained on (file names stay). Refuses a result over the size budget.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from worldsim.atomic_files import atomic_write
from worldsim.model_package import DEFAULT_PACKAGE, MANIFEST, read_package
from worldsim.pipeline.options import parse_denoising_steps, parse_step_indices
from worldsim.runtime import SAMPLER_OVERRIDES
from worldsim.sampling.schedule import SamplerConfig
from worldsim.train.evaluate import theme_start
from worldsim.world.themes import THEMES

SIZE_BUDGET = 30 * 2**20  # bytes: the default model ships inside the wheel


def portable(value):
    """``value`` with every absolute path string replaced by its file name (recursively)."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if isinstance(value, str) and Path(value).is_absolute():
        return Path(value).name
    return value


def evaluation_summary(results: dict, model: str | None = None) -> dict:
    """The headline numbers of a toy_eval results.json (its per-chunk curves stay in the file): of ``model`` only,
    or of every model of the run."""
    cfg = results["config"]
    out = {"config": {k: cfg[k] for k in ("episodes", "chunks", "seed", "window_frames", "held_frames",
                                          "prompt_frames", *SAMPLER_OVERRIDES) if k in cfg}}
    models = results["models"]
    if model is not None:
        if model not in models:
            raise ValueError(f"the evaluation has no model {model!r} (it has {', '.join(models)})")
        models = {model: models[model]}
    for name, r in models.items():
        out[name] = {"counterfactual": {k: {"score": v["score"], "detection_rate": v["detection_rate"]}
                                        for k, v in r["counterfactual"].items()},
                     "psnr_first": r["psnr"]["first"],
                     "drift_moments": [r["drift_moments"]["early"], r["drift_moments"]["late"]],
                     "held_commands": results.get("held_commands", {}).get(name)}
        if "drift_theme" in r:  # distance to the theme's look, first and last window
            out[name]["drift_theme"] = [r["drift_theme"]["first"], r["drift_theme"]["last"]]
        for key in ("from_prompt", "from_start"):  # histogram distance to each theme's look, first and last frames
            if key in results:
                r = results[key]["models"][name]
                out[name][key] = {"early": r["early"], "late": r["late"],
                                  "per_theme": {t: [v["early"], v["late"]] for t, v in r["per_theme"].items()}}
                if "grid" in r:  # the token grid, first and last frames
                    out[name][key]["token_grid"] = [r["grid"]["early"], r["grid"]["late"]]
    return out


def parse_places(text: str) -> dict[str, int]:
    """``--theme-starts``: one place for every theme ("20000") or one per theme ("forest=20000,desert=20001,...")."""
    if "=" not in text:
        return dict.fromkeys(THEMES, int(text))
    places = {}
    for item in text.split(","):
        name, _, place = item.partition("=")
        if name.strip() not in THEMES:
            raise argparse.ArgumentTypeError(f"unknown theme {name.strip()!r}; the themes are {', '.join(THEMES)}")
        places[name.strip()] = int(place)
    if set(places) != set(THEMES):
        raise argparse.ArgumentTypeError(f"give a place for every theme ({', '.join(THEMES)})")
    return places


def theme_starts(places: dict[str, int]) -> dict[str, tuple[str, np.ndarray]]:
    """Per toy-world theme: its first prompt and the world's first frame of the theme at its place."""
    return {name: (theme.prompts[0], theme_start(name, places[name])) for name, theme in THEMES.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("package", type=Path, help="a trained model package (OUT/final of worldsim train ... package=true)")
    p.add_argument("--name", required=True, help="the name welcome and the start-up log give the model")
    p.add_argument("--steps", type=parse_denoising_steps, metavar="N|T1,T2,..",
                   help="serve with these denoising steps: a count, evenly spaced, or the timesteps (e.g. 1000,250)")
    p.add_argument("--control-guidance", type=float, help="serve with this control guidance (sampling/session.py)")
    p.add_argument("--text-guidance", type=float, help="serve with this text guidance (sampling/session.py)")
    p.add_argument("--guided-steps", type=parse_step_indices, metavar="I,J,..",
                   help="guide only these denoising steps, 0 = the first (sampling/session.py)")
    p.add_argument("--hold-idle-reference", action=argparse.BooleanOptionalAction,
                   help="keep a frame_reference model's reference while nothing is held (SamplerConfig."
                        "hold_idle_reference; for worlds that do not move by themselves; default: the package's)")
    p.add_argument("--reference-start", type=int, metavar="K",
                   help="serve with chunks that start from their reference noised to denoising step K (SamplerConfig."
                        "reference_start; default: the package's)")
    p.add_argument("--window-frames", type=int, metavar="N",
                   help="serve with a rolling KV window of N latent frames (the evaluation's; a trained package "
                        "records the window it was rolled out through, else its clips' length)")
    p.add_argument("--reference-flow", type=Path, metavar="FILE",
                   help="serve with this reference flow (worldsim train flow's OUT/final/flow.safetensors) instead of "
                        "the package's own")
    p.add_argument("--theme-starts", type=parse_places, metavar="PLACE|THEME=PLACE,..",
                   help="start frames: each toy-world theme's first frame at this seeded place, or at its own (use "
                        "places no training or evaluation episode starts at: the data uses seeds from 0, toy_eval "
                        "from 10000), for the theme's first prompt")
    p.add_argument("--include", type=Path, action="append", default=[], metavar="FILE",
                   help="also copy FILE into the package as it is (e.g. the teacher a student was distilled from, so "
                        "that the README's distillation commands run from the package); repeatable")
    p.add_argument("--eval", type=Path, help="toy_eval results.json to record in the provenance")
    p.add_argument("--eval-model", metavar="NAME", help="record only this model of --eval (default: all of them)")
    p.add_argument("--out", type=Path, default=DEFAULT_PACKAGE, help=f"(default {DEFAULT_PACKAGE})")
    args = p.parse_args(argv)

    pkg = read_package(args.package)
    manifest = json.loads(json.dumps(pkg.manifest))
    evaluation = None
    if args.eval:  # checked before the current default is replaced
        try:
            evaluation = evaluation_summary(json.loads(args.eval.read_text()), args.eval_model)
        except (OSError, ValueError, KeyError) as e:
            print(f"error: {args.eval}: {e}", file=sys.stderr)
            return 1
    if args.steps:
        manifest["sampler"]["denoising_steps"] = list(args.steps)
    for key in (*SAMPLER_OVERRIDES, "hold_idle_reference"):
        if getattr(args, key) is not None:
            manifest["sampler"][key] = getattr(args, key)  # a tuple of guided steps is written as a JSON list
    try:
        SamplerConfig(**manifest["sampler"])
    except ValueError as e:
        print(f"error: the package's sampler with these options: {e}", file=sys.stderr)
        return 1
    flow = args.reference_flow or pkg.reference_flow
    if flow is not None and not Path(flow).is_file():
        print(f"error: --reference-flow {flow} does not exist", file=sys.stderr)
        return 1
    files = [pkg.dit] + ([pkg.file(pkg.codec["path"])] if "path" in pkg.codec else []) + ([flow] if flow else [])
    missing = [f for f in args.include if not f.is_file()]
    if missing or len({f.name for f in files + args.include}) < len(files) + len(args.include):
        print(f"error: --include names {missing[0]}, which does not exist" if missing else
              "error: --include names a file whose name the package already uses", file=sys.stderr)
        return 1
    files += args.include
    size = sum(f.stat().st_size for f in files)
    if size > SIZE_BUDGET:
        print(f"error: the package's weights take {size / 2**20:.1f} MiB, over the {SIZE_BUDGET / 2**20:.0f} MiB "
              "budget of the embedded default", file=sys.stderr)
        return 1
    starts = theme_starts(args.theme_starts) if args.theme_starts is not None else \
        {path.stem.removeprefix("start_"): (prompt, np.asarray(Image.open(path).convert("RGB")))
         for prompt, path in pkg.starts.items()}  # read before the current default is replaced
    if args.out.resolve() == pkg.root.resolve():
        print(f"error: --out {args.out} is the package itself; write elsewhere (it is replaced)", file=sys.stderr)
        return 1
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    for f in files:
        shutil.copyfile(f, args.out / ("reference_flow.safetensors" if f == flow else f.name))
    manifest.pop("starts", None)
    if starts:
        manifest["starts"] = {}
        for stem, (prompt, image) in starts.items():
            Image.fromarray(image).save(args.out / f"start_{stem}.png")
            manifest["starts"][prompt] = f"start_{stem}.png"
    manifest["dit"] = pkg.dit.name
    if "path" in manifest["codec"]:
        manifest["codec"]["path"] = Path(manifest["codec"]["path"]).name
    if flow is not None:
        manifest["reference_flow"] = "reference_flow.safetensors"
    if args.window_frames is not None:
        manifest.setdefault("cache", {})["window_frames"] = args.window_frames
    prov = portable(manifest["provenance"])
    prov["name"] = args.name
    if args.theme_starts is not None:
        prov["starts"] = {"toy_world_places": args.theme_starts}
    if evaluation is not None:
        prov["evaluation"] = evaluation
    manifest["provenance"] = prov
    atomic_write(args.out / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1) + "\n"))
    read_package(args.out)
    print(f"wrote {args.out} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
