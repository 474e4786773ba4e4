"""Command-line options for loading a Wan2.1 model folder, shared by ``worldsim generate`` and ``worldsim serve``
so both take the same flags with the same meaning."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def default_threads() -> int:
    """Torch CPU threads by default: all cores but one. The spare core runs the socket loop, a local client or the
    video encoder, and torch threads that have to share a core with them stall for seconds."""
    return max(1, (os.cpu_count() or 2) - 1)


def add_model_folder_arguments(p: argparse._ActionsContainer, decoder_default: str | None) -> None:
    """--checkpoint, --no-ema, --decoder, --taehv, --attn, --compile, --offload-text-encoder (``decoder_default``
    None: the decoder is chosen by what --model is)."""
    p.add_argument("--checkpoint", type=Path, help="Self-Forcing checkpoint replacing the folder's DiT weights "
                                                   "(checkpoints/self_forcing_dmd.pt)")
    p.add_argument("--no-ema", dest="use_ema", action="store_false",
                   help="load the checkpoint's 'generator' instead of its EMA weights")
    p.add_argument("--decoder", default=decoder_default, choices=("wan", "taehv"),
                   help=f"Wan VAE or TAEHV (default {decoder_default or 'wan for a model folder'})")
    p.add_argument("--taehv", type=Path, help="TAEHV weights (default: taew2_1.pth or .safetensors in --model)")
    p.add_argument("--attn", default="auto", choices=("auto", "fa3", "fa2", "flex", "sdpa"),
                   help="attention backend (default auto)")
    p.add_argument("--compile", action="store_true", help="torch.compile the DiT blocks")
    p.add_argument("--offload-text-encoder", action="store_true",
                   help="keep UMT5 in CPU RAM; it visits the GPU only to encode prompts")


def parse_step_indices(text: str) -> tuple[int, ...]:
    """A command line's step list "0,3" -> (0, 3) (``guided_steps``), as an argparse ``type``."""
    try:
        return tuple(int(i) for i in text.split(",") if i.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated step indices such as 3 or 2,3, got {text!r}") \
            from None


def parse_denoising_steps(text: str) -> tuple[int, ...]:
    """A command line's denoising steps: "N" -> N evenly spaced ones from 1000 (4: 1000,750,500,250), or the
    timesteps themselves "1000,250", as an argparse ``type``."""
    from ..sampling.schedule import evenly_spaced_steps

    try:
        values = [int(v) for v in text.split(",") if v.strip()]
        return evenly_spaced_steps(values[0]) if len(values) == 1 else tuple(values)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"expected a step count such as 4 or timesteps such as 1000,250, got "
                                         f"{text!r}") from None
