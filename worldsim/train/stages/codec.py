"""Stage ``codec``: train the toy world's per-frame autoencoder (:class:`~worldsim.codecs.toy_codec.ToyCodec`).

Loss: pixel MSE plus ``edge_weight`` times the L1 distance of horizontal/vertical image gradients (keeps object
edges sharp, which plain MSE blurs). Reported: reconstruction PSNR. The export also measures the per-channel
mean/std of the final encoder's latents on recent training frames and stores them, so ``encode`` hands the DiT
normalised latents.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...codecs.toy_codec import ToyCodec, ToyCodecConfig, psnr
from ..data import FrameBatch
from .base import Stage


@dataclass
class CodecOptions:
    latent_channels: int = 16
    channels: tuple[int, ...] = (16, 32, 64)
    edge_weight: float = 0.1
    stats_batches: int = 16  # recent training batches the latent statistics are measured on


def edge_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L1 between the finite-difference gradients of images a, b [N, 3, H, W]."""
    dx = lambda x: x[..., :, 1:] - x[..., :, :-1]  # noqa: E731
    dy = lambda x: x[..., 1:, :] - x[..., :-1, :]  # noqa: E731
    return F.l1_loss(dx(a), dx(b)) + F.l1_loss(dy(a), dy(b))


class CodecStage(Stage):
    name = "codec"
    Options = CodecOptions
    data_kind = "frames"
    ema_model = "codec"

    def build(self) -> None:
        self.codec_cfg = ToyCodecConfig(self.opts.latent_channels, tuple(self.opts.channels))
        self.models["codec"] = ToyCodec(self.codec_cfg)
        self.optimizers["codec"] = self.adamw(self.models["codec"])
        self.recent: deque[torch.Tensor] = deque(maxlen=self.opts.stats_batches)

    def _reconstruct(self, batch: FrameBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [B, T, 3, H, W] -> (images [N, 3, H, W], reconstructions [N, 3, H, W])."""
        images = batch.frames.flatten(0, 1)
        return images, self.models["codec"](images)  # through the (DDP) wrapper, so gradients synchronise

    def step(self, batch: FrameBatch, step: int) -> dict[str, float]:
        images, recon = self._reconstruct(batch)
        mse = F.mse_loss(recon.float(), images)
        loss = mse + self.opts.edge_weight * edge_loss(recon.float(), images)
        self.update(loss, "codec")
        self.recent.append(images.detach().cpu())
        return {"loss": loss.item(), "mse": mse.item(), "psnr": psnr(recon.detach(), images)}

    def validate(self, batch: FrameBatch) -> dict[str, float]:
        images, recon = self._reconstruct(batch)
        return {"mse": F.mse_loss(recon.float().clamp(0, 1), images).item(), "psnr": psnr(recon, images)}

    def sample(self, batch: FrameBatch) -> torch.Tensor:
        """Originals over reconstructions: [2B, T, 3, H, W]."""
        _, recon = self._reconstruct(batch)
        return torch.cat([batch.frames, recon.clamp(0, 1).view_as(batch.frames)])

    @torch.no_grad()
    def export(self, name: str, state: dict[str, torch.Tensor], path: Path) -> Path:
        codec = ToyCodec(self.codec_cfg)
        codec.load_state_dict(state)
        if self.recent:
            codec.set_latent_stats(torch.cat([codec.encode_images(x) for x in self.recent]))
        return codec.save(path.with_suffix(".safetensors"))
