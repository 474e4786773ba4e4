"""Frame payload formats of protocol v1: ``rgb24`` (raw H x W x 3 uint8, row-major) and ``jpeg`` (baseline JPEG).

Also reads start frames (rgb24, jpeg or png) sent by clients. numpy and Pillow only, no torch.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode(frame: np.ndarray, fmt: str, quality: int = 85):
    """[H, W, 3] uint8 -> payload: a zero-copy buffer for rgb24, JPEG bytes for jpeg."""
    if fmt == "rgb24":
        return memoryview(np.ascontiguousarray(frame)).cast("B")
    if fmt == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(frame, "RGB").save(buf, "JPEG", quality=quality)
        return buf.getvalue()
    raise ValueError(f"unknown frame format {fmt!r}")


def decode(payload, fmt: str, shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """Payload -> [H, W, 3] uint8 (read-only for rgb24: a view of the received buffer)."""
    if fmt == "rgb24":
        if shape is None:
            raise ValueError("rgb24 needs a shape [H, W, 3]")
        return np.frombuffer(payload, dtype=np.uint8).reshape(shape)
    if fmt in ("jpeg", "png"):
        with Image.open(io.BytesIO(bytes(payload))) as im:
            return np.asarray(im.convert("RGB"))
    raise ValueError(f"unknown frame format {fmt!r}")


def fit(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize [H, W, 3] uint8 to height x width (bicubic); unchanged if it already fits."""
    if frame.shape[:2] == (height, width):
        return frame
    return np.asarray(Image.fromarray(frame, "RGB").resize((width, height), Image.BICUBIC))
