"""A synthetic dataset for the training tests, written through worldsim.dataset (no toy world needed).

A square moves by the W/A/S/D keys held in the episode's control rows; the background colour follows the prompt
("red room" / "blue room", switching at a chunk boundary). 16x16 frames, frames_per_latent 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from worldsim.dataset import DatasetWriter

CONTROL = {"keys": ["W", "A", "S", "D"], "axes": ["mouse_dx"], "embedding_dim": 0, "frames_per_latent": 1}
SIZE = 16
COLOURS = {"red room": (200, 40, 40), "blue room": (40, 40, 200)}


def write_dataset(root: Path, episodes: int = 3, frames: int = 24, seed: int = 0, frames_per_latent: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(root, {**CONTROL, "frames_per_latent": frames_per_latent}, fps=16.0, height=SIZE,
                           width=SIZE)
    for e in range(episodes):
        ep = writer.new_episode(seed=e)
        switch = 12
        ep.add_prompt(0, 0, "red room", "open")
        ep.add_prompt(switch, 4, "blue room", "soft")
        y, x = 6, 6
        for i in range(frames):
            key = np.zeros(4, np.float32)
            if i:
                key[(i // 4 + e) % 4] = 1.0
            dy, dx = [(-1, 0), (0, -1), (1, 0), (0, 1)][int(np.argmax(key))] if i else (0, 0)
            y, x = int(np.clip(y + dy, 0, SIZE - 4)), int(np.clip(x + dx, 0, SIZE - 4))
            frame = np.empty((SIZE, SIZE, 3), np.uint8)
            frame[:] = COLOURS["red room" if i < switch else "blue room"]
            frame[y:y + 4, x:x + 4] = 255
            frame = np.clip(frame + rng.integers(0, 8, frame.shape), 0, 255).astype(np.uint8)
            control = None if i == 0 else {"keys": key, "axes": np.array([rng.uniform(-1, 1)], np.float32)}
            ep.add_frame(frame, i, i // 3, control)
        ep.close()
    return Path(root)


