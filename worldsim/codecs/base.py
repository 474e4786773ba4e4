"""The streaming decoder interface every codec implements.

A streaming decoder turns chunks of latents into video frames, carrying whatever temporal state it needs
between chunks, so that decoding a stream chunk by chunk gives the same frames as decoding it whole. With a
temporal stride k (4 for the Wan VAE and TAEHV, 1 for a per-frame codec), the first chunk of n latents gives
1 + k(n - 1) frames and every later chunk k*n frames.
"""

from __future__ import annotations

from typing import Protocol

import torch


class StreamingDecoder(Protocol):
    temporal_stride: int  # video frames per latent frame after the first
    spatial_stride: int  # video pixels per latent pixel

    def reset(self) -> None:
        """Forget the stream; the next chunk is decoded as the first."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, n, H, W] of the next chunk -> frames [B, T, 3, H*s, W*s], float in [0, 1]."""


def frames_for_chunk(num_latents: int, temporal_stride: int, first: bool) -> int:
    """Video frames a chunk of ``num_latents`` decodes to."""
    return 1 + temporal_stride * (num_latents - 1) if first else temporal_stride * num_latents


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] float in [0, 1] -> [..., H, W, 3] uint8 on the CPU (what clients and video writers take)."""
    return (frames.clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu()
