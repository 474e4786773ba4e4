"""The Wan2.1 VAE (diffusers ``AutoencoderKLWan``): streaming decoder and encoder for the DiT's latents.

Weights come from the original ``Wan2.1_VAE.pth`` (renamed by diffusers' own ``convert_wan_vae_to_diffusers``,
no Hub access) or from a diffusers ``vae/`` folder. The DiT works on normalised latents: decoding takes
``z * std + mean`` (Wan's 16 per-channel constants, stored in the VAE config), encoding gives ``(mu - mean) / std``.

Streaming: every temporal convolution of the decoder keeps the last two time steps of its input in a cache slot
(diffusers' ``feat_cache`` list). :class:`WanVAEDecoder` owns one such list for the whole stream and feeds the
decoder one latent frame at a time, exactly as ``AutoencoderKLWan.decode`` does for a whole clip, so decoding chunk
by chunk gives the one-shot frames. The stream's first latent frame decodes to 1 frame (``first_chunk``: no
temporal upsampling), every later one to 4.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checkpoints.base import CheckpointError, key_list
from ..weight_files import check_state_dict, read_weight_file

if TYPE_CHECKING:  # diffusers takes seconds to import; it is imported where a Wan VAE is actually built
    from diffusers import AutoencoderKLWan

ORIGINAL_MARKER = "decoder.middle.0.residual.0.gamma"  # a key only the original Wan layout has
WAN_LATENT_CHANNELS = 16  # the only width AutoencoderKLWan's default latents_mean / latents_std describe


def load_wan_vae(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> AutoencoderKLWan:
    """An ``AutoencoderKLWan`` in eval mode from ``Wan2.1_VAE.pth`` (original or diffusers key names; ``.pth`` or
    ``.safetensors``) or a diffusers ``vae/`` folder; offline. CheckpointError names the file and keys at fault."""
    from diffusers import AutoencoderKLWan

    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path}: not a diffusers VAE folder (no config.json)")
        vae = AutoencoderKLWan.from_pretrained(path, torch_dtype=dtype, local_files_only=True)
    else:
        vae = _from_single_file(path)
    if vae.config.patch_size is not None:
        raise CheckpointError(f"{path}: a patchified (Wan2.2) VAE; only the Wan2.1 VAE is supported")
    # nn.Module.to: diffusers' own .to warns about fp32-pinned modules, of which this VAE has none
    return torch.nn.Module.to(vae, device=device, dtype=dtype).eval()


def _from_single_file(path: Path) -> AutoencoderKLWan:
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    state_dict = read_weight_file(path)
    if ORIGINAL_MARKER in state_dict:
        state_dict = convert_wan_vae_to_diffusers(state_dict)
    try:
        base_dim = state_dict["encoder.conv_in.weight"].shape[0]
        z_dim = state_dict["post_quant_conv.weight"].shape[0]
    except KeyError as err:
        raise CheckpointError(f"{path}: not a Wan VAE state dict (no {err.args[0]!r}; holds "
                              f"{key_list(state_dict)})") from None
    if z_dim != WAN_LATENT_CHANNELS:
        raise CheckpointError(f"{path}: the VAE has {z_dim} latent channels; Wan2.1's latent normalisation is "
                              f"defined for {WAN_LATENT_CHANNELS} (a VAE of another width needs a diffusers vae/ "
                              f"folder whose config.json stores latents_mean and latents_std)")
    with torch.device("meta"):
        vae = AutoencoderKLWan(base_dim=base_dim, z_dim=z_dim)
    check_state_dict(path, f"a Wan2.1 VAE with base_dim={base_dim} (names after diffusers' conversion)",
                     vae.state_dict(), state_dict)
    vae.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True, assign=True)
    return vae


class WanVAEDecoder:
    """Streaming decoder (and encoder) over an ``AutoencoderKLWan``; see the module docstring.

    decode: normalised latents [B, 16, n, H, W] -> frames [B, T, 3, 8H, 8W] float32 in [0, 1]; the first chunk of
    a stream gives 1 + 4(n-1) frames, later chunks 4n. encode: frames [B, 1 + 4k, 3, H, W] in [0, 1] -> normalised
    latents [B, 16, 1 + k, H/8, W/8] (the posterior mean).
    """

    temporal_stride = 4
    spatial_stride = 8

    def __init__(self, vae: AutoencoderKLWan):
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        self.vae = vae.eval()
        channels = vae.config.z_dim
        self.mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, channels, 1, 1, 1)
        self.std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, channels, 1, 1, 1)
        self._slots = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        self.reset()

    @property
    def latent_channels(self) -> int:
        return self.mean.shape[1]

    def reset(self) -> None:
        self._cache: list = [None] * self._slots
        self._first = True

    def _param(self) -> torch.Tensor:
        return next(self.vae.parameters())

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.dim() != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be [B, {self.latent_channels}, n, H, W], got {list(latents.shape)}")
        p = self._param()
        z = latents.to(p.device, torch.float32) * self.std.to(p.device) + self.mean.to(p.device)
        x = self.vae.post_quant_conv(z.to(p.dtype))
        pieces = []
        for i in range(x.shape[2]):
            pieces.append(self.vae.decoder(x[:, :, i:i + 1], feat_cache=self._cache, feat_idx=[0],
                                           first_chunk=self._first))
            self._first = False
        video = torch.cat(pieces, dim=2).float().clamp(-1, 1)  # [B, 3, T, H, W] in [-1, 1]
        return (video.permute(0, 2, 1, 3, 4) + 1) / 2

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.dim() != 5 or frames.shape[2] != 3 or (frames.shape[1] - 1) % self.temporal_stride:
            raise ValueError(f"frames must be [B, 1 + 4k, 3, H, W] (1, 5, 9, ... frames), got {list(frames.shape)}")
        h, w = frames.shape[-2:]
        if h % self.spatial_stride or w % self.spatial_stride:
            raise ValueError(f"frame size {h}x{w} must be divisible by {self.spatial_stride}")
        p = self._param()
        x = frames.to(p.device, p.dtype).permute(0, 2, 1, 3, 4) * 2 - 1
        mu = self.vae.encode(x).latent_dist.mode().float()
        return (mu - self.mean.to(p.device)) / self.std.to(p.device)
