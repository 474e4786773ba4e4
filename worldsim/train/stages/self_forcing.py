"""``worldsim train self-forcing``: Self Forcing's DMD training (paper Algorithm 1, reference §5).

Every step the student rolls out a clip exactly as it streams at inference (KV cache, few-step sampler, context
noise), driven by the batch's per-chunk prompts and per-frame controls, with one random exit step shared by all
chunks and processes. The critic (fake score, initialised from the teacher) takes a flow-matching step on the
detached samples every step; every ``update_ratio`` steps the same rollout, with gradient through the exit steps,
also drives a DMD step of the student against the guided teacher (real score). AdamW betas (0, 0.999) and the EMA
of the student come from the recipe.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...checkpoints import load_model
from ..data import LatentBatch
from ..dmd import critic_loss, dmd_loss
from ..flow_matching import flow_matching_loss
from ..rollout import sample_exit_step
from .distill import DistillOptions, DistillStage


@dataclass
class SelfForcingOptions(DistillOptions):
    critic: str = ""  # critic initialisation (default: the teacher)
    critic_lr: float | None = None  # default: optim.lr (Self Forcing: 4e-7 critic vs 2e-6 generator)
    update_ratio: int = 5  # one generator update every this many steps; the critic updates every step
    timestep_min: float = 0.02  # DMD and critic timesteps, as fractions of num_train_timesteps
    timestep_max: float = 0.98


class SelfForcingStage(DistillStage):
    name = "self-forcing"
    Options = SelfForcingOptions

    def build(self) -> None:
        if self.opts.update_ratio < 1:
            raise ValueError(f"stage.update_ratio must be >= 1, got {self.opts.update_ratio}")
        student = self.build_teacher_and_student()
        critic = load_model(self.opts.critic or self.opts.teacher)
        self.models.update(generator=student, critic=critic)
        self.optimizers.update(generator=self.adamw(student), critic=self.adamw(critic, lr=self.opts.critic_lr))
        self.t_range = (self.opts.timestep_min, self.opts.timestep_max)

    def step(self, batch: LatentBatch, step: int) -> dict[str, float]:
        train_generator = step % self.opts.update_ratio == 0
        exit_step = sample_exit_step(len(self.timesteps))
        with torch.set_grad_enabled(train_generator):
            x = self.rollout(batch, exit_step)  # [B, C, F, H, W]
        batch = self.referenced(batch, x)  # the scores see the rollout's own previous frames, as it did
        metrics = {"exit_step": float(exit_step)}
        if train_generator:
            critic = self.denoiser("critic")
            fake = lambda xt, t: critic(xt, t, batch.text, controls=batch.controls)  # noqa: E731
            loss, extra = dmd_loss(x, self.teacher_flow(batch), fake, self.schedule, timestep_range=self.t_range)
            self.update(loss, "generator")
            metrics.update(dmd_loss=loss.item(), **extra)
        loss = critic_loss(self.denoiser("critic"), x, batch.text, batch.controls, self.schedule,
                           timestep_range=self.t_range)
        self.update(loss, "critic")
        metrics["critic_loss"] = loss.item()
        return metrics

    def validate(self, batch: LatentBatch) -> dict[str, float]:
        """How well the teacher and the critic denoise the student's samples (lower: more teacher-like samples)."""
        x = self.rollout(batch, exit_step=len(self.timesteps) - 1)
        batch = self.referenced(batch, x)
        return {name: flow_matching_loss(model, x, batch.text, batch.controls, self.schedule, per_frame=False,
                                         timestep_range=self.t_range).item()
                for name, model in (("teacher_fm", self.denoiser("teacher")), ("critic_fm", self.denoiser("critic")))}
