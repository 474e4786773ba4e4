"""The daemon serving Wan2.1 model folders (tiny files in the published layouts): UMT5 prompts, Wan VAE or TAEHV
frames, the Wan VAE encoder for start frames; frames equal to generating in-process with the same files."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tiny_models import (randomize, write_diffusers_folder, write_official_folder, write_self_forcing_checkpoint,
                         write_taehv)
from worldsim.checkpoints import CheckpointError, save_self_forcing_pt
from worldsim.client import Client
from worldsim.codecs.base import to_uint8
from worldsim.model.config import load_preset
from worldsim.model.dit import CausalWanDiT
from worldsim import runtime as rt
from worldsim.pipeline.devices import column_major_linears
from worldsim.pipeline.folders import ModelFolderError, find_model_folder
from worldsim.sampling.session import StreamingSession
from worldsim.runtime import RuntimeOptions, build_runtime

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = {"height": 32, "width": 48}
PROMPT = "a red fox runs in the snow"


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = write_official_folder(tmp_path_factory.mktemp("wan") / "Wan2.1-T2V-1.3B")
    write_self_forcing_checkpoint(root.parent / "self_forcing_dmd.pt")
    write_taehv(root / "taew2_1.pth")
    return root, root.parent / "self_forcing_dmd.pt"


def in_process(root, checkpoint, decoder: str, chunks: int, seed: int = 5) -> np.ndarray:
    """The same files wired by hand from the published-format loaders, with the daemon's cache settings, deferred
    cache writes and CPU weight layout (column-major linears: the same values, but on some CPUs MKL rounds the other
    layout differently): [T, H, W, 3] uint8."""
    folder = find_model_folder(root, checkpoint=checkpoint)
    cpu = torch.device("cpu")
    model = rt.load_dit(folder, use_ema=True, dtype=torch.float32, device=cpu)
    column_major_linears(model)
    text = rt.load_text_encoder(folder["text_encoder"].path, folder["tokenizer"].path, model.cfg, cpu, offload=False)
    dec = rt.load_decoder(folder, decoder, dtype=torch.float32, device=cpu)
    shape = (model.cfg.in_dim, SIZE["height"] // dec.spatial_stride, SIZE["width"] // dec.spatial_stride)
    session = StreamingSession(model, text(PROMPT), latent_shape=shape, seed=seed, sink_frames=3, window_frames=12,
                               defer_cache_write=True)  # as the daemon's sessions on a CPU
    dec.reset()
    return np.concatenate([to_uint8(dec.decode(session.step()))[0].numpy() for _ in range(chunks)])


def served(backend, make_daemon, n: int, seed: int = 5, **open_kw) -> tuple[dict, list]:
    d = make_daemon(backend)
    with Client(d.endpoint, timeout=60) as c:
        s = c.open(PROMPT, seed=seed, fps=0, **open_kw)
        frames, deadline = [], time.monotonic() + 120
        while len(frames) < n and time.monotonic() < deadline:
            f = c.frame(1)
            if f is not None and f.session == s:
                frames.append(f)
        c.close_session(s)
        return c.welcome.model, frames


@pytest.mark.parametrize("decoder", ["wan", "taehv"])
def test_official_folder_and_self_forcing_checkpoint(official, make_daemon, decoder):
    root, ckpt = official
    b = build_runtime(RuntimeOptions(model=str(root), checkpoint=str(ckpt), decoder=decoder, **SIZE))
    model, frames = served(b, make_daemon, 9 + 12)
    assert model["text_encoder"] == "umt5" and model["decoder"] == decoder and model["untrained"] is False
    assert model["layout"] == "wan" and model["checkpoint"] == str(ckpt) and model["folder"] == str(root)
    assert np.array_equal(np.stack([f.image for f in frames]), in_process(root, ckpt, decoder, chunks=2))


def test_diffusers_folder(tmp_path, make_daemon):
    root = write_diffusers_folder(tmp_path / "Wan2.1-T2V-1.3B-Diffusers")
    model, frames = served(build_runtime(RuntimeOptions(model=str(root), **SIZE)), make_daemon, 9)
    assert model["layout"] == "diffusers" and model["decoder"] == "wan" and model["checkpoint"] is None
    assert np.array_equal(np.stack([f.image for f in frames]), in_process(root, None, "wan", chunks=1))


def test_prompt_switches_and_start_frames_use_the_real_encoders(official, make_daemon):
    root, ckpt = official
    b = build_runtime(RuntimeOptions(model=str(root), checkpoint=str(ckpt), **SIZE))
    d = make_daemon(b)
    start = np.zeros((32, 48, 3), np.uint8)
    start[:, :24] = 255
    with Client(d.endpoint, timeout=60) as c:
        s = c.open(PROMPT, fps=0, start_frame=start)  # encoded by the Wan VAE encoder, decoded as frame 0
        first = c.frame(60)
        vae = rt.load_decoder(find_model_folder(root), "wan", dtype=torch.float32, device=torch.device("cpu"))
        latents = vae.encode(torch.from_numpy(start / 255.0).float().permute(2, 0, 1)[None, None])
        assert first.index == 0 and np.array_equal(first.image, to_uint8(vae.decode(latents))[0, 0].numpy())
        seq = c.send(s, prompt="a quiet harbour at night", mode="recache")  # UMT5 on the encoder thread
        assert next(f for f in iter(lambda: c.frame(30), None) if f.header["prompt_seq"] == seq)
        assert c.stats(s)["sessions"][str(s)]["prompt_switches"] == 1
    cached = d.engine.prompts.request("a quiet harbour at night")
    assert cached.done() and torch.equal(cached.result(), b.embed_prompt("a quiet harbour at night"))


def test_bad_model_folders_and_checkpoints_are_named(official, tmp_path):
    root, ckpt = official
    partial = write_official_folder(tmp_path / "partial", skip=("Wan2.1_VAE.pth",))
    with pytest.raises(ModelFolderError, match="Wan2.1_VAE.pth"):
        build_runtime(RuntimeOptions(model=str(partial), **SIZE))
    with pytest.raises(ModelFolderError, match="taew2_1"):
        build_runtime(RuntimeOptions(model=str(partial), decoder="taehv", **SIZE))
    other = CausalWanDiT(load_preset("tiny"))  # another architecture than the folder's DiT
    save_self_forcing_pt(randomize(other, 0).state_dict(), tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt"):
        build_runtime(RuntimeOptions(model=str(root), checkpoint=str(tmp_path / "other.pt"), **SIZE))
    with pytest.raises(ValueError, match="need --model to be a Wan2.1 model folder"):
        build_runtime(RuntimeOptions(preset="tiny", decoder="taehv"))
    with pytest.raises(ValueError, match="multiple of 16"):
        build_runtime(RuntimeOptions(model=str(root), height=40, width=48))


def test_serve_command_reports_a_missing_file_before_binding(tmp_path):
    partial = write_official_folder(tmp_path / "partial", skip=("models_t5_umt5-xxl-enc-bf16.pth",))
    out = subprocess.run([sys.executable, "-m", "worldsim", "serve", "--model", str(partial), "--bind",
                          "tcp://127.0.0.1:1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "models_t5_umt5-xxl-enc-bf16.pth" in out.stderr
    assert "listening" not in out.stderr
