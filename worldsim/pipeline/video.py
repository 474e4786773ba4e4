"""Writing an mp4 as frames arrive: H.264 (libx264), yuv420p, through PyAV (FFmpeg in-process).

Frames are muxed chunk by chunk, so memory does not grow with the video. Closing the writer — also when generation
stops with an error or Ctrl-C — finalises the file, so what was written so far stays playable.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch


class Mp4Writer:
    """``with Mp4Writer(path, width, height, fps=16) as w: w.write(frames)``; frames [T, H, W, 3] uint8."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, *, fps: float = 16, crf: int = 18,
                 preset: str = "veryfast"):
        import av

        if width % 2 or height % 2 or width <= 0 or height <= 0:
            raise ValueError(f"H.264 in yuv420p needs an even, positive width and height, got {width}x{height}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.width, self.height = width, height
        self.frames = 0
        self._container = av.open(str(self.path), mode="w")
        self._stream = self._container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._stream.options = {"crf": str(crf), "preset": preset}
        self._frame_type = av.VideoFrame

    def write(self, frames: torch.Tensor | np.ndarray) -> None:
        arr = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"frames must be uint8 [T, {self.height}, {self.width}, 3], got {arr.dtype} "
                             f"{list(arr.shape)}")
        for image in arr:
            frame = self._frame_type.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            self._container.mux(self._stream.encode(frame))
            self.frames += 1

    def close(self) -> None:
        if self._container is not None:
            self._container.mux(self._stream.encode())  # flush the encoder
            self._container.close()
            self._container = None

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
