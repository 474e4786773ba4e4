"""Self Forcing's training rollout (paper Algorithm 1): the student generates a clip chunk by chunk exactly as a
:class:`~worldsim.sampling.session.StreamingSession` does, and the loss reaches it through one denoising step per chunk.

Per chunk: :func:`~worldsim.sampling.denoise.denoise_chunk` (the code the streaming session runs) up to the
rollout's exit step, then write the chunk into the KV cache with a re-run at ``context_noise``. Only the exit step's forward carries gradient; the earlier steps and the re-run run
under no_grad, so the cache holds detached keys and a chunk's output depends on the student's parameters only
through its own exit step (the paper's "stochastic gradient truncation", not the official code's leak through
in-place cache writes, reference §5.3). The exit step reads the cache without writing it (``write=False``), so no
grad-carrying tensor ever lands in the shared buffers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..model.control import Controls
from ..sampling.denoise import MoveReference, context_input, denoise_chunk, with_reference
from ..sampling.schedule import FlowMatchSchedule, SamplerConfig


@dataclass
class Rollout:
    latents: torch.Tensor  # [B, C, F, H, W] clean latents; chunk c carries gradient from its exit step only
    exit_step: int  # index into the sampler's timesteps at which every chunk stopped
    references: torch.Tensor | None = None  # [B, C, F, H, W] each frame's reference as fed (frame_reference models)


def shared_randint(high: int, generator: torch.Generator | None = None) -> int:
    """A random integer in [0, high), the same on every process (drawn here, then broadcast from rank 0 when
    torch.distributed is running): the rollout's exit step, shared by all chunks, and its scored window's end."""
    step = torch.randint(high, (1,), generator=generator)
    if dist.is_available() and dist.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        step = step.to(device)
        dist.broadcast(step, src=0)
    return int(step.item())


def self_forcing_rollout(model: nn.Module, context: torch.Tensor | Sequence[torch.Tensor], *, num_frames: int,
                         latent_shape: tuple[int, int, int], sampler: SamplerConfig, exit_step: int,
                         controls: Controls | None = None, generator: torch.Generator | None = None,
                         window_frames: int | None = None, sink_frames: int = 0,
                         move_reference: MoveReference | None = None) -> Rollout:
    """Generate ``num_frames`` latent frames with the student, chunk by chunk, through a fresh KV cache.

    model: the causal DiT or its training wrapper (every forward goes through ``model(...)`` so DDP/FSDP see it).
    context: text embeddings [B, L, text_dim], or one per chunk (a prompt switch at a chunk boundary, "soft":
    earlier frames keep the K/V they were made with). controls: Controls for all ``num_frames`` latent frames.
    latent_shape: (C, H, W). generator: draws the noise in the same order as a StreamingSession, so with
    ``exit_step`` the last step and no grad the rollout reproduces the session's output for the same seed.
    window_frames: the cache's rolling window in latent frames, as a session streams with it; default the whole
    rollout (no rolling), as Self Forcing trains. With a shorter window only the chunks of the last window carry
    gradient (a long rollout of which one window is scored, as Self Forcing++ trains); those before run without.
    sink_frames: the rollout's first frames kept in the cache beside the window, as a session with that sink keeps
    them, so every later chunk also sees where the stream began.
    move_reference: for a ``frame_reference`` model, moves each chunk's reference by its first frame's controls, as
    the session does with a package's reference flow.
    """
    net = model.module if isinstance(model, DistributedDataParallel) else model
    n = net.cfg.chunk_frames
    if num_frames % n:
        raise ValueError(f"num_frames ({num_frames}) must be a multiple of the chunk size ({n})")
    per_chunk = not isinstance(context, torch.Tensor)
    if per_chunk and len(context) != num_frames // n:
        raise ValueError(f"got {len(context)} per-chunk contexts for {num_frames // n} chunks")
    schedule = FlowMatchSchedule.from_config(sampler)
    timesteps = schedule.sampling_timesteps(sampler)
    if not 0 <= exit_step < len(timesteps):
        raise ValueError(f"exit_step must be in [0, {len(timesteps)}), got {exit_step}")
    window = window_frames or num_frames
    if window % n or not n <= window <= num_frames:
        raise ValueError(f"window_frames ({window}) must be a multiple of the chunk size ({n}) within the rollout "
                         f"({num_frames} frames)")
    if sink_frames < 0 or sink_frames % n or sink_frames >= num_frames:
        raise ValueError(f"sink_frames ({sink_frames}) must be whole chunks of {n} frames before the rollout's end "
                         f"({num_frames} frames)")
    ref = context[0] if per_chunk else context
    batch, (c, h, w) = ref.shape[0], latent_shape
    param = next(net.parameters())
    cache = net.new_cache(batch=batch, height=h, width=w, sink_frames=sink_frames, window_frames=window)
    grad = torch.is_grad_enabled()

    def noise() -> torch.Tensor:
        return torch.randn((batch, c, n, h, w), generator=generator, device=param.device, dtype=param.dtype)

    def run(x, t, start, ctx, ctrl, write):
        tt = torch.full((batch, n), t, device=param.device, dtype=torch.float32)
        return model(x, tt, ctx, cache=cache, start_frame=start, controls=ctrl, write=write)

    chunks, references = [], []
    for i, start in enumerate(range(0, num_frames, n)):
        ctx = context[i] if per_chunk else context
        ctrl = None if controls is None else controls.slice_frames(start, start + n)
        if net.cfg.frame_reference:  # the last clean frame before the chunk, as the session keeps it
            ctrl = with_reference(ctrl, chunks[-1][:, :, -1:].detach() if chunks else None, (batch, c, n, h, w),
                                  device=param.device, dtype=param.dtype, move=move_reference)
            references.append(ctrl.reference)
        if per_chunk:
            cache.invalidate_text()
        scored = start + n > num_frames - window
        x0 = denoise_chunk(lambda x, t, exit_now: run(x, t, start, ctx, ctrl, write=not exit_now), noise, schedule,
                           timesteps, exit_step=exit_step, grad=grad and scored)
        chunks.append(x0)
        if start + n < num_frames:  # write the clean chunk into the cache for the chunks that follow
            with torch.no_grad():
                run(context_input(x0, noise, schedule, sampler.context_noise), sampler.context_noise, start, ctx,
                    ctrl, write=True)
    return Rollout(torch.cat(chunks, dim=2), exit_step, torch.cat(references, dim=2) if references else None)
