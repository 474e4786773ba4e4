"""Where the YAML presets and training recipes live: the checkout's ``configs/`` (editable installs, tests) or the
copy that a wheel install puts under ``<prefix>/share/worldsim/configs`` (pyproject's data-files)."""

from __future__ import annotations

import sys
from pathlib import Path


def configs_dir() -> Path:
    checkout = Path(__file__).resolve().parents[1] / "configs"
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "worldsim" / "configs"
