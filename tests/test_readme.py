"""The README's Python example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_session_example_runs():
    text = README.read_text()
    code = re.search(r"## Streaming session API \(Python\)\n\n```python\n(.*?)```", text, re.S)
    assert code, "README lost its session example"
    scope: dict = {}
    exec(compile(code.group(1), str(README), "exec"), scope)
    assert scope["chunk"].shape == (1, 16, 3, 16, 16) and torch.isfinite(scope["chunk"]).all()
