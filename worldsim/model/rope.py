"""Wan2.1's 3-D rotary position embedding, computed from positions rather than read from a table.

The head dimension D splits into time / height / width parts of D-4(D//6), 2(D//6), 2(D//6) channels
(44/42/42 for D=128), each rotated as interleaved complex pairs (channels 2i, 2i+1) with theta = 10000.
Wan precomputes a 1024-row table, which caps a stream at 1024 latent frames; here the angle ``pos * freq`` is
computed in float64 for any position, giving the same numbers below 1024 and no limit above it. Attention only
sees position differences, so a rolling window at frame 10^6 behaves as one at frame 100.
"""

from __future__ import annotations

import functools

import torch

THETA = 10000.0


def axis_split(head_dim: int) -> tuple[int, int, int]:
    """Channels of the time, height and width parts of one head."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _inv_freq(channels: int, device: torch.device) -> torch.Tensor:
    # [channels/2] float64: theta^(-2i/channels)
    return 1.0 / THETA ** (torch.arange(0, channels, 2, dtype=torch.float64, device=device) / channels)


def rope_table(head_dim: int, frame_positions: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The unit rotations e^(i angle) for every token of a [F, height, width] grid, flattened frame-major:
    complex64 [F*h*w, D/2] (angles in float64, rounded once to float32 parts).

    frame_positions: [F] absolute latent-frame indices (any integers >= 0, no upper bound). Only the time part
    depends on them; the height/width part is computed once per grid (a stream asks for new positions every chunk).
    """
    dt, _, _ = axis_split(head_dim)
    f = frame_positions.to(torch.float64)[:, None] * _inv_freq(dt, frame_positions.device)  # [F, dt/2]
    time = _unit(f)
    space = _space_table(head_dim, height, width, frame_positions.device)  # [h*w, (dh+dw)/2]
    n_f, n_s = time.shape[0], space.shape[0]
    return torch.cat([time[:, None].expand(n_f, n_s, -1), space[None].expand(n_f, n_s, -1)],
                     dim=-1).reshape(n_f * n_s, head_dim // 2)


@functools.lru_cache(maxsize=8)
@torch.inference_mode(False)  # kept across calls: a normal tensor, also when first asked for while serving
def _space_table(head_dim: int, height: int, width: int, device: torch.device) -> torch.Tensor:
    """The height and width rotations of every token of one frame: complex64 [h*w, (dh+dw)/2]."""
    _, dh, dw = axis_split(head_dim)
    h = torch.arange(height, dtype=torch.float64, device=device)[:, None] * _inv_freq(dh, device)  # [h, dh/2]
    w = torch.arange(width, dtype=torch.float64, device=device)[:, None] * _inv_freq(dw, device)  # [w, dw/2]
    angles = torch.cat([h[:, None, :].expand(height, width, -1), w[None, :, :].expand(height, width, -1)], dim=-1)
    return _unit(angles.reshape(height * width, -1))


def _unit(angles: torch.Tensor) -> torch.Tensor:
    """float64 angles -> complex64 e^(i angle), each part rounded once to float32."""
    return torch.complex(angles.cos().float(), angles.sin().float())


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x [B, L, H, D] as complex numbers by per-token rotations (table: complex
    [L, D/2], or [B, L, D/2] when the batch rows sit at different positions); math in float32. One complex
    multiply: a handful of kernels per call, which matters on a CPU where each costs more than its arithmetic."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # [B, L, H, D/2]
    rot = table[None] if table.dim() == 2 else table
    return torch.view_as_real(pairs * rot[:, :, None]).flatten(-2).type_as(x)
