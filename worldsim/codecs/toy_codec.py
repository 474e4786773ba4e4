"""A tiny per-frame convolutional autoencoder for the toy world: 64x64 RGB <-> 16 x 8 x 8 latents.

It plays the Wan VAE's role for the small default model (the DiT works in its latent space), at a size that
trains on a CPU in minutes. Each frame is coded on its own (temporal stride 1), so streaming decode is trivially
equal to one-shot decode. Latents leave ``encode`` normalised per channel (``latent_mean``/``latent_std``,
buffers saved with the weights), so the DiT sees about unit-variance inputs as it does with Wan's normalised
latents. The file format is one ``.safetensors`` with ``{"toy_codec": <config JSON>}`` in the header.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints.base import CheckpointError
from ..checkpoints.safetensors_io import read_metadata, read_tensors, save_tensors

FORMAT_KEY = "toy_codec"


@dataclass(frozen=True)
class ToyCodecConfig:
    latent_channels: int = 16
    channels: tuple[int, ...] = (32, 64, 128)  # one stride-2 stage each: spatial stride 2**len(channels)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class ToyCodec(nn.Module):
    temporal_stride = 1

    def __init__(self, cfg: ToyCodecConfig = ToyCodecConfig()):
        super().__init__()
        self.cfg = cfg
        self.spatial_stride = 2 ** len(cfg.channels)
        enc: list[nn.Module] = []
        c_in = 3
        for c in cfg.channels:  # stride-2 conv then a residual block, per stage
            enc += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), ResBlock(c)]
            c_in = c
        enc += [nn.SiLU(), nn.Conv2d(c_in, cfg.latent_channels, 1)]
        self.encoder = nn.Sequential(*enc)
        dec: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, c_in, 3, padding=1)]
        for c in reversed(cfg.channels):
            dec += [ResBlock(c_in), nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c, 3, padding=1)]
            c_in = c
        dec += [nn.SiLU(), nn.Conv2d(c_in, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_channels))
        self.register_buffer("latent_std", torch.ones(cfg.latent_channels))

    # ---- per-frame maps on [N, C, H, W] --------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] in [0, 1] -> raw (unnormalised) latents [N, C, H/s, W/s]."""
        return self.encoder(images * 2 - 1)

    def decode_images(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents [N, C, h, w] -> images [N, 3, h*s, w*s], about [0, 1] (unclamped, for the training loss)."""
        return self.decoder(z) * 0.5 + 0.5

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction of images [N, 3, H, W] (the training path)."""
        return self.decode_images(self.encode_images(images))

    def _norm(self, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.latent_mean.view(1, c, 1, 1, 1), self.latent_std.view(1, c, 1, 1, 1)

    # ---- video API: frames [B, T, 3, H, W] <-> normalised latents [B, C, T, h, w] ----------------------------
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        z = self.encode_images(frames.flatten(0, 1)).unflatten(0, (b, t)).transpose(1, 2)  # [B, C, T, h, w]
        mean, std = self._norm(z.shape[1])
        return (z - mean) / std

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """StreamingDecoder.decode: latents [B, C, n, h, w] -> frames [B, n, 3, H, W] in [0, 1]."""
        mean, std = self._norm(latents.shape[1])
        z = (latents.to(self.latent_std.dtype) * std + mean).transpose(1, 2)  # [B, n, C, h, w]
        return self.decode_images(z.flatten(0, 1)).clamp(0, 1).unflatten(0, z.shape[:2])

    def reset(self) -> None:
        """StreamingDecoder.reset: a per-frame codec carries no state between chunks."""

    @torch.no_grad()
    def set_latent_stats(self, raw: torch.Tensor) -> None:
        """Normalise future latents by the per-channel mean/std of raw latents [N, C, h, w]."""
        self.latent_mean.copy_(raw.mean(dim=(0, 2, 3)))
        self.latent_std.copy_(raw.std(dim=(0, 2, 3)).clamp_min(1e-4))

    # ---- files ---------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        meta = {FORMAT_KEY: json.dumps(dataclasses.asdict(self.cfg))}
        return save_tensors(self.state_dict(), Path(path), meta)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> "ToyCodec":
        path = Path(path)
        meta = read_metadata(path)
        if FORMAT_KEY not in meta:
            raise CheckpointError(f"{path}: not a toy codec file (no {FORMAT_KEY!r} in the safetensors header)")
        codec = cls(ToyCodecConfig(**json.loads(meta[FORMAT_KEY])))
        try:
            codec.load_state_dict(read_tensors(path))
        except RuntimeError as err:
            raise CheckpointError(f"{path}: toy codec weights do not fit its config: {err}") from err
        return codec.to(device).eval()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]."""
    mse = F.mse_loss(a.clamp(0, 1).float(), b.float()).item()
    return float("inf") if mse == 0 else -10.0 * torch.log10(torch.tensor(mse)).item()
