"""The toy world's codec: shapes, the StreamingDecoder contract, normalised latents, file round trip."""

from __future__ import annotations

import pytest
import torch

from worldsim.checkpoints import CheckpointError
from worldsim.checkpoints.safetensors_io import save_tensors
from worldsim.codecs.toy_codec import ToyCodec, ToyCodecConfig


def test_shapes_streaming_and_round_trip(tmp_path):
    torch.manual_seed(0)
    codec = ToyCodec(ToyCodecConfig(latent_channels=4, channels=(8, 8, 8))).eval()
    frames = torch.rand(2, 5, 3, 64, 64)
    with torch.no_grad():
        z = codec.encode(frames)
        assert z.shape == (2, 4, 5, 8, 8) and codec.spatial_stride == 8 and codec.temporal_stride == 1
        whole = codec.decode(z)
        codec.reset()
        parts = torch.cat([codec.decode(z[:, :, :2]), codec.decode(z[:, :, 2:])], dim=1)
        assert whole.shape == (2, 5, 3, 64, 64) and torch.equal(whole, parts)  # streaming == one-shot
        codec.set_latent_stats(codec.encode_images(frames.flatten(0, 1)))
        z = codec.encode(frames)
        assert z.mean(dim=(0, 2, 3, 4)).abs().max() < 1e-4 and (z.std(dim=(0, 2, 3, 4)) - 1).abs().max() < 1e-2
        assert torch.allclose(codec.decode(z), whole, atol=1e-5)  # normalisation is undone by decode
    loaded = ToyCodec.load(codec.save(tmp_path / "codec.safetensors"))
    assert loaded.cfg == codec.cfg and all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(),
                                                                             codec.state_dict().values()))
    save_tensors({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="not a toy codec"):
        ToyCodec.load(tmp_path / "other.safetensors")
