"""scripts/train_default_model.sh, the default model's whole recipe, runs every command in its smoke mode."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "train_default_model.sh"


def test_the_recipe_runs_end_to_end_and_packages_the_default_as_served(tmp_path):
    env = {**os.environ, "SMOKE": "1"}
    out = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = tmp_path / "runs"
    manifest = json.loads((runs / "default_model" / "worldsim-model.json").read_text())
    sampler, recipe = manifest["sampler"], manifest["provenance"]["recipe"]
    assert sampler["reference_start"] == 2 and sampler["hold_idle_reference"] is True
    assert manifest["cache"]["window_frames"] == 6 and len(manifest["starts"]) == 5
    assert manifest["provenance"]["stage"] == "self-forcing" and recipe["data"]["clip_chunks"] == 48
    assert recipe["stage"]["moment_weight"] == 3
    assert recipe["stage"]["reference_flow"].endswith("flow_calibrated.safetensors")
    assert (runs / "default_model" / "teacher.safetensors").is_file()
    assert "default" in json.loads((runs / "eval" / "results.json").read_text())["models"]
