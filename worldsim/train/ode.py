"""ODE initialisation (CausVid / Self Forcing, reference §5.7): regress the few-step causal student onto the
teacher's deterministic sampling trajectories before self-forcing.

The teacher integrates its (guided) flow from noise with Euler steps on a grid that contains the student's sampling
timesteps exactly (1000, 937.5, 833.3, 625 for shift 5), and the states at those timesteps plus the clean end are
kept. The student then learns, in one block-causal whole-clip forward, to map each chunk's state at a randomly
chosen student timestep straight to the trajectory's end.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from ..sampling.schedule import FlowMatchSchedule
from .flow_matching import expand_like, x0_from_flow

Flow = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t [B, C, F, H, W], t [B, F]) -> flow


def euler_sigmas(num_steps: int, shift: float, keep: list[float]) -> list[float]:
    """Decreasing sigmas from 1 to 0: ``num_steps`` shifted-uniform steps, with the ``keep`` sigmas inserted
    where they are not already on the grid (with shift 5 and num_steps a multiple of 4 they are)."""
    u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    grid = (shift * u / (1 + (shift - 1) * u)).tolist()
    for s in keep:
        if min(abs(s - g) for g in grid) > 1e-9:
            grid.append(s)
    return sorted(grid, reverse=True)


@torch.no_grad()
def ode_trajectory(flow: Flow, noise: torch.Tensor, schedule: FlowMatchSchedule, timesteps: list[float], *,
                   num_steps: int = 48, shift: float = 5.0) -> torch.Tensor:
    """Teacher states at the student's ``timesteps`` and the clean end: [len(timesteps) + 1, B, C, F, H, W].

    flow: the teacher's (guided) flow; noise [B, C, F, H, W] is the state at sigma 1 (so timesteps[0] must be 1000).
    """
    keep = [float(schedule.sigma(t)) for t in timesteps]
    if abs(keep[0] - 1.0) > 1e-9:
        raise ValueError(f"the trajectory starts from noise, so the first student timestep must be 1000, got {timesteps[0]}")
    sigmas = euler_sigmas(num_steps, shift, keep)
    x, states = noise, []
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        if any(abs(s - k) < 1e-9 for k in keep):
            states.append(x)
        t = torch.full(noise.shape[:1] + noise.shape[2:3], s * schedule.num_train_timesteps, device=x.device)
        x = (x.double() + (s_next - s) * flow(x, t).double()).to(x.dtype)
    return torch.stack(states + [x])


def ode_regression_loss(student, states: torch.Tensor, timesteps: list[float], context, controls,
                        schedule: FlowMatchSchedule, chunk_frames: int, *,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """MSE between the student's x0 and the trajectory's end, from one random trajectory state per chunk.

    states: [S + 1, B, C, F, H, W] from :func:`ode_trajectory` (S = len(timesteps)). student: a denoiser
    ``(x_t, t [B, F], context, controls=...) -> flow`` run over the whole clip (block-causal for the causal DiT).
    """
    s, b, _, f = states.shape[:4]
    pick = torch.randint(s - 1, (b, f // chunk_frames), generator=generator, device=states.device)
    pick = pick.repeat_interleave(chunk_frames, dim=1)  # [B, F]: one state index per chunk
    xt = states[:-1].gather(0, expand_like(pick, states[0])[None].expand_as(states[:1]))[0]  # [B, C, F, H, W]
    t = torch.tensor(timesteps, dtype=torch.float32, device=states.device)[pick]
    x0 = x0_from_flow(schedule, student(xt, t, context, controls=controls), xt, t)
    return F.mse_loss(x0.float(), states[-1].float())
