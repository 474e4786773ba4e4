"""The training data loader: clips, control grouping per latent frame, per-chunk prompts, caches, bad episodes."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from train_helpers import write_dataset

from worldsim.codecs.toy_codec import ToyCodec, ToyCodecConfig
from worldsim.dataset import load_episode
from worldsim.text.hashing import HashingPromptEmbedder
from worldsim.train.data import TrainData

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread (conftest)


def make_codec(path, seed=0):
    torch.manual_seed(seed)
    return ToyCodec(ToyCodecConfig(latent_channels=4, channels=(8, 8))).save(path)


@pytest.fixture
def dataset(tmp_path):
    return write_dataset(tmp_path / "data")


def latent_data(root, codec, **kw):
    return TrainData(root, kind="latents", batch_size=2, seed=0, chunk_frames=3, clip_chunks=2, codec_path=codec,
                     text_encoder=HashingPromptEmbedder(8, 24), **kw)


def test_clips_shapes_controls_and_prompts(dataset, tmp_path):
    data = latent_data(dataset, make_codec(tmp_path / "codec.safetensors"))
    assert len(data.train_clips) == 2 * 7 and len(data.val_clips) == 7  # 24 frames, clips of 6 every 3; 1 held out
    b = data.batch(0)
    assert b.latents.shape == (2, 4, 6, 4, 4)  # [B, C, F, h, w]: the DiT's layout
    assert b.text.shape == (2, 2, 8, 24)  # one prompt per chunk
    assert b.controls.keys.shape == (2, 6, 1, 4) and b.controls.axes.shape == (2, 6, 1, 1)
    assert b.controls.embedding is None and b.controls.present.shape == (2, 6)

    ep = load_episode(dataset / "episode_000000")
    clip = data.collate([(0, 9)])  # latent frames 9..14: the prompt switches at frame 12 = chunk 2 of the clip
    assert clip.prompts == [["red room", "blue room"]]
    assert torch.equal(clip.text[0, 1], HashingPromptEmbedder(8, 24)("blue room")[0])
    assert torch.equal(clip.controls.keys[0, :, 0], torch.from_numpy(ep.keys[9:15]))
    frames = torch.from_numpy(ep.frames[9:15]).permute(0, 3, 1, 2).float()[None] / 255
    with torch.no_grad():
        assert torch.allclose(clip.latents, data.info.codec.encode(frames), atol=1e-5)
    first = data.collate([(0, 0)])
    assert not first.controls.present[0, 0] and first.controls.present[0, 1:].all()  # frame 0 had no control
    assert first.controls.keys[0, 0].abs().sum() == 0


def test_control_grouping_with_several_frames_per_latent(dataset):
    ep = load_episode(dataset / "episode_000001")
    g = TrainData._controls(SimpleNamespace(k=4), ep, 6)  # latent l <- video frames 4l-3 .. 4l
    assert g["keys"].shape == (6, 4, 4)
    assert torch.equal(g["keys"][2], torch.from_numpy(ep.keys[5:9]))
    assert not g["present"][0] and g["present"][1:].all()  # latent 0 = frame 0 only (frames -3..-1 do not exist)
    assert g["keys"][0].abs().sum() == 0


def test_batches_are_a_function_of_step(dataset):
    a = TrainData(dataset, kind="frames", batch_size=3, seed=1, clip_frames=4)
    b = TrainData(dataset, kind="frames", batch_size=3, seed=1, clip_frames=4)
    assert torch.equal(a.batch(5).frames, b.batch(5).frames)
    assert a.batch(0, rank=0, world=2).frames.shape == (3, 4, 3, 16, 16)
    assert not torch.equal(a.batch(0, rank=0, world=2).frames, a.batch(0, rank=1, world=2).frames)


def test_latent_cache_reused_and_invalidated_by_a_new_codec(dataset, tmp_path, monkeypatch):
    codec = make_codec(tmp_path / "codec.safetensors")
    first = latent_data(dataset, codec)
    caches = list((dataset / ".cache").glob("latents-*"))
    assert len(caches) == 1 and len(list(caches[0].iterdir())) == 3
    assert (dataset / ".cache" / "text-hashing-v1-8x24.safetensors").is_file()

    calls = []
    real = ToyCodec.encode
    monkeypatch.setattr(ToyCodec, "encode", lambda self, x: calls.append(1) or real(self, x))
    again = latent_data(dataset, codec)
    assert not calls  # read back from the cache
    assert torch.equal(again.batch(0).latents, first.batch(0).latents)

    make_codec(codec, seed=1)  # retrained codec, same path: new identity, latents recomputed
    fresh = latent_data(dataset, codec)
    assert calls and len(list((dataset / ".cache").glob("latents-*"))) == 2
    assert not torch.equal(fresh.batch(0).latents, first.batch(0).latents)


def test_corrupt_episode_is_skipped_with_a_warning(dataset, caplog):
    (dataset / "episode_000001" / "shard_000000.npz").write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING):
        data = TrainData(dataset, kind="frames", batch_size=2, seed=0, clip_frames=4)
    assert any("episode_000001" in r.getMessage() and "skipping" in r.getMessage() for r in caplog.records)
    assert len(data.tracks) == 2
    assert data.batch(0).frames.shape == (2, 4, 3, 16, 16)


def test_missing_shard_is_skipped_too(dataset, caplog):
    (dataset / "episode_000000" / "shard_000000.npz").unlink()
    with caplog.at_level(logging.WARNING):
        data = TrainData(dataset, kind="frames", batch_size=2, seed=0, clip_frames=4)
    assert any("episode_000000" in r.getMessage() for r in caplog.records)
    assert len(data.tracks) == 2 and np.isfinite(data.batch(0).frames.numpy()).all()
