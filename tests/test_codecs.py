"""Codecs: the Wan VAE loads from the original ``Wan2.1_VAE.pth`` names (through diffusers' converter) and from a
diffusers folder, decodes chunk by chunk exactly as in one shot with Wan's frame counts, and encodes; TAEHV
weights load and its streaming decode equals the whole-clip decode."""

from __future__ import annotations

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers
from safetensors.torch import save_file

from tiny_models import (TAEHV, tiny_taehv, tiny_vae, wan_vae_original_state_dict, write_taehv)
from worldsim.checkpoints import CheckpointError
from worldsim.codecs.base import frames_for_chunk
from worldsim.codecs.taehv import TAEHVStreamingDecoder, load_taehv
from worldsim.codecs.wan_vae import WanVAEDecoder, load_wan_vae


def latents(frames: int, seed: int = 0, h: int = 4, w: int = 4) -> torch.Tensor:
    return torch.randn(1, 16, frames, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vae():
    return tiny_vae()


@pytest.fixture(scope="module")
def one_shot(vae):
    """7 normalised latents and diffusers' own whole-clip decode of them, mapped to [B, T, 3, H, W] in [0, 1]."""
    z = latents(7)
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    with torch.no_grad():
        video = vae.decode(z * std + mean).sample
    return z, ((video + 1) / 2).permute(0, 2, 1, 3, 4)


def test_original_wan_keys_load_through_the_diffusers_converter(vae, tmp_path):
    original = wan_vae_original_state_dict(vae)
    assert "decoder.middle.0.residual.0.gamma" in original and "conv2.weight" in original
    assert convert_wan_vae_to_diffusers(dict(original)).keys() == vae.state_dict().keys()  # our names are Wan's
    torch.save(original, tmp_path / "Wan2.1_VAE.pth")
    loaded = load_wan_vae(tmp_path / "Wan2.1_VAE.pth")
    assert loaded.config.base_dim == 8 and loaded.config.z_dim == 16
    ref = vae.state_dict()
    assert all(torch.equal(t, ref[k]) for k, t in loaded.state_dict().items())


def test_diffusers_vae_folder_loads(vae, tmp_path):
    vae.save_pretrained(tmp_path / "vae")
    loaded = load_wan_vae(tmp_path / "vae")
    ref = vae.state_dict()
    assert all(torch.equal(t, ref[k]) for k, t in loaded.state_dict().items())


@pytest.mark.parametrize("chunks", [(3, 3, 1), (1, 2, 4)])
def test_chunked_vae_decode_equals_one_shot(vae, one_shot, chunks):
    z, expected = one_shot
    dec = WanVAEDecoder(vae)
    pieces, start = [], 0
    for i, n in enumerate(chunks):
        out = dec.decode(z[:, :, start:start + n])
        assert out.shape == (1, frames_for_chunk(n, 4, first=i == 0), 3, 32, 32)
        pieces.append(out)
        start += n
    video = torch.cat(pieces, dim=1)
    assert video.shape == expected.shape == (1, 25, 3, 32, 32)
    assert (video - expected).abs().max() < 1e-4
    assert video.min() >= 0 and video.max() <= 1
    dec.reset()  # a new stream starts from scratch
    assert (dec.decode(z) - expected).abs().max() < 1e-4


def test_vae_encode_normalises_the_posterior_mean(vae):
    frames = torch.rand(1, 5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    z = WanVAEDecoder(vae).encode(frames)
    assert z.shape == (1, 16, 2, 4, 4)
    with torch.no_grad():
        mu = vae.encode(frames.permute(0, 2, 1, 3, 4) * 2 - 1).latent_dist.mean
    mean = torch.tensor(vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(z, (mu - mean) / std)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        WanVAEDecoder(vae).encode(frames[:, :4])


def test_bad_vae_file_names_the_keys(vae, tmp_path):
    original = wan_vae_original_state_dict(vae)
    del original["decoder.head.2.weight"]
    torch.save(original, tmp_path / "Wan2.1_VAE.pth")
    with pytest.raises(CheckpointError, match="decoder.conv_out.weight"):
        load_wan_vae(tmp_path / "Wan2.1_VAE.pth")
    (tmp_path / "broken.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_wan_vae(tmp_path / "broken.pth")


def test_taehv_streaming_equals_whole_clip(tmp_path):
    z = latents(7, seed=5, h=4, w=6)
    whole = TAEHVStreamingDecoder(tiny_taehv()).decode(z)
    assert whole.shape == (1, 25, 3, 32, 48) and whole.min() >= 0 and whole.max() <= 1
    dec = TAEHVStreamingDecoder(load_taehv(write_taehv(tmp_path / "taew2_1.pth")))
    pieces = [dec.decode(z[:, :, a:b]) for a, b in ((0, 3), (3, 6), (6, 7))]
    assert [p.shape[1] for p in pieces] == [9, 12, 4]
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=1e-5, rtol=0)


def test_taehv_safetensors_and_wider_tgrow(tmp_path):
    """taehv's convention: a TGrow stored with extra output channels keeps the last frame's."""
    model = tiny_taehv()
    sd = {f"decoder.{k}": v for k, v in model.decoder.state_dict().items()}
    kept = sd["decoder.7.conv.weight"]
    sd["decoder.7.conv.weight"] = torch.cat([torch.zeros_like(kept), kept])
    save_file(sd, str(tmp_path / "taew2_1.safetensors"))
    loaded = load_taehv(tmp_path / "taew2_1.safetensors")
    assert loaded.cfg == TAEHV
    assert all(torch.equal(v, model.decoder.state_dict()[k]) for k, v in loaded.decoder.state_dict().items())
    del sd["decoder.22.bias"]
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="decoder.22.bias"):
        load_taehv(tmp_path / "bad.safetensors")
