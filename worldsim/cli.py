"""The ``worldsim`` command line: a thin face over the library.

Each subcommand is a :class:`Command` in :data:`COMMANDS` with ``add_arguments(parser)`` and ``run(args) -> int``.
To add one (``serve``, ``play``, ``generate``, ``train``, ...), write those two functions and append a
``Command``. Keep imports of heavy modules (torch, the model) inside ``run`` so ``worldsim --help`` stays fast,
and keep the real work in the library: ``run`` only parses, calls and reports.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from worldsim import __version__

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


# --- registry and entry point ----------------------------------------------------------------------------------

COMMANDS: list[Command] = [
    Command("presets", "list the model presets in configs/model", _presets_arguments, _presets_run),
    Command("bench", "streaming latency benchmark (arguments go to benchmarks/stream_latency.py)",
            _bench_arguments, _bench_run, passthrough=True),
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
    if rest and not cmd.passthrough:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    return cmd.run(args)


if __name__ == "__main__":
    sys.exit(main())
