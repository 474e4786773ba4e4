"""``worldsim train ode-init``: regress the causal few-step student onto the teacher's ODE trajectories (reference
§5.7), the initialisation Self Forcing starts from. Trajectories are generated on the fly from each batch's prompts
and controls (no pair dataset to store), with fresh noise."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import LatentBatch
from ..ode import ode_regression_loss, ode_trajectory
from .distill import DistillOptions, DistillStage


@dataclass
class ODEInitOptions(DistillOptions):
    guidance_scale: float = 6.0  # Self Forcing's pair generation uses CFG 6
    ode_steps: int = 48  # teacher Euler steps per trajectory (the student's timesteps are always on the grid)


class ODEInitStage(DistillStage):
    name = "ode-init"
    Options = ODEInitOptions

    def build(self) -> None:
        student = self.build_teacher_and_student()
        self.models["generator"] = student
        self.optimizers["generator"] = self.adamw(student)

    def loss(self, batch: LatentBatch) -> torch.Tensor:
        batch = self.referenced(batch, batch.latents)  # teacher and student see the data's previous frames
        noise = torch.randn_like(batch.latents)
        states = ode_trajectory(self.teacher_flow(batch), noise, self.schedule, self.timesteps,
                                num_steps=self.opts.ode_steps, shift=self.opts.shift)
        return ode_regression_loss(self.denoiser("generator"), states, self.timesteps, batch.text, batch.controls,
                                   self.schedule, self.unwrap("generator").cfg.chunk_frames)

    def step(self, batch: LatentBatch, step: int) -> dict[str, float]:
        loss = self.loss(batch)
        self.update(loss, "generator")
        return {"loss": loss.item()}

    def validate(self, batch: LatentBatch) -> dict[str, float]:
        return {"loss": self.loss(batch).item()}
