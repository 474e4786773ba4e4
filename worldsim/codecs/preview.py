"""A latent preview decoder: a fixed linear map of latent channels to RGB, upsampled, one frame per latent step.

It needs no weights, so a daemon or a test can show frames from any model at once (the untrained small preset
included). It is a preview, not a VAE: colours follow the first principal directions of the latent, nothing more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import frames_for_chunk


class PreviewDecoder:
    def __init__(self, latent_channels: int, temporal_stride: int = 4, spatial_stride: int = 8):
        self.temporal_stride = temporal_stride
        self.spatial_stride = spatial_stride
        g = torch.Generator().manual_seed(0)
        proj = torch.randn(3, latent_channels, generator=g)
        self.proj = proj / proj.norm(dim=1, keepdim=True)  # [3, C], unit rows: latents ~N(0,1) map to ~N(0,1)
        self._first = True

    def reset(self) -> None:
        self._first = True

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, n, h, w = latents.shape
        rgb = torch.einsum("oc,bcnhw->bnohw", self.proj.to(latents.device), latents.float())
        rgb = (rgb * 0.25 + 0.5).clamp(0, 1)  # [B, n, 3, H, W]
        rgb = rgb.repeat_interleave(self.temporal_stride, dim=1)
        rgb = rgb[:, -frames_for_chunk(n, self.temporal_stride, self._first):]
        self._first = False
        s = self.spatial_stride
        return F.interpolate(rgb.flatten(0, 1), scale_factor=s, mode="nearest").unflatten(0, (b, -1))
