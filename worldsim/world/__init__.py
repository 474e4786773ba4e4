"""The procedural toy world: a seeded first-person height-field game rendered with numpy (no torch).

It is the training data and the ground truth of the small default model: ``World`` plays it, ``World.rollout``
gives the frames a control sequence should produce, ``episodes`` writes datasets, ``metrics`` scores generated
video against it.
"""

from .game import AXES, KEYS, Physics, Rollout, World, WorldConfig, WorldState, advance, control_schema, key_row
from .render import Camera, Pose, Renderer
from .themes import DEFAULT_THEME, THEMES, Theme, get_theme, theme_for_prompt

__all__ = ["AXES", "Camera", "DEFAULT_THEME", "KEYS", "Physics", "Pose", "Renderer", "Rollout", "THEMES", "Theme",
           "World", "WorldConfig", "WorldState", "advance", "control_schema", "get_theme", "key_row",
           "theme_for_prompt"]
