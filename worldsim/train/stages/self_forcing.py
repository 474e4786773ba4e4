"""``worldsim train self-forcing``: Self Forcing's DMD training (paper Algorithm 1, reference §5).

Every step the student rolls out a clip exactly as it streams at inference (KV cache, few-step sampler, context
noise), driven by the batch's per-chunk prompts and per-frame controls, with one random exit step shared by all
chunks and processes. The critic (fake score, initialised from the teacher) takes a flow-matching step on the
detached samples every step; every ``update_ratio`` steps the same rollout, with gradient through the exit steps,
also drives a DMD step of the student against the guided teacher (real score). AdamW betas (0, 0.999) and the EMA
of the student come from the recipe.

Long rollouts (``window_frames``, Self Forcing++'s remedy for drift past the training horizon): the clip, longer
than the window, is rolled out from nothing through a rolling KV window of ``window_frames``, exactly as a session
streams it, and only its last window carries gradient and is scored (teacher, critic) as a clip of its own, its
first frame without a reference as a training clip's is: the teacher judges the window by what a clip of that
prompt and those controls looks like, not as a continuation of wherever the rollout had drifted before it (scored
as a continuation, a student that had turned a desert into trees was only taught to continue the trees). The
student so learns from the frames it makes after its own earlier frames have left the window, which a rollout as
short as the window never shows it. With ``sink_frames`` the rollout's first frames stay in the cache beside the
window (a frame sink, as a session with that sink keeps them): the student learns to use where the stream began
once the window has moved on, as it will when served with that sink; the scores still see the window alone. With
``window_end="uniform"`` the rollout stops at a chunk boundary drawn each step, so the scored window is one drawn
uniformly from the long rollout (Self Forcing++'s sampling) rather than always its last: every horizon up to the
clip's is taught, at about half the rollout cost.

Two terms tie the student to the data beside DMD, which only sees the teacher. ``data_weight`` (the data anchor):
the student's teacher-forced flow loss on a window of the real clip, as served (clean history, a chunk at one of
the sampler's timesteps, or of those ``data_steps`` names). It lifts fidelity to the data but, a regression,
blurs. ``moment_weight`` (colour moments): the scored window's per-channel latent mean and standard deviation (over
its frames and pixels) against the same window of the real clip, driven by the same prompts and controls: a term on
the window's palette only, with no say on its layout, against the streams' slow slide off their theme's colours.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ...checkpoints import load_model
from ..data import LatentBatch
from ..dmd import critic_loss, dmd_loss
from ..flow_matching import flow_matching_loss
from ..guidance import clip_flow_loss
from ..rollout import shared_randint
from .distill import DistillOptions, DistillStage


WINDOW_STARTS = ("clip", "continuation")  # stage.window_start
WINDOW_ENDS = ("last", "uniform")  # stage.window_end


@dataclass
class SelfForcingOptions(DistillOptions):
    critic: str = ""  # critic initialisation (default: the teacher)
    critic_lr: float | None = None  # default: optim.lr (Self Forcing: 4e-7 critic vs 2e-6 generator)
    update_ratio: int = 5  # one generator update every this many steps; the critic updates every step
    timestep_min: float = 0.02  # DMD and critic timesteps, as fractions of num_train_timesteps
    timestep_max: float = 0.98
    window_frames: int = 0  # > 0: roll the clip out through a KV window of this many latent frames, as served, and
    #                         score only its last window (Self Forcing++'s long rollouts); 0: the whole clip, no rolling
    sink_frames: int = 0  # with window_frames: keep the rollout's first frames in the cache beside the window, as a
    #                       session with that sink does (the package serves with it)
    window_start: str = "clip"  # with window_frames, how the scores see the window's first frame: "clip" without a
    #                            reference (a clip of its own), "continuation" with the one the rollout fed it
    window_end: str = "last"  # with window_frames, where the scored window ends: "last" the clip's end; "uniform" a
    #                           chunk boundary drawn uniformly each step (the rollout stops there: Self Forcing++)
    data_weight: float = 0.0  # > 0: each generator update adds this x the student's teacher-forced flow loss on the
    #                           data at the sampler's timesteps (module docstring: data anchor)
    data_steps: list[int] | None = None  # with data_weight: the sampler's steps (indices into its denoising steps, 0
    #                                      the noisiest) whose levels the anchor draws from; default all
    moment_weight: float = 0.0  # > 0: each generator update adds this x the squared error of the scored window's
    #                             per-channel latent mean and std against the real clip's (module docstring)


def moment_loss(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Squared error of the per-sample, per-channel mean and std over frames and pixels of x [B, C, F, H, W] against
    those of real (the same shape): the windows' palettes, not their layouts."""
    dims = (2, 3, 4)
    return (torch.nn.functional.mse_loss(x.mean(dims), real.mean(dims))
            + torch.nn.functional.mse_loss(x.std(dims), real.std(dims)))


class SelfForcingStage(DistillStage):
    name = "self-forcing"
    Options = SelfForcingOptions

    def build(self) -> None:
        if self.opts.update_ratio < 1:
            raise ValueError(f"stage.update_ratio must be >= 1, got {self.opts.update_ratio}")
        clip = self.ctx.cfg.data.clip_chunks * self.ctx.model_cfg.chunk_frames
        window = self.opts.window_frames
        if window and (window % self.ctx.model_cfg.chunk_frames or not 0 < window <= clip):
            raise ValueError(f"stage.window_frames ({window}) must be whole chunks of "
                             f"{self.ctx.model_cfg.chunk_frames} frames within the clip ({clip} frames)")
        if self.opts.window_end not in WINDOW_ENDS:
            raise ValueError(f"stage.window_end must be one of {WINDOW_ENDS}, got {self.opts.window_end!r}")
        if self.opts.window_end != "last" and not window:
            raise ValueError(f"stage.window_end={self.opts.window_end!r} needs stage.window_frames")
        if self.opts.window_start not in WINDOW_STARTS:
            raise ValueError(f"stage.window_start must be one of {WINDOW_STARTS}, got {self.opts.window_start!r}")
        sink = self.opts.sink_frames
        if sink and (not window or sink % self.ctx.model_cfg.chunk_frames or not 0 < sink <= clip - window):
            raise ValueError(f"stage.sink_frames ({sink}) needs stage.window_frames and must be whole chunks of "
                             f"{self.ctx.model_cfg.chunk_frames} frames that leave the window room in the clip "
                             f"({clip} frames, window {window})")
        two_chunks = 2 * self.ctx.model_cfg.chunk_frames
        if self.opts.data_weight < 0 or (self.opts.data_weight and (window or clip) < two_chunks):
            raise ValueError(f"stage.data_weight ({self.opts.data_weight}) must be >= 0, and > 0 needs windows of at "
                             f"least two chunks (a chunk to predict after one of history); window {window or clip}")
        steps = self.opts.data_steps
        if steps is not None and (not steps or len(set(steps)) != len(steps)
                                  or not all(0 <= i < len(self.opts.denoising_steps) for i in steps)):
            raise ValueError(f"stage.data_steps ({steps}) must be distinct indices of the sampler's "
                             f"{len(self.opts.denoising_steps)} denoising steps (0 the noisiest)")
        if self.opts.moment_weight < 0:
            raise ValueError(f"stage.moment_weight ({self.opts.moment_weight}) must be >= 0")
        student = self.build_teacher_and_student()
        critic = load_model(self.opts.critic or self.opts.teacher)
        self.models.update(generator=student, critic=critic)
        self.optimizers.update(generator=self.adamw(student), critic=self.adamw(critic, lr=self.opts.critic_lr))
        self.t_range = (self.opts.timestep_min, self.opts.timestep_max)
        steps = range(len(self.timesteps)) if self.opts.data_steps is None else self.opts.data_steps
        self.anchor_levels = torch.tensor([self.timesteps[i] for i in steps], dtype=torch.float32)  # data_loss draws

    def serving_cache(self) -> dict[str, int]:
        """The rolling window and sink the student was rolled out through (the clip when it was not rolled)."""
        clip = super().serving_cache()["window_frames"]
        return {"sink_frames": self.opts.sink_frames, "window_frames": self.opts.window_frames or clip}

    def step(self, batch: LatentBatch, step: int) -> dict[str, float]:
        train_generator = step % self.opts.update_ratio == 0
        exit_step = shared_randint(len(self.timesteps))
        data = batch
        if self.opts.window_end == "uniform":
            batch = self.cut_at_window_end(batch)
        metrics = {"exit_step": float(exit_step), "rollout_frames": float(batch.latents.shape[2])}
        x, batch = self.scored_rollout(batch, exit_step, grad=train_generator)
        if train_generator:
            critic = self.denoiser("critic")
            fake = lambda xt, t: critic(xt, t, batch.text, controls=batch.controls)  # noqa: E731
            loss, extra = dmd_loss(x, self.teacher_flow(batch), fake, self.schedule, timestep_range=self.t_range)
            metrics.update(dmd_loss=loss.item(), **extra)
            if self.opts.data_weight > 0:
                anchor = self.data_loss(data)
                loss = loss + self.opts.data_weight * anchor
                metrics["data_loss"] = anchor.item()
            if self.opts.moment_weight > 0:
                moments = moment_loss(x, batch.latents)
                loss = loss + self.opts.moment_weight * moments
                metrics["moment_loss"] = moments.item()
            self.update(loss, "generator")
        loss = critic_loss(self.denoiser("critic"), x, batch.text, batch.controls, self.schedule,
                           timestep_range=self.t_range)
        self.update(loss, "critic")
        metrics["critic_loss"] = loss.item()
        return metrics

    def cut_at_window_end(self, batch: LatentBatch) -> LatentBatch:
        """The batch's first L frames, L a chunk boundary drawn uniformly among those that leave room for the sink
        and the window. A rollout is causal, so one stopped at L is a whole clip's rollout up to L: its last window
        is a window drawn uniformly from the long rollout, at L / clip of the cost."""
        n, clip = self.ctx.model_cfg.chunk_frames, batch.latents.shape[2]
        first = (self.opts.sink_frames + self.opts.window_frames) // n  # the shortest rollout, in chunks
        return batch.frames(0, (first + shared_randint(clip // n - first + 1)) * n, n)

    def data_loss(self, batch: LatentBatch, generator: torch.Generator | None = None) -> torch.Tensor:
        """The student's flow-matching loss on a window of the real clips as served (module docstring: data anchor):
        per sample, a random chunk after the window's first, noised to one of the sampler's timesteps (those of
        ``data_steps``), the data's clean frames before it as history and references."""
        n, clip = self.ctx.model_cfg.chunk_frames, batch.latents.shape[2]
        window = self.opts.window_frames or clip
        start = int(torch.randint(clip // n - window // n + 1, (1,), generator=generator)) * n
        part = batch.frames(start, start + window, n)
        part = self.referenced(part, part.latents)
        x0 = part.latents  # [B, C, F, H, W]
        b, f, device = x0.shape[0], x0.shape[2], x0.device
        target = torch.randint(1, f // n, (b, 1), generator=generator).to(device) * n  # [B, 1]: its first frame
        levels = self.anchor_levels
        t_target = levels[torch.randint(len(levels), (b, 1), generator=generator)].to(device)  # [B, 1]
        frame = torch.arange(f, device=device)[None]  # [1, F]
        history = frame < target  # [B, F]: at the sampler's context noise, as the cache holds it
        t = torch.where(history, torch.full_like(t_target, self.sampler.context_noise), t_target.expand(b, f))
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(device)
        clean = history if self.sampler.context_noise == 0 else torch.zeros_like(history)  # else noised like t says
        scored = ((frame >= target) & (frame < target + n)).float()  # frames after it do not change it (causal)
        return clip_flow_loss(self.models["generator"], self.schedule, x0, x0, t, clean, noise, part.text,
                              part.controls, scored)

    def scored_rollout(self, batch: LatentBatch, exit_step: int, grad: bool) -> tuple[torch.Tensor, LatentBatch]:
        """The student's rollout [B, C, F, H, W] and the batch, each frame referencing the rollout's own previous
        frame (as it did); with ``window_frames``, both cut to the last window first, a clip of its own (or, with
        ``window_start="continuation"``, its first frame still referencing the frame before the window)."""
        window = self.opts.window_frames or None
        with torch.set_grad_enabled(grad):
            out = self.rollout_with_references(batch, exit_step, window, self.opts.sink_frames)
        x, ref = out.latents, out.references  # the references as the rollout fed them: moved once, not again here
        if window is not None:
            n = self.ctx.model_cfg.chunk_frames
            x, batch = x[:, :, -window:], batch.frames(x.shape[2] - window, x.shape[2], n)
            if ref is not None:
                ref = ref[:, :, -window:].clone()
                if self.opts.window_start == "clip":  # a clip of its own: its first chunk has no reference
                    ref[:, :, :n] = 0
        if ref is None:  # the model takes no reference
            return x, batch
        return x, dataclasses.replace(batch, controls=batch.controls.with_reference(ref))

    def validate(self, batch: LatentBatch) -> dict[str, float]:
        """How well the teacher and the critic denoise the student's samples (lower: more teacher-like samples); with
        ``data_weight``, the student's data loss on these clips (seeded, so comparable across steps); with
        ``moment_weight``, its last-step rollout's moment loss against them."""
        metrics = {}
        if self.opts.data_weight > 0:
            g = torch.Generator().manual_seed(self.ctx.cfg.seed)
            metrics["data_loss"] = self.data_loss(batch, generator=g).item()
        x, batch = self.scored_rollout(batch, len(self.timesteps) - 1, grad=False)
        if self.opts.moment_weight > 0:
            metrics["moment_loss"] = moment_loss(x, batch.latents).item()
        for name in ("teacher", "critic"):
            metrics[f"{name}_fm"] = flow_matching_loss(self.denoiser(name), x, batch.text, batch.controls,
                                                       self.schedule, per_frame=False,
                                                       timestep_range=self.t_range).item()
        return metrics
