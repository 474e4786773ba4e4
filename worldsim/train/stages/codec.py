"""Stage ``codec``: train the toy world's per-frame autoencoder (:class:`~worldsim.codecs.toy_codec.ToyCodec`).

Loss: pixel MSE plus ``edge_weight`` times the L1 distance of horizontal/vertical image gradients (keeps object
edges sharp, which plain MSE blurs). Reported: reconstruction PSNR. The export also measures the per-channel
mean/std of the final encoder's latents on recent training frames and stores them, so ``encode`` hands the DiT
normalised latents.

``--init CODEC`` starts from a trained toy codec (its architecture, not ``stage.channels``). With
``stage.train_encoder: false`` only its decoder trains: the encoder and the latent statistics stay the init's, so
the latent space is unchanged and the DiTs trained on it still read and write its latents. (A model whose reference
frames pass through the codec, a package with a reference flow, sees other references with the new decoder: its
teacher and student are fine-tuned with it; docs/EXPERIMENTS.md, "What caps walking now".)

``stage.cycle_weight`` adds the round trip's error: a frame's latent decoded and encoded again should come back as
that latent (squared error over the latent statistics: normalised units for a trained codec). The toy default's
first codec moved the near ground about a pixel towards the horizon at every round trip, and with it every
reference frame its reference flow moved.
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
    train_encoder: bool = True  # false: the decoder alone trains (needs --init; the latent space stays the init's)
    cycle_weight: float = 0.0  # weight of the round trip's latent error (encode(decode(z)) against z)


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
        if self.ctx.init is not None:
            codec = ToyCodec.load(self.ctx.init).train()
            self.codec_cfg = codec.cfg
        elif not self.opts.train_encoder:
            raise ValueError("stage.train_encoder=false trains a decoder for an existing latent space: give the "
                             "trained toy codec with --init CODEC")
        else:
            self.codec_cfg = ToyCodecConfig(self.opts.latent_channels, tuple(self.opts.channels))
            codec = ToyCodec(self.codec_cfg)
        codec.encoder.requires_grad_(self.opts.train_encoder)
        self.models["codec"] = codec
        self.optimizers["codec"] = self.adamw(codec)
        self.recent: deque[torch.Tensor] = deque(maxlen=self.opts.stats_batches)

    def _reconstruct(self, batch: FrameBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [B, T, 3, H, W] -> (images [N, 3, H, W], reconstructions [N, 3, H, W])."""
        images = batch.frames.flatten(0, 1)
        return images, self.models["codec"](images)  # through the (DDP) wrapper, so gradients synchronise

    def cycle_error(self, images: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        """Mean squared error, over the latent statistics, between the latents of images [N, 3, H, W] and those of
        their reconstructions: how far one round trip (decode, encode) moves a latent."""
        codec = self.unwrap("codec")
        target = codec.encode_images(images).detach()
        return ((codec.encode_images(recon) - target) / codec.latent_std.view(1, -1, 1, 1)).pow(2).mean()

    def step(self, batch: FrameBatch, step: int) -> dict[str, float]:
        images, recon = self._reconstruct(batch)
        mse = F.mse_loss(recon.float(), images)
        loss = mse + self.opts.edge_weight * edge_loss(recon.float(), images)
        metrics = {"mse": mse.item(), "psnr": psnr(recon.detach(), images)}
        if self.opts.cycle_weight:
            cycle = self.cycle_error(images, recon.float())
            loss = loss + self.opts.cycle_weight * cycle
            metrics["cycle"] = cycle.item()
        self.update(loss, "codec")
        self.recent.append(images.detach().cpu())
        return {"loss": loss.item(), **metrics}

    def validate(self, batch: FrameBatch) -> dict[str, float]:
        images, recon = self._reconstruct(batch)
        return {"mse": F.mse_loss(recon.float().clamp(0, 1), images).item(), "psnr": psnr(recon, images),
                "cycle": self.cycle_error(images, recon.float().clamp(0, 1)).item()}

    def sample(self, batch: FrameBatch) -> torch.Tensor:
        """Originals over reconstructions: [2B, T, 3, H, W]."""
        _, recon = self._reconstruct(batch)
        return torch.cat([batch.frames, recon.clamp(0, 1).view_as(batch.frames)])

    @torch.no_grad()
    def export(self, name: str, state: dict[str, torch.Tensor], path: Path) -> Path:
        codec = ToyCodec(self.codec_cfg)
        codec.load_state_dict(state)
        if self.recent and self.opts.train_encoder:  # a frozen encoder keeps the init's statistics
            codec.set_latent_stats(torch.cat([codec.encode_images(x) for x in self.recent]))
        return codec.save(path.with_suffix(".safetensors"))
