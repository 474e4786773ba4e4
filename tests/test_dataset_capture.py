"""Engine captures (image files + frames.jsonl) imported as training episodes (docs/DATASET.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from worldsim.cli import main
from worldsim.dataset import load_dataset
from worldsim.dataset.capture import import_capture

CONTROL = {"keys": ["W", "A", "S", "D"], "axes": ["mouse_dx"], "embedding_dim": 2, "frames_per_latent": 4}


def write_capture(root, episodes=2, frames=6, size=(24, 16), lines=None):
    """A capture as an engine writes it: PNG frames and one JSON line per frame; returns the pixels written."""
    (root).mkdir(parents=True, exist_ok=True)
    (root / "capture.json").write_text(json.dumps({"format": "worldsim-capture", "version": 1, "control": CONTROL,
                                                   "fps": 16, "engine": "test"}))
    rng = np.random.default_rng(0)
    pixels = []
    for e in range(episodes):
        d = root / f"run_{e}"
        d.mkdir()
        rows, ep = [], []
        for i in range(frames):
            img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(img).save(d / f"{i:06d}.png")
            ep.append(img)
            row = {"image": f"{i:06d}.png"}
            if i:
                row |= {"keys": [1, 0, 0, i % 2], "axes": [0.1 * i], "embedding": [e, -i]}
            if i in (0, 4):
                row["prompt"] = ["a castle courtyard", "a dark cellar"][i // 4]
            rows.append(json.dumps(row))
        (d / "frames.jsonl").write_text("\n".join(lines or rows) + "\n")
        pixels.append(np.stack(ep))
    return pixels


def test_capture_becomes_episodes_with_controls_and_prompts(tmp_path, capsys):
    pixels = write_capture(tmp_path / "cap")
    assert main(["dataset", "import", str(tmp_path / "cap"), str(tmp_path / "data"), "--quiet"]) == 0
    eps = load_dataset(tmp_path / "data")
    assert len(eps) == 2
    for e, ep in enumerate(eps):
        assert np.array_equal(ep.frames, pixels[e])  # PNG is lossless; nothing resized
        assert ep.control_present.tolist() == [False] + [True] * 5
        assert ep.keys[3].tolist() == [1, 0, 0, 1] and ep.axes[2].tolist() == pytest.approx([0.2])
        assert ep.embedding[5].tolist() == [e, -5] and ep.frame_index.tolist() == list(range(6))
        assert [(p["from_frame"], p["text"]) for p in ep.prompts] == [(0, "a castle courtyard"), (4, "a dark cellar")]
        assert ep.meta["source"] == "capture" and ep.meta["engine"] == "test"
    assert main(["dataset", "info", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "24x16 at 16 fps" in out and "2 episode(s), 12 frames" in out and "a dark cellar" in out


def test_resize_and_append(tmp_path):
    write_capture(tmp_path / "cap", episodes=1)
    import_capture(tmp_path / "cap", tmp_path / "data", size=(12, 8), progress=False)
    import_capture(tmp_path / "cap", tmp_path / "data", size=(12, 8), progress=False)
    eps = load_dataset(tmp_path / "data")
    assert len(eps) == 2 and eps[0].frames.shape == (6, 8, 12, 3)
    with pytest.raises(ValueError, match="another stream"):  # a dataset holds one size and schema
        import_capture(tmp_path / "cap", tmp_path / "data", progress=False)


BAD_LINES = [
    ('{"image": "000000.png", "keys": [1, 0], "axes": [0], "embedding": [0, 0]}', r"jsonl:1: 'keys' must be a list of 4"),
    ('{"image": "000000.png", "keys": [1, 0, 0, 0], "axes": [0.5]}', r":1: .*missing \['embedding'\]"),
    ('{"image": "000000.png", "keys": [1, 0, 0, 0], "axes": [NaN], "embedding": [0, 0]}', r"'axes' must be .*finite"),
    ('{"image": "nothere.png"}', r":1: image .*nothere.png does not exist"),
    ('{"image": "../capture.json"}', r":1: 'image' must name a file inside"),
    ('{"image": "000000.png", "speed": 3}', r":1: unknown field\(s\) \['speed'\]"),
    ('{"image": "000000.png"', r":1: not valid JSON"),
    ('[1, 2]', r":1: each line must be a JSON object"),
    ('{"image": "000000.png", "index": 5}\n{"image": "000001.png", "index": 5}', r":2: 'index' must be an integer above"),
    ('{"image": "000000.png", "prompt": 7}', r":1: 'prompt' must be a string"),
]


@pytest.mark.parametrize("lines, error", BAD_LINES)
def test_bad_capture_lines_are_named_and_nothing_is_written(tmp_path, lines, error):
    write_capture(tmp_path / "cap", episodes=1, lines=lines.split("\n"))
    (tmp_path / "data").mkdir()
    with pytest.raises(ValueError, match=error):
        import_capture(tmp_path / "cap", tmp_path / "data", progress=False)
    assert list((tmp_path / "data").iterdir()) == []


def test_bad_capture_files(tmp_path, capsys):
    write_capture(tmp_path / "cap", episodes=2)
    (tmp_path / "cap" / "run_1" / "000002.png").write_bytes(b"not a png")
    assert main(["dataset", "import", str(tmp_path / "cap"), str(tmp_path / "data"), "--quiet"]) == 1
    assert "run_1/frames.jsonl:3" in capsys.readouterr().err and not (tmp_path / "data").exists()

    Image.new("RGB", (10, 10)).save(tmp_path / "cap" / "run_1" / "000002.png")
    with pytest.raises(ValueError, match=r":3: .*is 10x10, earlier frames 24x16"):
        import_capture(tmp_path / "cap", tmp_path / "data", progress=False)

    (tmp_path / "cap" / "capture.json").write_text('{"format": "worldsim-capture", "version": 2}')
    with pytest.raises(ValueError, match="not a worldsim-capture v1"):
        import_capture(tmp_path / "cap", tmp_path / "data", progress=False)
    (tmp_path / "cap" / "capture.json").unlink()
    with pytest.raises(ValueError, match="capture.json is missing"):
        import_capture(tmp_path / "cap", tmp_path / "data", progress=False)


def test_imported_capture_feeds_the_training_loader(tmp_path, one_torch_thread):
    from worldsim.train.data import TrainData

    write_capture(tmp_path / "cap", episodes=3, frames=8)
    import_capture(tmp_path / "cap", tmp_path / "data", progress=False)
    batch = TrainData(tmp_path / "data", kind="frames", batch_size=2, seed=0, clip_frames=4).batch(0)
    assert batch.frames.shape == (2, 4, 3, 16, 24)
