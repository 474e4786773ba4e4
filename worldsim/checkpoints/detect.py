"""Which of the supported formats a path holds, decided from names and headers without reading any tensor."""

from __future__ import annotations

import os
from pathlib import Path

from .base import CheckpointError
from .diffusers_format import is_diffusers_config
from .wan_format import is_wan_config
from .weights_folder import CONFIG_NAME, read_config
from .worldsim_format import is_worldsim_file

PT_SUFFIXES = (".pt", ".pth")
LOOKED_FOR = ("a Wan2.1 folder (config.json of a WanModel + diffusion_pytorch_model*.safetensors), a diffusers "
              "WanTransformer3DModel folder (or a pipeline folder with transformer/), a Self-Forcing training "
              "checkpoint (*.pt, *.pth) and a worldsim *.safetensors file (with worldsim_format metadata)")


def resolve(path: str | os.PathLike) -> tuple[str, Path]:
    """(format, location): the location is the model folder for "wan"/"diffusers" and the file otherwise.

    A path to a file inside a model folder (its config.json or weights) stands for the folder, and the root of a
    diffusers pipeline stands for its ``transformer/`` folder.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file():
        if path.name == CONFIG_NAME or path.name.startswith("diffusion_pytorch_model"):
            return resolve(path.parent)
        if path.suffix in PT_SUFFIXES:
            return "self_forcing", path
        if path.suffix == ".safetensors" and is_worldsim_file(path):
            return "worldsim", path
        raise CheckpointError(f"{path}: not a recognised checkpoint; looked for {LOOKED_FOR}")
    folder = path
    if not (folder / CONFIG_NAME).is_file() and (folder / "transformer" / CONFIG_NAME).is_file():
        folder = folder / "transformer"
    if not (folder / CONFIG_NAME).is_file():
        raise CheckpointError(f"{path}: no checkpoint in this directory (no {CONFIG_NAME}); looked for {LOOKED_FOR}")
    config = read_config(folder)
    if is_diffusers_config(config):
        return "diffusers", folder
    if is_wan_config(config):
        return "wan", folder
    raise CheckpointError(f"{folder / CONFIG_NAME}: _class_name {config.get('_class_name')!r} is neither a Wan2.1 "
                          f"WanModel nor a diffusers WanTransformer3DModel; looked for {LOOKED_FOR}")


def detect_format(path: str | os.PathLike) -> str:
    """One of "wan", "diffusers", "self_forcing", "worldsim"; CheckpointError if the path is none of them."""
    return resolve(path)[0]
