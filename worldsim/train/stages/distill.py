"""What the two distillation stages (ode-init, self-forcing) share: a frozen teacher with classifier-free guidance,
the causal few-step student ("generator") and its sampler, and rollouts driven by a batch's prompts and controls."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ...checkpoints import load_model
from ...model.dit import CausalWanDiT
from ...sampling.schedule import FlowMatchSchedule, SamplerConfig
from ..data import LatentBatch
from ..guidance import clip_flow, guided_flow
from ..rollout import Rollout, self_forcing_rollout
from .base import Stage


@dataclass
class DistillOptions:
    teacher: str = ""  # teacher checkpoint (`worldsim train teacher` output); required
    student: str = ""  # student initialisation (default: the teacher's weights); ``--init`` overrides it
    guidance_scale: float = 4.0  # teacher CFG on text and controls: uncond + w (cond - uncond); 1 = none
    control_guidance_scale: float | None = None  # the controls' own scale in the composed form (train/guidance.py);
    #                                              None: guidance_scale (one joint scale, no extra teacher call)
    shift: float = 5.0  # the student's sampler (SamplerConfig): timestep shift, steps, warping, context noise
    denoising_steps: tuple[int, ...] = (1000, 750, 500, 250)
    warp: bool = True
    context_noise: float = 0.0
    reference_flow: str | None = None  # a `worldsim train flow` file: the teacher's, critic's and student's references
    #                                    moved by it, in the student's rollouts too, as the package it makes serves


class DistillStage(Stage):
    Options = DistillOptions
    ema_model = "generator"
    package_model = "generator"  # the few-step student: OUT/final is a model package (worldsim serve --model)
    package_by_default = True

    def build_teacher_and_student(self) -> CausalWanDiT:
        """Load the frozen teacher; return the student, from ``--init``, ``student`` (e.g. ode-init's output) or the
        teacher's weights, with the recipe's architecture (chunk size, the data's controls)."""
        if not self.opts.teacher:
            raise ValueError(f"stage {self.name!r} needs stage.teacher: the teacher checkpoint to distil")
        self.sampler = SamplerConfig(self.opts.shift, tuple(self.opts.denoising_steps), self.opts.warp,
                                     self.opts.context_noise)
        self.schedule = FlowMatchSchedule.from_config(self.sampler)
        self.timesteps = self.schedule.sampling_timesteps(self.sampler)
        self.frozen["teacher"] = load_model(self.opts.teacher)
        self.uncond_text = self.ctx.data.text_encoder("")  # [1, L, D]: the dropped prompt of CFG
        if self.opts.reference_flow:
            self.use_reference_flow(self.opts.reference_flow)
        return self.build_dit(self.ctx.init or Path(self.opts.student or self.opts.teacher))

    def teacher_flow(self, batch: LatentBatch):
        """The guided real score on this batch's prompts and controls: (x_t, t) -> flow."""
        uncond = self.uncond_text.to(batch.text.device).expand(batch.text.shape[0], -1, -1)
        return partial(self._guided, self.frozen["teacher"], batch, uncond)

    def _guided(self, model, batch: LatentBatch, uncond: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        return guided_flow(model, xt, t, batch.text, batch.controls, uncond, self.opts.guidance_scale,
                           self.opts.control_guidance_scale)

    def denoiser(self, name: str):
        """A model (trained or frozen) as a denoiser over whole clips with per-chunk prompts (see
        :mod:`..flow_matching`): (x_t, t, text, controls=...) -> flow."""
        return partial(clip_flow, self.models[name] if name in self.models else self.frozen[name])

    def rollout(self, batch: LatentBatch, exit_step: int, window_frames: int | None = None,
                sink_frames: int = 0) -> torch.Tensor:
        """The student's clip for this batch's prompts (one per chunk) and controls: [B, C, F, H, W]; through a
        rolling KV window of ``window_frames`` (default: the whole clip) beside a sink of ``sink_frames``."""
        return self.rollout_with_references(batch, exit_step, window_frames, sink_frames).latents

    def rollout_with_references(self, batch: LatentBatch, exit_step: int, window_frames: int | None = None,
                                sink_frames: int = 0) -> Rollout:
        """:meth:`rollout` with the reference each frame was made from (moved by the flow, when there is one)."""
        lat = batch.latents
        return self_forcing_rollout(self.models["generator"], list(batch.text.unbind(1)), num_frames=lat.shape[2],
                                    latent_shape=(lat.shape[1], *lat.shape[3:]), sampler=self.sampler,
                                    exit_step=exit_step, controls=batch.controls, window_frames=window_frames,
                                    sink_frames=sink_frames,
                                    move_reference=self.reference_mover())

    def sample(self, batch: LatentBatch) -> torch.Tensor:
        return self.decode(self.rollout(batch, exit_step=len(self.timesteps) - 1))
