"""Engine captures -> training episodes.

A game engine records its own rendered frames and the player's controls in a layout any engine writes easily
(image files and one JSON line per frame; docs/DATASET.md "Engine captures"); :func:`import_capture` checks it
and writes the episodes format that ``worldsim train`` reads:

    CAPTURE/capture.json          {"format": "worldsim-capture", "version": 1, "control": {...}, "fps": 16}
    CAPTURE/<episode>/frames.jsonl {"image": "000000.png", "keys": [...], "axes": [...], "embedding": [...],
                                    "prompt": "...", "index": 0}   one line per frame, in order

An episode is checked completely (every line, field and image header) before any of it is written, so a bad
capture stops with the file, line and field named and leaves the output directory as it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .episodes import DatasetWriter

FORMAT = "worldsim-capture"
VERSION = 1
FIELDS = {"image", "keys", "axes", "embedding", "prompt", "index"}


@dataclass
class CapturedFrame:
    image: Path
    index: int
    control: dict[str, np.ndarray] | None  # None: no control led into this frame (frame 0, or the player idle)
    prompt: str | None  # a new scene description from this frame on


def read_capture_info(root: Path) -> dict:
    path = root / "capture.json"
    if not path.is_file():
        raise ValueError(f"{path} is missing: a capture directory starts with capture.json (docs/DATASET.md)")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise ValueError(f"{path}: not a {FORMAT} v{VERSION} file (format={info.get('format')!r}, "
                         f"version={info.get('version')!r})")
    c = info.get("control")
    if not isinstance(c, dict) or not all(isinstance(c.get(k), list) for k in ("keys", "axes")):
        raise ValueError(f"{path}: 'control' must be {{\"keys\": [names], \"axes\": [names], \"embedding_dim\": D, "
                         "\"frames_per_latent\": N}} as in the daemon's welcome")
    if not isinstance(info.get("fps"), (int, float)) or info["fps"] <= 0:
        raise ValueError(f"{path}: 'fps' must be a positive number, got {info.get('fps')!r}")
    return info


def _row(value, width: int, where: str, field: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64) if isinstance(value, list) else None
    if arr is None or arr.shape != (width,) or not np.isfinite(arr).all():
        raise ValueError(f"{where}: '{field}' must be a list of {width} finite numbers, got {value!r:.80}")
    return arr.astype(np.float32)


def read_episode(directory: Path, control: dict) -> tuple[list[CapturedFrame], tuple[int, int]]:
    """Parse and check ``directory/frames.jsonl`` and each image's header; returns the frames and their (width,
    height). Raises ValueError naming the line and field."""
    from PIL import Image

    path = directory / "frames.jsonl"
    widths = {"keys": len(control["keys"]), "axes": len(control["axes"]),
              "embedding": int(control.get("embedding_dim", 0))}
    frames: list[CapturedFrame] = []
    size = None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        where = f"{path}:{n}"
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: each line must be a JSON object")
        unknown = set(entry) - FIELDS
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {sorted(unknown)} (known: {sorted(FIELDS)})")
        name = entry.get("image")
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ValueError(f"{where}: 'image' must name a file inside {directory}, got {name!r}")
        image = directory / name
        if not image.is_file():
            raise ValueError(f"{where}: image {image} does not exist")
        try:
            with Image.open(image) as im:
                if size is None:
                    size = im.size
                elif im.size != size:
                    raise ValueError(f"{where}: {image} is {im.size[0]}x{im.size[1]}, earlier frames "
                                     f"{size[0]}x{size[1]}")
        except OSError as e:
            raise ValueError(f"{where}: {image} is not a readable image ({e})") from None
        index = entry.get("index", frames[-1].index + 1 if frames else 0)
        if not isinstance(index, int) or isinstance(index, bool) or (frames and index <= frames[-1].index):
            raise ValueError(f"{where}: 'index' must be an integer above the previous frame's, got {index!r}")
        given = {k: entry[k] for k in ("keys", "axes", "embedding") if k in entry}
        if "embedding" in given and not widths["embedding"]:
            raise ValueError(f"{where}: 'embedding' given but capture.json's control has embedding_dim 0")
        control_row = None
        if given:
            missing = [k for k in ("keys", "axes", "embedding") if widths[k] and k not in given]
            if missing:
                raise ValueError(f"{where}: a control row needs every part of the schema; missing {missing}")
            control_row = {k: _row(v, widths[k], where, k) for k, v in given.items()}
        prompt = entry.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(f"{where}: 'prompt' must be a string, got {prompt!r:.80}")
        frames.append(CapturedFrame(image, index, control_row, prompt))
    if not frames:
        raise ValueError(f"{path}: no frames")
    return frames, size


def load_rgb(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """[H, W, 3] uint8 (alpha dropped); resized to ``size`` = (width, height) when given."""
    from PIL import Image

    with Image.open(path) as im:
        rgb = im.convert("RGB")
        if size is not None and rgb.size != size:
            rgb = rgb.resize(size, Image.Resampling.BICUBIC)
        return np.asarray(rgb, dtype=np.uint8)


def import_capture(src: str | Path, dst: str | Path, size: tuple[int, int] | None = None, prompt: str = "",
                   progress: bool = True) -> list[Path]:
    """Convert every episode under ``src`` (directories holding frames.jsonl, in name order) into episodes of the
    dataset ``dst``. ``size`` (width, height) resizes frames; otherwise the images' own size is kept. ``prompt`` is
    the text for episodes whose first frame names none. Returns the new episode directories."""
    from tqdm import tqdm

    src = Path(src)
    info = read_capture_info(src)
    control = {"keys": list(info["control"]["keys"]), "axes": list(info["control"]["axes"]),
               "embedding_dim": int(info["control"].get("embedding_dim", 0)),
               "frames_per_latent": int(info["control"].get("frames_per_latent", 4))}
    episodes = sorted(p.parent for p in src.glob("*/frames.jsonl"))
    if not episodes:
        raise ValueError(f"{src}: no episode directories (each holds a frames.jsonl)")
    checked = [read_episode(d, control) for d in episodes]  # everything checked before anything is written
    parsed = [frames for frames, _ in checked]
    if size is None:
        sizes = {d.name: s for d, (_, s) in zip(episodes, checked)}
        size = checked[0][1]
        if len(set(sizes.values())) > 1:
            raise ValueError(f"{src}: episodes differ in frame size ({sizes}); pass a size to resize them all")
    writer = DatasetWriter(dst, control, float(info["fps"]), height=size[1], width=size[0])
    out = []
    bar = tqdm(total=sum(len(f) for f in parsed), unit="frame", desc="import", disable=not progress)
    for directory, frames in zip(episodes, parsed):
        ep = writer.new_episode(source="capture", capture=str(directory.name), engine=info.get("engine"))
        text = frames[0].prompt if frames[0].prompt is not None else prompt
        ep.add_prompt(0, -1, text, "open")
        for i, f in enumerate(frames):
            if i and f.prompt is not None and f.prompt != text:
                text = f.prompt
                ep.add_prompt(i, -1, text, "capture")
            ep.add_frame(load_rgb(f.image, size), f.index, -1, f.control)
            bar.update()
        ep.close()
        out.append(ep.dir)
    bar.close()
    return out
