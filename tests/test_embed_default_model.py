"""scripts/embed_default_model.py: makes a trained package the embedded default, with the serving choices it is
evaluated with and a provenance that names no path of the machine it was trained on."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from worldsim.model_package import DEFAULT_PACKAGE, MANIFEST, read_package

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def embed():
    spec = importlib.util.spec_from_file_location("embed_default_model", ROOT / "scripts" / "embed_default_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def trained(tmp_path):
    """A copy of the default package whose provenance names absolute paths, as a training run's does."""
    src = shutil.copytree(DEFAULT_PACKAGE, tmp_path / "run" / "final")
    manifest = json.loads((src / MANIFEST).read_text())
    manifest["provenance"]["data"] = str(tmp_path / "runs" / "bal_data")
    manifest["provenance"]["recipe"]["stage"]["critic"] = str(tmp_path / "runs" / "sf" / "critic.safetensors")
    (src / MANIFEST).write_text(json.dumps(manifest))
    return src


def test_serving_choices_and_portable_provenance(embed, trained, tmp_path):
    out = tmp_path / "default"
    rc = embed.main([str(trained), "--name", "a toy student", "--steps", "2", "--window-frames", "4",
                     "--no-hold-idle-reference", "--reference-start", "1", "--out", str(out)])
    assert rc == 0
    pkg = read_package(out)
    assert pkg.manifest["sampler"]["denoising_steps"] == [1000, 500]
    assert pkg.manifest["sampler"]["hold_idle_reference"] is False and pkg.sampler().reference_start == 1
    assert pkg.cache["window_frames"] == 4
    assert pkg.provenance["name"] == "a toy student"
    assert pkg.provenance["data"] == "bal_data"
    assert pkg.provenance["recipe"]["stage"]["critic"] == "critic.safetensors"
    assert str(tmp_path) not in (out / MANIFEST).read_text()
    assert sorted(p.name for p in out.glob("start_*.png")) == sorted(p.name for p in trained.glob("start_*.png"))
    assert not (out / "teacher.safetensors").exists()  # only --include copies files beyond the served ones


def test_refuses_to_overwrite_its_input_and_missing_includes(embed, trained, tmp_path, capsys):
    assert embed.main([str(trained), "--name", "x", "--out", str(trained)]) == 1
    assert "is the package itself" in capsys.readouterr().err
    assert embed.main([str(trained), "--name", "x", "--include", str(tmp_path / "nope.safetensors"),
                       "--out", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert embed.main([str(trained), "--name", "x", "--steps", "2", "--reference-start", "2",
                       "--out", str(tmp_path / "o")]) == 1
    assert "reference_start must lie in 0..1" in capsys.readouterr().err and not (tmp_path / "o").exists()
    read_package(trained)  # the input is untouched
