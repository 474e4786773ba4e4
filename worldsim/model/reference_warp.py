"""Control-conditioned warp of the reference frame on the latent grid, before the DiT tokenises it.

A ``frame_reference`` DiT sees the last clean latent frame through a patch embedding: one token per 2x2 latent
pixels (16x16 video pixels with the toy codec). Walking moves the near ground by 1-2 video pixels per frame, a
fraction of a latent pixel that differs row by row (perspective): the DiT would have to build that sub-token warp
from attention between patch tokens, and the toy teachers did not (held W/S moved their frames by 0.1 px per
frame). Given the world's true next frame as the reference instead, the same teacher streams the ground at the
world's speed: it copies its reference sharply enough; what it lacks is the warp.

This module supplies it where convolutions do it naturally: a small CNN on each reference frame [C, H, W] (with
the latent row and column as two extra input channels, since the flow of a walk depends on the row), whose hidden
features are scaled and shifted (FiLM) by an MLP of the frame's controls, outputs a correction added to the
reference. Its last convolution is zero-initialised, so a DiT that gains the module computes exactly what it did
before; frames with no controls (absent, or dropped for guidance) or no reference yet (zeros) are left unchanged.

Measured on the toy world (docs/EXPERIMENTS.md, "Reference warp"): it makes the default's teacher turn and strafe
much more (strafing four times as far), but walking still barely moves, and the rollouts drift more; the toy recipe
keeps it off. Trained with ``stage.warp_weight`` / ``stage.warp_only`` (train/stages/teacher.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .control import has_reference


class ReferenceWarp(nn.Module):
    """reference [B, C, F, H, W] + controls per frame -> the reference as the controls move it (same shape)."""

    def __init__(self, channels: int, control_dim: int, hidden: int):
        super().__init__()
        self.film = nn.Sequential(nn.Linear(control_dim, hidden), nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.conv_in = nn.Conv2d(channels + 2, hidden, 3, padding=1)
        self.conv_mid = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv_out = nn.Conv2d(hidden, channels, 3, padding=1)
        self.zero_output()

    def zero_output(self) -> None:
        """Make the module a no-op (its initial state): a zero correction everywhere."""
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, reference: torch.Tensor, controls: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """reference [B, C, F, H, W]; controls [B, F, D] (the control MLP's input features); present [B, F, 1]
        (1 where the frame carries controls)."""
        b, c, f, h, w = reference.shape
        x = reference.transpose(1, 2).reshape(b * f, c, h, w)  # [B*F, C, H, W]
        rows = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)[:, None].expand(h, w)
        cols = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)[None, :].expand(h, w)
        grid = torch.stack([rows, cols]).expand(b * f, 2, h, w)
        hidden = F.silu(self.conv_in(torch.cat([x, grid], dim=1)))  # [B*F, hidden, H, W]
        scale, shift = self.film(controls.to(x.dtype)).reshape(b * f, -1)[..., None, None].chunk(2, dim=1)
        hidden = F.silu(self.conv_mid(hidden * (1 + scale) + shift))
        gate = (present[..., 0] * has_reference(reference)).reshape(b * f).to(x.dtype)  # [B*F]
        delta = self.conv_out(hidden) * gate[:, None, None, None]  # [B*F, C, H, W]
        return reference + delta.reshape(b, f, c, h, w).transpose(1, 2)
