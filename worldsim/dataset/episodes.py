"""Recorded play as training data: episodes of frames, per-frame controls and per-chunk prompts.

numpy and json only (no torch), so recorders and quick analysis load it anywhere. The format is specified in
``docs/DATASET.md``:

    DIR/dataset.json                    {"format": "worldsim-episodes", "version": 1, "control", "fps", "height", "width"}
    DIR/episode_000000/meta.json        episode facts, prompts, shard list (rewritten after every shard)
    DIR/episode_000000/shard_000000.npz frames [n,H,W,3] uint8, frame_index [n], chunk [n], control_present [n],
                                        keys [n,K], axes [n,A], embedding [n,D] (when D > 0)

Every file is written to a temporary name and renamed, so a crash loses at most the shard being written.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_files import atomic_write

FORMAT = "worldsim-episodes"
VERSION = 1
SHARD_FRAMES = 64


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1)))


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an .npz, atomically (np.savez given a file object keeps the name as it is)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)


@dataclass
class Episode:
    """One loaded episode. ``keys[t]``/``axes[t]``/``embedding[t]`` is the control that led into frame t
    (applied between frames t-1 and t); ``control_present[t]`` is False where none did (frame 0 of a stream)."""

    frames: np.ndarray  # [N, H, W, 3] uint8
    frame_index: np.ndarray  # [N] int64 stream frame index (gaps: frames the recorder never received)
    chunk: np.ndarray  # [N] int64 chunk that produced the frame
    control_present: np.ndarray  # [N] bool
    keys: np.ndarray  # [N, K] float32
    axes: np.ndarray  # [N, A] float32
    embedding: np.ndarray | None  # [N, D] float32, None when D == 0
    prompts: list[dict]  # {"from_frame", "chunk", "text", "mode"}, in order
    meta: dict

    def __len__(self) -> int:
        return len(self.frames)


class EpisodeWriter:
    """Appends frames to one episode; ``close()`` (or a shard filling up) makes them durable."""

    def __init__(self, directory: Path, info: dict, meta: dict):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=False)
        self.info = info
        self.meta = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta, "frames": 0, "shards": [],
                     "prompts": []}
        control = info["control"]
        self._widths = {"keys": len(control["keys"]), "axes": len(control["axes"]),
                        "embedding": control["embedding_dim"]}
        self._rows: list[tuple] = []

    def add_prompt(self, from_frame: int, chunk: int, text: str, mode: str) -> None:
        self.meta["prompts"].append({"from_frame": from_frame, "chunk": chunk, "text": text, "mode": mode})

    def add_frame(self, frame: np.ndarray, index: int, chunk: int, control: dict[str, np.ndarray] | None) -> None:
        h, w = self.info["height"], self.info["width"]
        if frame.shape != (h, w, 3) or frame.dtype != np.uint8:
            raise ValueError(f"frame must be [{h}, {w}, 3] uint8, got {frame.dtype} {list(frame.shape)}")
        row = {}
        for name, width in self._widths.items():
            value = None if control is None else control.get(name)
            row[name] = np.zeros(width, np.float32) if value is None else np.asarray(value, np.float32).reshape(width)
        self._rows.append((np.array(frame), index, chunk, control is not None, row))
        if len(self._rows) >= SHARD_FRAMES:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            self._write_meta()
            return
        rows, self._rows = self._rows, []
        arrays = {"frames": np.stack([r[0] for r in rows]), "frame_index": np.array([r[1] for r in rows], np.int64),
                  "chunk": np.array([r[2] for r in rows], np.int64),
                  "control_present": np.array([r[3] for r in rows], bool)}
        for name, width in self._widths.items():
            if name != "embedding" or width:
                arrays[name] = np.stack([r[4][name] for r in rows]).reshape(len(rows), width)
        name = f"shard_{len(self.meta['shards']):06d}.npz"
        write_npz(self.dir / name, arrays)
        self.meta["shards"].append(name)
        self.meta["frames"] += len(rows)
        self._write_meta()

    def _write_meta(self) -> None:
        _write_json(self.dir / "meta.json", self.meta)

    def close(self) -> None:
        self.flush()


class DatasetWriter:
    """A dataset directory: checks (or creates) ``dataset.json`` and numbers new episodes after existing ones."""

    def __init__(self, root: str | Path, control: dict, fps: float, height: int, width: int):
        self.root = Path(root)
        self.info = {"format": FORMAT, "version": VERSION, "control": control, "fps": fps, "height": height,
                     "width": width}
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "dataset.json"
        if path.is_file():
            existing = json.loads(path.read_text())
            if {k: existing.get(k) for k in self.info} != self.info:
                raise ValueError(f"{path} describes another stream ({existing}); record into a new directory")
        else:
            _write_json(path, self.info)

    def new_episode(self, **meta) -> EpisodeWriter:
        n = len(list(self.root.glob("episode_*")))
        while (self.root / f"episode_{n:06d}").exists():
            n += 1
        return EpisodeWriter(self.root / f"episode_{n:06d}", self.info, meta)


def read_info(root: str | Path) -> dict:
    path = Path(root) / "dataset.json"
    info = json.loads(path.read_text())
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{VERSION} dataset (format={info.get('format')!r}, "
                         f"version={info.get('version')!r})")
    return info


def episode_dirs(root: str | Path) -> list[Path]:
    read_info(root)
    return sorted(p for p in Path(root).glob("episode_*") if (p / "meta.json").is_file())


def load_episode(directory: str | Path) -> Episode:
    d = Path(directory)
    info = read_info(d.parent)
    meta = json.loads((d / "meta.json").read_text())
    shards = [np.load(d / name) for name in meta["shards"]]
    c = info["control"]
    widths = {"keys": len(c["keys"]), "axes": len(c["axes"]), "embedding": c["embedding_dim"]}

    def cat(name: str, dtype, tail: tuple) -> np.ndarray:
        parts = [s[name] for s in shards]
        return np.concatenate(parts).astype(dtype) if parts else np.zeros((0, *tail), dtype)

    h, w = info["height"], info["width"]
    return Episode(frames=cat("frames", np.uint8, (h, w, 3)), frame_index=cat("frame_index", np.int64, ()),
                   chunk=cat("chunk", np.int64, ()), control_present=cat("control_present", bool, ()),
                   keys=cat("keys", np.float32, (widths["keys"],)), axes=cat("axes", np.float32, (widths["axes"],)),
                   embedding=cat("embedding", np.float32, (widths["embedding"],)) if widths["embedding"] else None,
                   prompts=meta["prompts"], meta=meta)


def load_dataset(root: str | Path) -> list[Episode]:
    return [load_episode(d) for d in episode_dirs(root)]

