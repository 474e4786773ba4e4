"""First-person height-field renderer ("voxel space"), vectorised with numpy.

Each screen column casts one ray; the ray samples the height map at fixed depths (geometric spacing, near to far).
A sample's top projects to a screen row; a pixel shows the nearest sample whose top lies above it. Taking the
running minimum of the projected tops along each ray (nearer samples occlude farther ones), the sample a pixel in
row r shows is simply the number of samples whose (running-minimum) top is still below r: one ``np.bincount`` of
the tops' rows and a reverse cumulative sum give it for every pixel at once. Pixels no sample covers are sky.
Colours fade into the sky colour of their row with distance (fog).

No per-pixel Python: about 25 numpy calls per frame on arrays of ~4k elements, with every index table built once.
Colours are gathered as packed 32-bit RGBX words (one gather instead of three).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .terrain import ThemeMaps, sky_rows


@dataclass(frozen=True)
class Camera:
    """Frame size and optics. Distances are in map cells."""

    height: int = 64
    width: int = 64
    fov_deg: float = 75.0  # horizontal field of view
    samples: int = 64  # depth samples per ray
    near: float = 1.0
    far: float = 180.0
    pitch_rows: float = 0.35  # horizon shift per unit of pitch, as a fraction of the frame height


@dataclass(frozen=True)
class Pose:
    """Where the eye is: map position (cells), heading (radians; 0 looks along +x, +pi/2 along +y),
    pitch in [-1, 1] (positive looks up) and eye height (cells above the map's zero level)."""

    x: float
    y: float
    heading: float
    pitch: float
    eye: float


class Renderer:
    """Renders a Pose in a ThemeMaps to an RGB frame [height, width, 3] uint8."""

    def __init__(self, camera: Camera = Camera()):
        self.camera = c = camera
        w, h, n = c.width, c.height, c.samples
        half = np.tan(np.radians(c.fov_deg) / 2)
        self.focal = (w / 2) / half  # pixels per unit of tangent (square pixels)
        self.cam_x = ((np.arange(w) + 0.5) / w * 2 - 1) * half  # [W] tangent offset of each column's ray
        self.depth = c.near * (c.far / c.near) ** (np.arange(n) / (n - 1))  # [N] sample depths (along the view)
        self.scale = self.focal / self.depth  # [N] pixels per cell of height at each depth
        self._fog: dict[float, np.ndarray] = {}  # fog distance -> [N+1] weight per sample (slot N: sky, 1)
        self.columns = np.arange(w)  # [W]
        self.slot_base = (np.arange(w) * (n + 1))[None, :]  # [1, W] first slot of each column in [W, N+1]
        self._cells = np.zeros((w, n + 1), np.int64)  # [W, N+1] map cell of each sample (slot N, the sky: 0)
        self._blend = np.empty((h, w, 4), np.float32)

    def horizon(self, pitch: float) -> float:
        c = self.camera
        return c.height / 2 + pitch * c.pitch_rows * c.height

    def render(self, maps: ThemeMaps, pose: Pose) -> np.ndarray:
        c, n = self.camera, self.camera.samples
        size, mask = maps.size, maps.size - 1
        cos, sin = np.cos(pose.heading), np.sin(pose.heading)
        # Ray directions: forward (cos, sin) plus right (-sin, cos) times the column's tangent. [W]
        rdx, rdy = cos - sin * self.cam_x, sin + cos * self.cam_x
        offset = 4.0 * size  # keeps sample coordinates positive before the integer cast (the map wraps)
        ix = (np.multiply.outer(rdx, self.depth) + (pose.x + offset)).astype(np.int64) & mask  # [W, N]
        iy = (np.multiply.outer(rdy, self.depth) + (pose.y + offset)).astype(np.int64) & mask
        cells = self._cells
        np.add(iy * size, ix, out=cells[:, :n])
        horizon = self.horizon(pose.pitch)
        # Screen row of each sample's top: horizon + (eye - height) * focal / depth; nearer samples occlude. [W, N]
        tops = (pose.eye - maps.height[cells[:, :n]]) * self.scale
        tops += horizon - 0.5
        np.minimum.accumulate(tops, axis=1, out=tops)
        np.ceil(tops, out=tops)
        np.clip(tops, 0, c.height, out=tops)  # rows [0, top) lie above the sample: it does not cover them
        # below[L, c]: samples of column c that leave exactly the rows [0, L) uncovered. [H+1, W]
        below = np.bincount((tops.astype(np.int64) * c.width + self.columns[:, None]).ravel(),
                            minlength=(c.height + 1) * c.width).reshape(c.height + 1, c.width)
        # depth[r, c] = #samples leaving row r uncovered = the nearest sample covering it (N: none, the sky).
        depth = np.cumsum(below[::-1], axis=0)[c.height - 1::-1]  # [H, W]
        fog = self._fog_weights(maps.fog)[depth]  # [H, W]
        packed = maps.color[cells.ravel()[depth + self.slot_base]]  # [H, W] uint32
        color = packed.view(np.uint8).reshape(c.height, c.width, 4)  # RGBX
        sky = sky_rows(maps, horizon, c.height)[:, None, :]  # [H, 1, 4]
        out = self._blend
        np.subtract(sky, color, out=out)
        np.multiply(out, fog[..., None], out=out)
        np.add(out, color, out=out)
        return out[..., :3].astype(np.uint8)

    def _fog_weights(self, distance: float) -> np.ndarray:
        """[N+1] float32 fog weight of each sample depth for a fog distance; slot N (the sky) is 1."""
        if distance not in self._fog:
            ramp = np.clip(self.depth / distance, 0, 1) ** 1.5
            self._fog[distance] = np.append(ramp, 1.0).astype(np.float32)
        return self._fog[distance]
