"""Distribution Matching Distillation (DMD, as Self Forcing trains it; reference §5.4-5.5).

The student's samples x are noised to a random timestep; the teacher ("real score", with guidance) and the critic
("fake score", a denoiser trained on the student's own samples) each predict x0. Their difference is the gradient of
KL(student || teacher) with respect to x, normalised per sample by mean|x - x0_real| (DMD eq. 8), and is applied as
an MSE towards the stop-gradient target x - g. The critic is trained with the plain flow-matching loss on detached
student samples, so it tracks the student's distribution.

Everything here takes plain callables, ``flow(x_t, t) -> flow``, so the same code serves video DiTs and a 2-D toy.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..sampling.schedule import FlowMatchSchedule
from .flow_matching import add_noise, flow_matching_loss, sample_timesteps, timestep_shape, x0_from_flow

Flow = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> predicted flow noise - x0

TIMESTEP_RANGE = (0.02, 0.98)  # Self Forcing's min_step / max_step ratios of num_train_timesteps


def dmd_loss(x: torch.Tensor, real_flow: Flow, fake_flow: Flow, schedule: FlowMatchSchedule, *,
             generator: torch.Generator | None = None, timestep_range: tuple[float, float] = TIMESTEP_RANGE,
             timestep_sampling: str = "uniform") -> tuple[torch.Tensor, dict[str, float]]:
    """DMD loss of student samples x [B, ...] (carrying gradient); returns (loss, metrics).

    One timestep per sample (all frames alike, as the bidirectional scores expect). d loss / d x = g / x.numel().
    """
    shape = timestep_shape(x)
    t = sample_timesteps(schedule, shape[:1], generator=generator, sampling=timestep_sampling,
                         timestep_range=timestep_range, device=x.device)
    t = t[:, None].expand(shape) if len(shape) == 2 else t
    with torch.no_grad():
        xd = x.detach()
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        xt = add_noise(schedule, xd, noise, t)
        real = x0_from_flow(schedule, real_flow(xt, t), xt, t).double()
        fake = x0_from_flow(schedule, fake_flow(xt, t), xt, t).double()
        dims = tuple(range(1, x.dim()))
        g = torch.nan_to_num((fake - real) / (xd.double() - real).abs().mean(dim=dims, keepdim=True))
    loss = 0.5 * torch.nn.functional.mse_loss(x.double(), (x.double() - g).detach())
    return loss, {"dmd_grad": g.abs().mean().item()}


def critic_loss(critic, x: torch.Tensor, context, controls, schedule: FlowMatchSchedule, *,
                generator: torch.Generator | None = None, timestep_range: tuple[float, float] = TIMESTEP_RANGE,
                timestep_sampling: str = "uniform") -> torch.Tensor:
    """Flow-matching loss of the critic (a denoiser, see :mod:`.flow_matching`) on detached student samples."""
    return flow_matching_loss(critic, x.detach(), context, controls, schedule, generator=generator,
                              timestep_sampling=timestep_sampling, per_frame=False, timestep_range=timestep_range)
