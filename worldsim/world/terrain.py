"""The toy world's maps: a seeded, wrapping height field with objects, coloured by a theme.

The map is a square of ``size`` x ``size`` cells that tiles the plane (coordinates wrap), so the player can walk
forever. Geometry comes from the seed alone (a smooth noise field and jittered object sites); the theme decides
relief, flooding, object shapes and colours. Everything the renderer needs per frame is precomputed here as flat
lookup tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .themes import ObjectKind, Theme, get_theme

SITE_SPACING = 16  # cells between object sites (one jittered site per square of this size)
LIGHT = np.array([0.6, -0.8])  # direction the light comes from, in map (x, y)


@dataclass(frozen=True)
class ThemeMaps:
    """Lookup tables of one (seed, theme): what the renderer and the physics read."""

    size: int  # cells per side (a power of two)
    height: np.ndarray  # [size*size] float32: terrain + objects, what rays hit (index y*size + x)
    ground: np.ndarray  # [size, size] float32: terrain only, what the player stands on
    solid: np.ndarray  # [size, size] bool: cells raised by an object, which the player cannot enter
    color: np.ndarray  # [size*size] uint32: shaded colour of each cell's column, packed RGBX bytes
    sky: np.ndarray  # [2*SKY_SPAN, 4] float32: sky RGBX by screen row relative to the horizon (see sky_rows)
    fog: float  # distance in cells where the fog reaches the sky


SKY_SPAN = 256  # rows above and below the horizon covered by ThemeMaps.sky


def sky_rows(maps: ThemeMaps, horizon: float, height: int) -> np.ndarray:
    """Sky colour of each of ``height`` screen rows for a horizon at row ``horizon``: [height, 4] float32 RGBX."""
    start = SKY_SPAN - int(round(horizon))
    return maps.sky[start:start + height]


def smooth_noise(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """Periodic fractal noise [size, size] in [0, 1]: white noise with its spectrum shaped as 1/f^beta."""
    f = np.fft.fftfreq(size)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    radius[0, 0] = 1.0
    spectrum = np.fft.fft2(rng.standard_normal((size, size))) / radius ** (beta / 2)
    spectrum[0, 0] = 0.0
    field = np.fft.ifft2(spectrum).real
    return (field - field.min()) / (field.max() - field.min())


@dataclass(frozen=True)
class Sites:
    """Jittered object sites: one per SITE_SPACING square, with uniform draws that pick kind, size and presence."""

    x: np.ndarray  # [n] int cell
    y: np.ndarray  # [n] int cell
    u: np.ndarray  # [n, 4] float in [0, 1): presence, kind, radius, height


@lru_cache(maxsize=8)
def _geometry(seed: int, size: int) -> tuple[np.ndarray, np.ndarray, Sites]:
    """Seed-only geometry shared by every theme: (hills, ridges) noise [size, size] in [0, 1] and the sites."""
    rng = np.random.default_rng([seed, size])
    hills = smooth_noise(rng, size, beta=3.6)
    ridges = 1.0 - np.abs(2.0 * smooth_noise(rng, size, beta=3.0) - 1.0)
    n = size // SITE_SPACING
    gx, gy = np.meshgrid(np.arange(n), np.arange(n))
    jitter = rng.integers(3, SITE_SPACING - 3, size=(2, n * n))
    sites = Sites(x=gx.ravel() * SITE_SPACING + jitter[0], y=gy.ravel() * SITE_SPACING + jitter[1],
                  u=rng.random((n * n, 4)))
    return hills.astype(np.float32), ridges.astype(np.float32), sites


def _stamp(height: np.ndarray, color: np.ndarray, kind: ObjectKind, cx: int, cy: int, u: np.ndarray,
           base: float) -> None:
    """Raise one object at (cx, cy) on ground level ``base``, in place (wrapping at the map edge)."""
    size = height.shape[0]
    r = kind.radius[0] + u[2] * (kind.radius[1] - kind.radius[0])
    h = kind.height[0] + u[3] * (kind.height[1] - kind.height[0])
    if kind.shape == "wall":  # a block from this site to the next one, along x or y
        half = (SITE_SPACING / 2 + r, r) if u[2] < 0.5 else (r, SITE_SPACING / 2 + r)
        ox, oy = (SITE_SPACING // 2, 0) if u[2] < 0.5 else (0, SITE_SPACING // 2)
        cx, cy = cx + ox, cy + oy
    else:
        half = (r, r)
    ex, ey = int(np.ceil(half[0])), int(np.ceil(half[1]))
    dx, dy = np.meshgrid(np.arange(-ex, ex + 1), np.arange(-ey, ey + 1))  # [py, px]
    d = np.sqrt(dx ** 2 + dy ** 2) / r
    if kind.shape == "cone":
        profile = h * np.clip(1.0 - d, 0.0, None)
    elif kind.shape == "dome":
        profile = h * np.sqrt(np.clip(1.0 - d ** 2, 0.0, None))
    elif kind.shape == "cylinder":
        profile = np.where(d <= 1.0, h, 0.0)
    elif kind.shape in ("pillar", "wall"):
        profile = np.where((np.abs(dx) <= half[0]) & (np.abs(dy) <= half[1]), h, 0.0)
    else:
        raise ValueError(f"unknown object shape {kind.shape!r}")
    ys, xs = (cy + dy) % size, (cx + dx) % size
    top = base + profile
    inside = (profile > 0) & (top > height[ys, xs])
    height[ys[inside], xs[inside]] = top[inside]
    color[ys[inside], xs[inside]] = kind.color
    if kind.tip_color is not None:
        sel = inside & (profile > 0.6 * h)
        color[ys[sel], xs[sel]] = kind.tip_color


def _sky_table(theme: Theme) -> np.ndarray:
    """[2*SKY_SPAN, 4] float32 RGBX: sky_top far above the horizon, sky_horizon at it and below."""
    rel = np.arange(-SKY_SPAN, SKY_SPAN, dtype=np.float32)  # screen row minus horizon row (negative: above)
    t = np.clip(-rel / 40.0, 0.0, 1.0)[:, None]
    rgb = np.array(theme.sky_horizon, np.float32) * (1 - t) + np.array(theme.sky_top, np.float32) * t
    return np.concatenate([rgb, np.zeros_like(rgb[:, :1])], axis=1)


@lru_cache(maxsize=16)
def theme_maps(seed: int, theme_name: str, size: int = 512) -> ThemeMaps:
    """Build (and cache) the lookup tables of a seed's map in a theme."""
    if size & (size - 1) or size < 4 * SITE_SPACING:
        raise ValueError(f"map size must be a power of two >= {4 * SITE_SPACING}, got {size}")
    theme = get_theme(theme_name)
    hills, ridges, sites = _geometry(seed, size)
    shape = ridges * 0.6 + hills * 0.4 if theme.ridged else hills
    ground = shape * theme.relief
    flooded = shape < theme.flood_level
    ground = np.where(flooded, theme.flood_level * theme.relief, ground).astype(np.float32)

    # Ground colour: low -> high by terrain height, per-cell jitter (texture), floor tiles, flooded cells.
    rng = np.random.default_rng([seed, size, 7])
    t = shape[..., None]
    color = np.array(theme.ground_low, np.float32) * (1 - t) + np.array(theme.ground_high, np.float32) * t
    color *= 1.0 + theme.texture * (rng.random((size, size, 1), dtype=np.float32) - 0.5)
    if theme.tiles:
        iy, ix = np.indices((size, size))
        color *= np.where(((ix // theme.tiles + iy // theme.tiles) % 2 == 0), 1.0, 0.8)[..., None]
    flood = np.array(theme.flood_color, np.float32) * (1.0 + 0.3 * (rng.random((size, size, 1)) - 0.5))
    color = np.where(flooded[..., None], flood, color)

    # Objects, stamped on the terrain at their sites.
    height = ground.copy()
    weights = np.cumsum([k.weight for k in theme.objects])
    weights /= weights[-1]
    for x, y, u in zip(sites.x, sites.y, sites.u):
        if u[0] < theme.density and not flooded[y, x]:
            kind = theme.objects[int(np.searchsorted(weights, u[1], side="right"))]
            _stamp(height, color, kind, int(x), int(y), u, float(ground[y, x]))

    # Directional shading from the height gradient, then the flat tables.
    gx = (np.roll(height, -1, 1) - np.roll(height, 1, 1)) / 2
    gy = (np.roll(height, -1, 0) - np.roll(height, 1, 0)) / 2
    shade = np.clip(1.0 + 0.12 * (gx * LIGHT[0] + gy * LIGHT[1]), 0.45, 1.3)
    lit = np.where(flooded[..., None] & (height == ground)[..., None], color, color * shade[..., None])
    rgbx = np.zeros((size * size, 4), np.uint8)
    rgbx[:, :3] = np.clip(lit, 0, 255).reshape(-1, 3)
    return ThemeMaps(size=size, height=np.ascontiguousarray(height.ravel(), np.float32), ground=ground,
                     solid=height > ground + 0.5,
                     color=rgbx.view(np.uint32).ravel(), sky=_sky_table(theme), fog=theme.fog)
