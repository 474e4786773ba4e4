"""A TAEHV-compatible tiny video decoder (loads madebyollin's ``taew2_1`` weights for the Wan2.1 latent space).

Convolution only, per frame, with one frame of memory: every ``MemBlock`` sees its own input of the previous time
step. Layout (the indices are the state-dict names of ``taew2_1.pth``, ``decoder.<i>...``)::

    0 Clamp (3 tanh(x/3))   1 conv 16->c0   2 ReLU
    3-5 MemBlock c0    6 Upsample x2   7 TGrow(c0, 1)   8 conv c0->c1 (no bias)
    9-11 MemBlock c1   12 Upsample x2  13 TGrow(c1, 2)  14 conv c1->c2 (no bias)
    15-17 MemBlock c2  18 Upsample x2  19 TGrow(c2, 2)  20 conv c2->c3 (no bias)
    21 ReLU   22 conv c3->3

with (c0, c1, c2, c3) = (256, 128, 64, 64) for ``taew2_1``. A ``TGrow(c, s)`` is a 1x1 conv to ``s*c`` channels
read as ``s`` consecutive frames, so one latent frame becomes 4 frames at 8x the size. The first 3 frames of a
stream are dropped, giving Wan's 1 + 4(n-1) frames for n latents. TAEHV consumes the DiT's normalised latents as
they are (no mean/std) and outputs RGB in [0, 1].

Streaming runs each chunk in parallel over its frames and carries, per MemBlock, the last frame of its input to
the next chunk, so chunk-by-chunk decoding equals decoding the whole clip at once.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from ..checkpoints.base import CheckpointError
from ..weight_files import check_state_dict, read_weight_file

TIME_STRIDES = (1, 2, 2)  # TGrow strides of the three stages in taew2_1 (x4 in time)
PREFIX = "decoder."


def _conv(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)


class _Clamp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class MemBlock(nn.Module):
    """Residual block over ``cat[x_t, x_{t-1}]`` (channels in == out, as everywhere in the decoder)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(2 * channels, channels), nn.ReLU(), _conv(channels, channels), nn.ReLU(),
                                  _conv(channels, channels))

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(torch.cat([x, past], 1)) + x)


class TGrow(nn.Module):
    """[N*T, C, H, W] -> [N*T*stride, C, H, W]: each frame becomes ``stride`` frames."""

    def __init__(self, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv2d(channels, channels * stride, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).reshape(-1, *x.shape[1:])


@dataclass(frozen=True)
class TAEHVConfig:
    latent_channels: int = 16
    channels: tuple[int, int, int, int] = (256, 128, 64, 64)

    @property
    def frames_to_trim(self) -> int:
        """Leading frames of a stream that have no counterpart in Wan's 1 + 4(n-1) (3 for x4 in time)."""
        return math.prod(TIME_STRIDES) - 1


class TAEHVDecoder(nn.Module):
    """The decoder network; ``forward`` decodes one chunk given (and updating) the per-MemBlock memory."""

    def __init__(self, cfg: TAEHVConfig = TAEHVConfig()):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        layers: list[nn.Module] = [_Clamp(), _conv(cfg.latent_channels, c[0]), nn.ReLU()]
        for stage, stride in enumerate(TIME_STRIDES):
            layers += [MemBlock(c[stage]), MemBlock(c[stage]), MemBlock(c[stage]), nn.Upsample(scale_factor=2),
                       TGrow(c[stage], stride), _conv(c[stage], c[stage + 1], bias=False)]
        layers += [nn.ReLU(), _conv(c[3], 3)]
        self.decoder = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor, memory: dict[int, torch.Tensor]) -> torch.Tensor:
        """latents [N, T, C, H, W] -> frames [N, 4T, 3, 8H, 8W] (not clamped, not trimmed)."""
        n = latents.shape[0]
        x = latents.flatten(0, 1)
        for i, layer in enumerate(self.decoder):
            if isinstance(layer, MemBlock):
                frames = x.unflatten(0, (n, -1))
                prev = memory.get(i)
                prev = torch.zeros_like(frames[:, :1]) if prev is None else prev
                memory[i] = frames[:, -1:].clone()
                x = layer(x, torch.cat([prev, frames[:, :-1]], 1).flatten(0, 1))
            else:
                x = layer(x)
        return x.unflatten(0, (n, -1))


def load_taehv(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> TAEHVDecoder:
    """The decoder of a TAEHV weights file (``taew2_1.pth`` or ``.safetensors``; encoder weights are ignored).

    Channel widths are read off the weights. A TGrow stored with more output channels than this decoder's stride
    needs (a checkpoint trained with more temporal upsampling) keeps its last frame's channels, as TAEHV does.
    """
    weights = {k.removeprefix(PREFIX): v for k, v in read_weight_file(path).items() if k.startswith(PREFIX)}
    try:
        cfg = TAEHVConfig(latent_channels=weights["1.weight"].shape[1],
                          channels=(weights["1.weight"].shape[0], weights["8.weight"].shape[0],
                                    weights["14.weight"].shape[0], weights["20.weight"].shape[0]))
    except KeyError as err:
        raise CheckpointError(f"{path}: not a TAEHV checkpoint (no {(PREFIX + err.args[0])!r})") from None
    model = TAEHVDecoder(cfg)
    expected = model.decoder.state_dict()
    for i, layer in enumerate(model.decoder):
        key = f"{i}.conv.weight"
        if isinstance(layer, TGrow) and key in weights and weights[key].shape[0] > expected[key].shape[0]:
            weights[key] = weights[key][-expected[key].shape[0]:]
    check_state_dict(path, f"a TAEHV decoder with channels {cfg.channels}", expected, weights, prefix=PREFIX)
    model.decoder.load_state_dict(weights)
    return model.to(device=device, dtype=dtype).eval()


class TAEHVStreamingDecoder:
    """:class:`~worldsim.codecs.base.StreamingDecoder` over a :class:`TAEHVDecoder`.

    decode: normalised latents [B, C, n, H, W] -> frames [B, T, 3, 8H, 8W] float32 in [0, 1] (1 + 4(n-1) frames for
    the first chunk of a stream, 4n after).
    """

    temporal_stride = 4
    spatial_stride = 8

    def __init__(self, model: TAEHVDecoder):
        self.model = model.eval()
        self.reset()

    @property
    def latent_channels(self) -> int:
        return self.model.cfg.latent_channels

    def reset(self) -> None:
        self._memory: dict[int, torch.Tensor] = {}
        self._first = True

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.dim() != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must be [B, {self.latent_channels}, n, H, W], got {list(latents.shape)}")
        p = next(self.model.parameters())
        frames = self.model(latents.to(p.device, p.dtype).transpose(1, 2), self._memory).float().clamp(0, 1)
        if self._first:
            frames = frames[:, self.model.cfg.frames_to_trim:]
            self._first = False
        return frames
