"""One chunk of the few-step Self Forcing sampler, shared by inference (:mod:`worldsim.sampling.session`) and the
training rollout (:mod:`worldsim.train.rollout`), so that what is trained is exactly what is served.

Per chunk: start from fresh noise (or, when serving with ``SamplerConfig.reference_start``, from the chunk's
reference frame noised to its first timestep), at each sampling timestep take x0 from the model's flow and re-noise
it with fresh noise to the next timestep; the last step's x0 is the chunk. Before it enters the KV cache the clean
chunk is re-noised to the ``context_noise`` timestep (Self Forcing's context timestep; nothing is drawn when it is
0) and run once more at that timestep.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..model.control import Controls
from .schedule import FlowMatchSchedule

Flow = Callable[[torch.Tensor, float, bool], torch.Tensor]  # (x, t, is_exit_step) -> the model's flow for x at t
Noise = Callable[[], torch.Tensor]  # fresh noise shaped like the chunk, from the stream's generator


def denoise_chunk(flow: Flow, noise: Noise, schedule: FlowMatchSchedule, timesteps: Sequence[float], *,
                  exit_step: int | None = None, grad: bool = False, start: torch.Tensor | None = None) -> torch.Tensor:
    """Clean latents of one chunk, denoised from fresh noise (or from clean latents ``start`` noised to the first
    timestep) down to ``exit_step`` (default: the last timestep). Only the exit step runs with gradient, and only
    when ``grad``."""
    last = len(timesteps) - 1 if exit_step is None else exit_step
    x = noise() if start is None else schedule.add_noise(start, noise(), timesteps[0])
    for step, t in enumerate(timesteps[:last + 1]):
        exit_now = step == last
        with torch.set_grad_enabled(grad and exit_now):
            x0 = schedule.x0_from_flow(flow(x, t, exit_now), x, t)
        if not exit_now:
            x = schedule.add_noise(x0, noise(), timesteps[step + 1])
    return x0


def context_input(x0: torch.Tensor, noise: Noise, schedule: FlowMatchSchedule, context_noise: float) -> torch.Tensor:
    """The finished chunk as the cache sees it: detached, re-noised to ``context_noise`` when that is above 0."""
    clean = x0.detach()
    return schedule.add_noise(clean, noise(), context_noise) if context_noise > 0 else clean


# (the last frame [B, C, 1, H, W], one frame's controls) -> that frame moved as the controls move the view
MoveReference = Callable[[torch.Tensor, Controls], torch.Tensor]


def with_reference(controls: Controls | None, last: torch.Tensor | None, shape: tuple[int, ...], *, device,
                   dtype, move: MoveReference | None = None) -> Controls:
    """The controls of a chunk of ``shape`` [B, C, n, H, W] for a ``frame_reference`` model: every frame's reference
    is the stream's last clean frame ``last`` [B, C, 1, H, W] (None before the first chunk: zeros), first moved by
    ``move`` and the chunk's first frame's controls when there are any (a package's reference flow)."""
    if move is not None and last is not None and controls is not None and controls.sources():
        last = move(last, controls.slice_frames(0, 1))
    ref = torch.zeros((*shape[:2], 1, *shape[3:]), device=device, dtype=dtype) if last is None else last.to(dtype)
    return (controls or Controls()).with_reference(ref.expand(shape))
