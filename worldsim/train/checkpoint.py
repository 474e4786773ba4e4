"""Training checkpoints: safetensors files in ``OUT/checkpoints/step_XXXXXXX/``, complete or absent.

Layout of one checkpoint (every file safetensors; metadata carries what is not a tensor)::

    step_0000200/
      model-<name>.safetensors      full weights of each trained model (Wan names for the DiT)
      ema-<name>.safetensors        the EMA of the stage's ema_model
      optim-<name>.safetensors      optimizer state flattened: "state.<param>.<key>"; param_groups in metadata
      rng-rank<r>.safetensors       torch / CUDA / numpy / python RNG states of each process
      state.safetensors             {"step", "stage", "config"} in metadata; written last
    latest                          "step_0000200", replaced atomically after the directory is complete

Every process writes into ``step_XXXXXXX.tmp/``; when all are done the main process renames it to
``step_XXXXXXX/`` and then rewrites ``latest``. A kill at any point leaves either the new checkpoint or only the
previous ones; ``.tmp`` directories are ignored and removed by the next save.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from ..atomic_files import atomic_write, fsync_dir
from ..checkpoints.safetensors_io import read_metadata, read_tensors, save_tensors

STEP_DIR = re.compile(r"^step_(\d{7})$")


def step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:07d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories under ``root``, oldest first."""
    if not root.is_dir():
        return []
    dirs = [d for d in root.iterdir() if STEP_DIR.match(d.name) and (d / "state.safetensors").is_file()]
    return sorted(dirs, key=lambda d: d.name)


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint ``latest`` names if it is complete, else the newest complete one, else None."""
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        if STEP_DIR.match(named.name) and (named / "state.safetensors").is_file():
            return named
    found = complete_checkpoints(root)
    return found[-1] if found else None


# ---- optimizer state <-> flat tensors ------------------------------------------------------------------------
def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A (full, FQN-keyed) optimizer state dict -> tensors and metadata."""
    tensors, scalars = {}, {}
    for param, entries in state["state"].items():
        for key, v in entries.items():
            if torch.is_tensor(v):
                tensors[f"state.{param}.{key}"] = v
            else:
                scalars[f"{param}.{key}"] = v
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"param_groups": json.dumps(groups), "scalars": json.dumps(scalars)}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict:
    state: dict[str, dict] = {}
    for name, v in tensors.items():
        param, key = name.removeprefix("state.").rsplit(".", 1)
        state.setdefault(param, {})[key] = v
    for name, v in json.loads(meta["scalars"]).items():
        param, key = name.rsplit(".", 1)
        state.setdefault(param, {})[key] = v
    groups = json.loads(meta["param_groups"])
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


# ---- RNG states ----------------------------------------------------------------------------------------------
def rng_tensors() -> dict[str, torch.Tensor]:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    out = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
           "numpy_extra": torch.tensor([pos, has_gauss, gauss], dtype=torch.float64),
           "python": torch.tensor(py_state, dtype=torch.int64),
           "python_extra": torch.tensor([version, float("nan") if py_gauss is None else py_gauss], dtype=torch.float64)}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def set_rng(t: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(t["torch"])
    if "cuda" in t and torch.cuda.is_available():
        torch.cuda.set_rng_state(t["cuda"])
    pos, has_gauss, gauss = t["numpy_extra"].tolist()
    np.random.set_state(("MT19937", t["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    version, py_gauss = t["python_extra"].tolist()
    py_gauss = None if py_gauss != py_gauss else py_gauss  # NaN stands for None
    random.setstate((int(version), tuple(int(v) for v in t["python"].tolist()), py_gauss))


# ---- writing and reading ---------------------------------------------------------------------------------------
def begin(root: Path, step: int) -> Path:
    """The temporary directory every process writes its part of checkpoint ``step`` into."""
    tmp = step_dir(root, step).with_name(step_dir(root, step).name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    return tmp


def save_rank_rng(tmp: Path, rank: int) -> None:
    save_tensors(rng_tensors(), tmp / f"rng-rank{rank}.safetensors")


def finish(root: Path, tmp: Path, step: int, *, models: dict[str, dict], emas: dict[str, dict],
           optimizers: dict[str, dict], meta: dict[str, str], keep: int,
           model_meta: dict[str, dict[str, str]] | None = None) -> Path:
    """Main process: write the shared files into ``tmp``, publish it as ``step_XXXXXXX`` and point ``latest`` at it.
    model_meta: per model, the header of its weight files (a DiT's make them worldsim checkpoints of their own)."""
    model_meta = model_meta or {}
    for name, sd in models.items():
        save_tensors(sd, tmp / f"model-{name}.safetensors", model_meta.get(name))
    for name, sd in emas.items():
        save_tensors(sd, tmp / f"ema-{name}.safetensors", model_meta.get(name))
    for name, state in optimizers.items():
        tensors, m = flatten_optimizer(state)
        save_tensors(tensors, tmp / f"optim-{name}.safetensors", m)
    save_tensors({"step": torch.tensor(step)}, tmp / "state.safetensors", {**meta, "step": str(step)})
    final = step_dir(root, step)
    tmp.rename(final)
    fsync_dir(root)
    atomic_write(root / "latest", lambda p: p.write_text(final.name + "\n"))
    for old in complete_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob("step_*.tmp"):
        if stale != tmp:
            shutil.rmtree(stale, ignore_errors=True)
    return final


class Loaded:
    """A complete checkpoint opened for resuming."""

    def __init__(self, path: Path):
        self.path = path
        self.meta = read_metadata(path / "state.safetensors")
        self.step = int(self.meta["step"])

    def model(self, name: str) -> dict[str, torch.Tensor]:
        return read_tensors(self.path / f"model-{name}.safetensors")

    def ema(self, name: str) -> dict[str, torch.Tensor] | None:
        p = self.path / f"ema-{name}.safetensors"
        return read_tensors(p) if p.is_file() else None

    def optimizer(self, name: str) -> dict:
        p = self.path / f"optim-{name}.safetensors"
        return unflatten_optimizer(read_tensors(p), read_metadata(p))

    def rng(self, rank: int) -> dict[str, torch.Tensor] | None:
        p = self.path / f"rng-rank{rank}.safetensors"
        return read_tensors(p) if p.is_file() else None
