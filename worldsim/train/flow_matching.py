"""Flow-matching objective (rectified flow, Wan/Self Forcing conventions): the teacher's loss and the DMD critic's.

x_t = (1 - sigma) x0 + sigma * noise, and the model predicts the flow v = noise - x0 (see
:class:`~worldsim.sampling.schedule.FlowMatchSchedule`). Timesteps are entries of the schedule's shifted
1000-entry table, so training sees exactly the timesteps the sampler uses.

A denoiser is any callable ``model(x_t, t, context, controls=controls) -> flow``. For video latents
[B, C, F, H, W] the timesteps t are [B, F]; for any other shape (e.g. 2-D points [B, 2]) they are [B].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..sampling.schedule import FlowMatchSchedule

TIMESTEP_SAMPLING = ("uniform", "logit_normal")


def sample_timesteps(schedule: FlowMatchSchedule, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
                     sampling: str = "uniform", timestep_range: tuple[float, float] = (0.0, 1.0),
                     device=None) -> torch.Tensor:
    """Timesteps of the shifted table, float32 of ``shape``.

    uniform: a uniformly drawn table entry (Self Forcing's ``randint(0, 1000)`` then shift); logit_normal: the
    unshifted position s = sigmoid(N(0, 1)) picks the entry (SD3-style, more weight on mid noise levels).
    timestep_range: (lo, hi) as fractions of num_train_timesteps; timesteps are clamped to it (DMD uses 0.02, 0.98).
    """
    if sampling not in TIMESTEP_SAMPLING:
        raise ValueError(f"unknown timestep sampling {sampling!r}; choose one of {TIMESTEP_SAMPLING}")
    n = schedule.num_train_timesteps
    if sampling == "uniform":
        s = torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    else:
        s = torch.sigmoid(torch.randn(shape, generator=generator, device=device, dtype=torch.float64))
    idx = ((1 - s) * n).long().clamp(0, n - 1)  # entry i has unshifted position 1 - i/n
    t = schedule.timesteps.to(idx.device)[idx]
    lo, hi = timestep_range
    return t.clamp(lo * n, hi * n).float()


def expand_like(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast per-sample [B] or per-frame [B, F] values over x ([B, C, F, H, W] for video, else [B, ...])."""
    if v.dim() == 2:
        return v[:, None, :, None, None]
    return v.reshape(v.shape[0], *([1] * (x.dim() - 1)))


def timestep_shape(x: torch.Tensor) -> tuple[int, ...]:
    """[B, F] for video latents [B, C, F, H, W], [B] otherwise."""
    return (x.shape[0], x.shape[2]) if x.dim() == 5 else (x.shape[0],)


def group_frames(t: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """Make frames share their chunk's first timestep: t [B, F] -> [B, F] constant within each chunk."""
    first = torch.arange(t.shape[1], device=t.device) // chunk_frames * chunk_frames
    return t[:, first]


def add_noise(schedule: FlowMatchSchedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - sigma) x0 + sigma noise, in float64 then cast back (sigma: the nearest table entry of t)."""
    s = expand_like(schedule.sigma(t), x0)
    return ((1 - s) * x0.double() + s * noise.double()).to(x0.dtype)


def x0_from_flow(schedule: FlowMatchSchedule, flow: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    s = expand_like(schedule.sigma(t), xt)
    return (xt.double() - s * flow.double()).to(xt.dtype)


def flow_matching_loss(model, x0: torch.Tensor, context, controls, schedule: FlowMatchSchedule, *,
                       generator: torch.Generator | None = None, timestep_sampling: str = "uniform",
                       per_frame: bool = True, chunk_frames: int = 1,
                       timestep_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """MSE between the model's flow at a random timestep and the target noise - x0. Returns a scalar.

    x0: clean latents [B, C, F, H, W] (or any [B, ...]). per_frame: independent timesteps per group of
    ``chunk_frames`` latent frames (diffusion forcing; 1 = per frame, chunk size = per chunk); otherwise one
    timestep per sample (a bidirectional teacher, the DMD critic).
    """
    shape = timestep_shape(x0)
    t = sample_timesteps(schedule, shape if per_frame else shape[:1], generator=generator, sampling=timestep_sampling,
                         timestep_range=timestep_range, device=x0.device)
    if len(shape) == 2:
        t = group_frames(t, chunk_frames) if per_frame else t[:, None].expand(shape)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    xt = add_noise(schedule, x0, noise, t)
    flow = model(xt, t, context, controls=controls)
    return F.mse_loss(flow.float(), (noise - x0).float())
