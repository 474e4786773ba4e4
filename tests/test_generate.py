"""``worldsim generate`` and ``worldsim inspect`` on tiny folders in the published layouts: an mp4 with the expected
frames and size, Self-Forcing EMA weights replacing the DiT, prompt schedules switching at the right chunks, and
every missing file named with the command that fetches it."""

from __future__ import annotations

import json

import av
import pytest
import torch

from tiny_models import (write_diffusers_folder, write_official_folder, write_self_forcing_checkpoint, write_taehv)
from worldsim import cli
from worldsim import runtime as rt
from worldsim.pipeline import generate as gen
from worldsim.pipeline.folders import ModelFolderError, find_model_folder
from worldsim.pipeline.schedule import chunk_at_seconds, load_schedule

SIZE = ["--height", "32", "--width", "48"]


def read_mp4(path) -> tuple[int, int, int]:
    """(frames, width, height) as a player decodes them."""
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return len(frames), frames[0].width, frames[0].height


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = write_official_folder(tmp_path_factory.mktemp("wan") / "Wan2.1-T2V-1.3B")
    ema = write_self_forcing_checkpoint(root.parent / "checkpoints" / "self_forcing_dmd.pt")
    write_taehv(root / "taew2_1.pth")
    return root, ema


def test_generate_official_layout_with_self_forcing_checkpoint(official, tmp_path, capsys):
    root, _ = official
    out = tmp_path / "video.mp4"
    rc = cli.main(["generate", "--model", str(root), "--checkpoint", str(root.parent / "checkpoints" /
                   "self_forcing_dmd.pt"), "--prompt", "a red fox runs in the snow", "--chunks", "2", "--out",
                   str(out), "--quiet", *SIZE])
    assert rc == 0, capsys.readouterr().err
    assert read_mp4(out) == (9 + 12, 48, 32)
    assert "21 frames 48x32" in capsys.readouterr().out


def test_self_forcing_ema_weights_replace_the_folder_dit(official):
    root, ema = official
    folder = find_model_folder(root, checkpoint=root.parent / "checkpoints" / "self_forcing_dmd.pt")
    model = rt.load_dit(folder, use_ema=True, dtype=torch.float32, device=torch.device("cpu"))
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())


def test_generate_diffusers_layout_and_taehv(official, tmp_path):
    root = write_diffusers_folder(tmp_path / "Wan2.1-T2V-1.3B-Diffusers")
    r = gen.generate(gen.GenerateConfig(model=root, prompt="a cat in the park", seconds=1.0, out=tmp_path / "d.mp4",
                                        height=32, width=48, progress=False))
    assert (r.chunks, r.frames) == (2, 21)  # 16 frames needed: 9 + 12
    assert read_mp4(r.path) == (21, 48, 32)
    r = gen.generate(gen.GenerateConfig(model=official[0], prompt="a cat", chunks=3, decoder="taehv",
                                        out=tmp_path / "t.mp4", height=32, width=48, progress=False))
    assert read_mp4(r.path) == (9 + 12 + 12, 48, 32)


def test_schedule_switches_prompts_at_the_right_chunks(official, tmp_path, monkeypatch):
    root, _ = official
    schedule = tmp_path / "prompts.jsonl"
    schedule.write_text("\n".join(json.dumps(x) for x in [
        {"prompt": "a dog in the park"},
        {"prompt": "the city at night", "chunk": 2, "mode": "cut"},
        {"prompt": "a fox over the river", "seconds": 2.0},  # frame 32 -> chunk 3 starts at frame 33
    ]) + "\n")
    used = []  # (chunk, prompt embedding the chunk was made under)

    class Spy(rt.StreamingSession):
        def step(self, controls=None):
            out = super().step(controls)
            used.append((self.frame // self.chunk_frames - 1, self.prompt.clone(), ))
            return out

    monkeypatch.setattr(rt, "StreamingSession", Spy)
    encoded = {}
    real_encode = rt.Runtime.encode_prompts

    def encode(self, prompts):
        encoded.update(real_encode(self, prompts))
        return encoded

    monkeypatch.setattr(rt.Runtime, "encode_prompts", encode)
    r = gen.generate(gen.GenerateConfig(model=root, schedule=schedule, chunks=5, out=tmp_path / "s.mp4",
                                        height=32, width=48, progress=False))
    assert r.switch_chunks == [2, 3] and read_mp4(r.path)[0] == 9 + 4 * 12
    expected = ["a dog in the park"] * 2 + ["the city at night"] + ["a fox over the river"] * 2
    assert [c for c, _ in used] == list(range(5))
    for (chunk, prompt), text in zip(used, expected):
        assert torch.equal(prompt, encoded[text]), f"chunk {chunk} was not made under {text!r}"


def test_an_interrupted_run_leaves_a_playable_video(official, tmp_path, monkeypatch):
    calls = []

    class Interrupting(rt.StreamingSession):
        def step(self, controls=None):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return super().step(controls)

    monkeypatch.setattr(rt, "StreamingSession", Interrupting)
    with pytest.raises(KeyboardInterrupt):
        gen.generate(gen.GenerateConfig(model=official[0], prompt="a cat", chunks=4, out=tmp_path / "cut.mp4",
                                        height=32, width=48, progress=False))
    assert read_mp4(tmp_path / "cut.mp4") == (9, 48, 32)


def test_schedule_formats(tmp_path):
    assert [chunk_at_seconds(s, fps=16, chunk_frames=3, temporal_stride=4) for s in (0, 0.5, 0.6, 1.3, 1.4)] == \
        [0, 1, 2, 2, 3]  # chunks start at frames 0, 9, 21, 33
    longlive = tmp_path / "longlive.jsonl"
    longlive.write_text(json.dumps({"prompts": ["p0", "p1", "p2"]}) + "\n" +
                        json.dumps({"prompts": ["q0", "q1"], "switch_frame_indices": [7]}) + "\n")
    s = load_schedule(longlive, chunk_frames=3, fps=16, switch_frames=[40, 80])
    assert [(w.chunk, w.prompt, w.mode) for w in s.switches] == [(0, "p0", "recache"), (14, "p1", "recache"),
                                                                 (27, "p2", "recache")]
    assert [(w.chunk, w.prompt) for w in load_schedule(longlive, chunk_frames=3, fps=16, index=1).switches] == \
        [(0, "q0"), (3, "q1")]
    with pytest.raises(ValueError, match="3 prompts need 2 switch frame indices"):
        load_schedule(longlive, chunk_frames=3, fps=16)
    late = tmp_path / "late.jsonl"
    late.write_text(json.dumps({"prompt": "x", "chunk": 2}) + "\n")
    with pytest.raises(ValueError, match="chunk 0"):
        load_schedule(late, chunk_frames=3, fps=16)
    assert [w.chunk for w in load_schedule(late, chunk_frames=3, fps=16, first_prompt="y").switches] == [0, 2]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n{"prompt": "y", "chunk": 1, "mode": "fade"}\n')
    with pytest.raises(ValueError, match="fade"):
        load_schedule(bad, chunk_frames=3, fps=16)


def test_generate_refuses_a_schedule_longer_than_the_video(official, tmp_path):
    schedule = tmp_path / "p.jsonl"
    schedule.write_text('{"prompt": "a"}\n{"prompt": "b", "chunk": 9}\n')
    with pytest.raises(ValueError, match="chunk 9 but the video has 7"):
        gen.generate(gen.GenerateConfig(model=official[0], schedule=schedule, out=tmp_path / "x.mp4", height=32,
                                        width=48, progress=False))


def test_inspect_names_each_missing_file(tmp_path, capsys):
    root = write_official_folder(tmp_path / "wan", skip=("Wan2.1_VAE.pth", "google"))
    assert cli.main(["inspect", str(root), "--checkpoint", str(tmp_path / "checkpoints" / "self_forcing_dmd.pt")]) == 1
    out = capsys.readouterr().out
    for name in ("Wan2.1_VAE.pth", "google/umt5-xxl/tokenizer_config.json", "google/umt5-xxl/tokenizer.json",
                 "checkpoints/self_forcing_dmd.pt", "taew2_1.pth"):
        assert f"missing: {tmp_path / 'wan' / name if 'checkpoints' not in name else tmp_path / name}" in out, name
    assert f"hf download Wan-AI/Wan2.1-T2V-1.3B Wan2.1_VAE.pth --local-dir {root}" in out
    assert f'--include "google/umt5-xxl/*" --local-dir {root}' in out
    assert f"hf download gdhe17/Self-Forcing checkpoints/self_forcing_dmd.pt --local-dir {tmp_path}" in out
    assert "models_t5_umt5-xxl-enc-bf16.pth" not in out.split("to fetch")[1]  # present: not listed as missing
    with pytest.raises(ModelFolderError, match="Wan2.1_VAE.pth"):
        gen.generate(gen.GenerateConfig(model=root, prompt="x", out=tmp_path / "x.mp4"))

    diffusers = write_diffusers_folder(tmp_path / "diffusers")
    (diffusers / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    assert cli.main(["inspect", str(diffusers)]) == 1
    out = capsys.readouterr().out
    assert f"missing: {diffusers / 'vae' / 'diffusion_pytorch_model.safetensors'}" in out
    assert f'hf download Wan-AI/Wan2.1-T2V-1.3B-Diffusers --include "vae/*" --local-dir {diffusers}' in out
