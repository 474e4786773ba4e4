"""Visual themes of the toy world and the keyword match that picks one from a text prompt.

A theme fixes the palette (sky, ground, fog), the relief of the terrain, what fills its low ground (ponds, ice,
lava), and which objects stand on it. The geometry underneath (noise field, object sites) comes from the seed, so
switching theme mid-episode keeps the layout and changes how everything looks: a visible prompt switch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ObjectKind:
    """An object shape stamped into the height map. Sizes are in map cells."""

    shape: str  # "cone" | "dome" | "pillar" (square) | "cylinder" | "wall" (a block joining two sites)
    radius: tuple[float, float]  # min, max
    height: tuple[float, float]  # min, max
    color: RGB
    tip_color: RGB | None = None  # colour of the top 40 % (snow caps, pillar capitals)
    weight: float = 1.0  # relative frequency among the theme's objects


@dataclass(frozen=True)
class Theme:
    name: str
    keywords: tuple[str, ...]  # word beginnings that select this theme ("snow" hits "snowy", not "nice" for "ice")
    prompts: tuple[str, ...]  # prompt texts used for this theme in generated datasets
    sky_top: RGB
    sky_horizon: RGB  # also the fog colour near the horizon
    ground_low: RGB
    ground_high: RGB
    relief: float  # terrain height range in cells
    texture: float  # per-cell brightness jitter of the ground, 0..1 (what makes motion visible up close)
    objects: tuple[ObjectKind, ...]
    density: float  # fraction of object sites that hold an object
    fog: float  # distance (cells) where the fog reaches the sky colour
    flood_level: float = 0.0  # fraction of the relief below which the ground is flooded (0: never)
    flood_color: RGB = (0, 0, 0)
    ridged: bool = False  # dune-like ridges instead of rolling hills
    tiles: int = 0  # floor tile size in cells (0: none); a checker pattern for stone floors


THEMES: dict[str, Theme] = {t.name: t for t in (
    Theme("forest", ("forest", "wood", "jungle", "grass", "meadow", "green", "leaf", "leaves"),
          ("a quiet forest path at dawn", "a dense pine forest", "green woods with a small pond",
           "walking through a forest clearing"),
          sky_top=(70, 130, 210), sky_horizon=(185, 215, 235), ground_low=(50, 110, 40), ground_high=(120, 150, 60),
          relief=14.0, texture=0.35, density=0.45, fog=150.0, flood_level=0.22, flood_color=(40, 80, 140),
          objects=(ObjectKind("cone", (3.0, 5.0), (16.0, 26.0), (25, 80, 30), weight=3.0),
                   ObjectKind("dome", (2.0, 3.5), (3.0, 6.0), (60, 120, 40)),
                   ObjectKind("cylinder", (0.8, 1.2), (6.0, 9.0), (95, 65, 35), tip_color=(40, 110, 40)))),
    Theme("desert", ("desert", "sand", "dune", "cactus", "cacti", "arid", "dry", "sahara", "canyon"),
          ("a desert road", "sand dunes under a hot sun", "an arid canyon with cacti", "a dry desert at noon"),
          sky_top=(90, 150, 230), sky_horizon=(240, 225, 190), ground_low=(200, 160, 100),
          ground_high=(240, 205, 140), relief=12.0, texture=0.2, density=0.25, fog=170.0, ridged=True,
          objects=(ObjectKind("cylinder", (0.8, 1.3), (8.0, 14.0), (60, 130, 60), weight=2.0),
                   ObjectKind("dome", (3.0, 6.0), (4.0, 9.0), (170, 95, 55)))),
    Theme("snow", ("snow", "ice", "icy", "winter", "frozen", "frost", "arctic", "glacier", "tundra", "blizzard"),
          ("a snowy field at noon", "a frozen winter landscape", "snow covered pine trees", "an icy tundra"),
          sky_top=(140, 170, 205), sky_horizon=(225, 230, 240), ground_low=(205, 215, 230),
          ground_high=(250, 250, 255), relief=18.0, texture=0.12, density=0.35, fog=120.0, flood_level=0.25,
          flood_color=(150, 195, 225),
          objects=(ObjectKind("cone", (3.0, 5.0), (16.0, 26.0), (30, 70, 50), tip_color=(245, 245, 250),
                              weight=3.0),
                   ObjectKind("dome", (2.5, 5.0), (3.0, 7.0), (110, 115, 125)))),
    Theme("lava", ("lava", "volcan", "magma", "fire", "fiery", "hellscape", "molten", "ember",
                   "inferno"),
          ("a volcanic wasteland with rivers of lava", "a lava field at night", "molten magma between black rocks",
           "a fiery hellscape"),
          sky_top=(25, 5, 5), sky_horizon=(120, 35, 15), ground_low=(45, 35, 35), ground_high=(80, 65, 60),
          relief=16.0, texture=0.4, density=0.3, fog=110.0, flood_level=0.35, flood_color=(255, 110, 20),
          objects=(ObjectKind("cone", (3.0, 6.0), (10.0, 20.0), (30, 25, 25), tip_color=(200, 60, 20), weight=2.0),
                   ObjectKind("dome", (2.0, 4.0), (3.0, 6.0), (60, 50, 50)))),
    Theme("dungeon", ("dungeon", "cave", "crypt", "castle", "cellar", "underground", "corridor", "tunnel",
                      "catacomb", "maze", "tomb"),
          ("a dark stone dungeon", "an underground crypt with pillars", "a torch-lit castle cellar",
           "a maze of stone corridors"),
          sky_top=(10, 8, 8), sky_horizon=(45, 35, 30), ground_low=(95, 85, 75), ground_high=(95, 85, 75),
          relief=0.0, texture=0.25, density=0.55, fog=90.0, tiles=6,
          objects=(ObjectKind("pillar", (1.5, 2.5), (24.0, 30.0), (160, 140, 90), weight=2.0),
                   ObjectKind("wall", (1.0, 1.5), (22.0, 26.0), (105, 90, 80), weight=2.0))),
)}

DEFAULT_THEME = "forest"  # what a prompt naming no theme gets
# Which theme wins when a prompt hits as many keywords of two (specific scenes before the generic forest).
PRIORITY = ("lava", "snow", "desert", "dungeon", "forest")


def theme_for_prompt(text: str) -> str:
    """The theme with the most keywords beginning a word of the prompt (ties: ``PRIORITY`` order);
    ``DEFAULT_THEME`` when no keyword hits. "a snowy field at noon" -> snow, "hello" -> forest."""
    words = re.findall(r"[a-z]+", text.lower())
    hits = {name: sum(any(w.startswith(k) for w in words) for k in THEMES[name].keywords) for name in PRIORITY}
    best = max(PRIORITY, key=lambda n: (hits[n], -PRIORITY.index(n)))
    return best if hits[best] else DEFAULT_THEME


def get_theme(name: str) -> Theme:
    try:
        return THEMES[name]
    except KeyError:
        raise ValueError(f"unknown theme {name!r}; choose one of {', '.join(THEMES)}") from None
