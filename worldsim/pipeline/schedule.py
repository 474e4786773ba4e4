"""Prompt schedules: which prompt each chunk of a generated video is made under.

JSON Lines files, one object per line (blank lines ignored), in either of two formats:

- worldsim: ``{"prompt": "...", "chunk": 4}`` or ``{"prompt": "...", "seconds": 2.5}``, optionally with
  ``"mode": "soft" | "recache" | "cut"`` (how the switch is made; see ``StreamingSession.set_prompt``). The first
  line may omit the position (it starts at chunk 0). ``seconds`` is video time: the switch happens at the first chunk
  whose first frame is at or after it.
- LongLive: ``{"prompts": [p0, p1, ...], "switch_frame_indices": [40, 80, ...]}``, one video per line; the indices
  are latent frames (``len(prompts) - 1`` of them, given in the line or separately), and prompt k starts at chunk
  ``ceil(index / chunk_frames)``.

Switches take effect at chunk boundaries only.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..codecs.base import frames_for_chunk
from ..sampling.session import SWITCH_MODES


@dataclass(frozen=True)
class PromptSwitch:
    chunk: int
    prompt: str
    mode: str = "recache"


@dataclass(frozen=True)
class PromptSchedule:
    """Switches sorted by chunk; the first is at chunk 0 (the initial prompt, its mode unused)."""

    switches: tuple[PromptSwitch, ...]

    def __post_init__(self) -> None:
        chunks = [s.chunk for s in self.switches]
        if not chunks or chunks[0] != 0:
            raise ValueError("a prompt schedule needs a prompt for chunk 0")
        if chunks != sorted(set(chunks)):
            raise ValueError(f"prompt switches must be at increasing, distinct chunks, got {chunks}")
        bad = [s.mode for s in self.switches if s.mode not in SWITCH_MODES]
        if bad:
            raise ValueError(f"unknown switch mode {bad[0]!r}; choose one of {SWITCH_MODES}")

    @classmethod
    def single(cls, prompt: str) -> "PromptSchedule":
        return cls((PromptSwitch(0, prompt),))

    @property
    def prompts(self) -> list[str]:
        """Distinct prompts in order of first use."""
        return list(dict.fromkeys(s.prompt for s in self.switches))

    @property
    def last_chunk(self) -> int:
        return self.switches[-1].chunk

    def switch_at(self, chunk: int) -> PromptSwitch | None:
        return next((s for s in self.switches if s.chunk == chunk), None)


def chunk_at_seconds(seconds: float, *, fps: float, chunk_frames: int, temporal_stride: int) -> int:
    """The first chunk whose first video frame is at or after ``seconds``."""
    frame, chunk, start = seconds * fps, 0, 0
    while start < frame - 1e-9:
        start += frames_for_chunk(chunk_frames, temporal_stride, first=chunk == 0)
        chunk += 1
    return chunk


def load_schedule(path: str | os.PathLike, *, chunk_frames: int, fps: float, temporal_stride: int = 4,
                  first_prompt: str | None = None, default_mode: str = "recache", index: int = 0,
                  switch_frames: Sequence[int] | None = None) -> PromptSchedule:
    """Read a schedule file (either format). ``first_prompt`` supplies chunk 0 when the file starts later;
    ``index`` picks the line of a LongLive file; ``switch_frames`` gives LongLive's latent switch indices when the
    line has none."""
    path = Path(path)
    try:
        lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read the prompt schedule ({err})") from err
    rows = []
    for n, line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n}: each line must be a JSON object, got {type(row).__name__}")
        rows.append((n, row))
    if not rows:
        raise ValueError(f"{path}: the prompt schedule is empty")
    if any("prompts" in row for _, row in rows):
        switches = _longlive(path, rows, index, switch_frames, chunk_frames, default_mode)
    else:
        switches = [_worldsim_row(path, n, row, i == 0, chunk_frames, fps, temporal_stride, default_mode)
                    for i, (n, row) in enumerate(rows)]
    switches.sort(key=lambda s: s.chunk)
    if switches[0].chunk != 0:
        if first_prompt is None:
            raise ValueError(f"{path}: the schedule starts at chunk {switches[0].chunk}; give a prompt for chunk 0 "
                             f"(--prompt) or add a line for it")
        switches.insert(0, PromptSwitch(0, first_prompt, default_mode))
    try:
        return PromptSchedule(tuple(switches))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _worldsim_row(path: Path, n: int, row: dict, first: bool, chunk_frames: int, fps: float, temporal_stride: int,
                  default_mode: str) -> PromptSwitch:
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{path}:{n}: needs a non-empty \"prompt\" string")
    if "chunk" in row:
        chunk = row["chunk"]
        if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 0:
            raise ValueError(f"{path}:{n}: \"chunk\" must be an integer >= 0, got {chunk!r}")
    elif "seconds" in row:
        sec = row["seconds"]
        if not isinstance(sec, (int, float)) or isinstance(sec, bool) or sec < 0:
            raise ValueError(f"{path}:{n}: \"seconds\" must be a number >= 0, got {sec!r}")
        chunk = chunk_at_seconds(sec, fps=fps, chunk_frames=chunk_frames, temporal_stride=temporal_stride)
    elif first:
        chunk = 0
    else:
        raise ValueError(f"{path}:{n}: needs \"chunk\" or \"seconds\" (only the first line may omit both)")
    return PromptSwitch(chunk, prompt, row.get("mode", default_mode))


def _longlive(path: Path, rows: list, index: int, switch_frames: Sequence[int] | None, chunk_frames: int,
              default_mode: str) -> list[PromptSwitch]:
    if not 0 <= index < len(rows):
        raise ValueError(f"{path}: has {len(rows)} LongLive line(s); index {index} is out of range")
    n, row = rows[index]
    prompts = row.get("prompts")
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError(f"{path}:{n}: \"prompts\" must be a non-empty list of prompt strings")
    frames = row.get("switch_frame_indices", switch_frames)
    if isinstance(frames, str):
        frames = [int(f) for f in frames.split(",") if f.strip()]
    frames = list(frames or [])
    if len(frames) != len(prompts) - 1:
        raise ValueError(f"{path}:{n}: {len(prompts)} prompts need {len(prompts) - 1} switch frame indices (latent "
                         f"frames), got {len(frames)}; give them as \"switch_frame_indices\" or --switch-frames")
    if any(not isinstance(f, int) or f <= 0 for f in frames) or frames != sorted(frames):
        raise ValueError(f"{path}:{n}: switch frame indices must be increasing positive integers, got {frames}")
    chunks = [0] + [math.ceil(f / chunk_frames) for f in frames]
    return [PromptSwitch(c, p, default_mode) for c, p in zip(chunks, prompts)]
