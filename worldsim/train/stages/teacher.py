"""Stage ``teacher``: flow-matching training of the causal DiT on data, conditioned on text and controls.

The teacher is **causal and teacher-forced**: one block-causal forward over the whole clip (the DiT's training
path), every chunk at its own noise level (diffusion forcing), and with probability ``clean_context_prob`` a
sample's chunks before a random chunk j are clean (t = 0) and excluded from the loss — so the model learns both to
denoise from noisy history and from the clean history a KV cache holds at inference. A causal teacher is what
Self Forcing's DMD needs here (the same network family as the student, per-chunk prompts, controls per frame), and
sampled chunk by chunk it is the "teacher forcing" baseline the report compares Self Forcing against.

Context noise augmentation (``context_noise_max`` > 0, a timestep): each sample's clean context chunks and the
reference frames a ``frame_reference`` DiT sees are re-noised to a timestep drawn uniformly from
[0, context_noise_max] (labelled with it), so the model learns to continue from an imperfect history — at inference
the history is its own output, not the data, and an exactly-clean-history teacher lets small errors compound into
blur over a long rollout (GameNGen's noise augmentation). 0 (the default) keeps the history exactly clean.

Motion weighting (``motion_weight`` > 0, for ``frame_reference`` models): within each frame, the training loss is
moved towards the latents that change from the frame's reference (weight proportional to 1 + motion_weight x the
latent's change over the frame's mean change); every frame keeps its total weight, so idle frames, moving ones and
frames without a reference yet (the first, made from the prompt alone) count as much as without it. What the
controls decide is how the next frame differs from the last, a small part of the flow loss (walking moves the near
ground by a fifth of a latent pixel per frame, turning the whole view by most of one). Weighing changing latents
across the batch instead (a fixed 1 + 4 x change over the batch's mean) sped the turns up but broke streams started
from a prompt alone into token-size checkerboards: idle and prompt-only frames had lost most of their weight.
Validation stays unweighted, so its loss and control gap compare across recipes.

Reference warp (a DiT with ``reference_warp``, model/reference_warp.py): ``warp_weight`` > 0 adds the warp's own
loss, the mean squared error of the warped reference against the frame itself over the frames it acts on (with
controls and a reference), so it learns to predict the next frame rather than only what helps the flow loss;
``warp_only`` trains the warp alone by that loss, every DiT weight frozen and no DiT forward (a fast first stage
before training both). Validation logs ``warp_loss`` and ``copy_loss``, the same error of the plain reference.

Reference flow (``reference_flow: FILE``, from ``worldsim train flow``; model/reference_flow.py): every reference
frame is moved by its chunk's controls (decoded, resampled along the controls' flow, encoded again), as a package
that names the flow serves it; the DiT learns to turn a moved reference into the frame. ``package: true`` puts the
flow into the package.

Condition dropout for classifier-free guidance: per sample, the text becomes the empty prompt's embedding with
probability ``text_dropout`` and the controls are marked absent (presence gate 0, exactly the no-control model)
with probability ``control_dropout``, independently.

Control fine-tune: ``--init CHECKPOINT`` starts from any text-to-video checkpoint; the control module it lacks
starts at zero, so training begins from the pretrained model's exact behaviour.

Validation also scores the same clips, noise and timesteps (drawn from a generator seeded with the recipe's seed)
under mirrored controls (``worldsim.world.metrics.mirror_plan``: W<->S, A<->D, mouse deltas negated, by the schema's
key and axis names) and logs ``loss_mirrored`` and ``control_gap`` = loss_mirrored / loss - 1, the relative rise of
the loss when the controls lie. It is exactly 0 for a model whose controls make no difference (the zero-initialised
control module) and grows as the model uses them, so a recipe that ignores the controls shows it within minutes.
Absent when the data has no controls, or none that mirroring changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ...model.control import Controls, has_reference
from ...sampling.schedule import FlowMatchSchedule, SamplerConfig, evenly_spaced_steps
from ...world.metrics import mirror_plan
from ..data import LatentBatch
from ..flow_matching import add_noise, sample_timesteps
from ..guidance import clip_flow
from .base import Stage


@dataclass
class TeacherOptions:
    shift: float = 5.0
    timestep_sampling: str = "uniform"  # or "logit_normal"
    clean_context_prob: float = 0.5
    context_noise_max: float = 0.0  # timestep; > 0: clean history and reference frames re-noised up to it
    motion_weight: float = 0.0  # > 0: within each frame, the loss moves towards latents that change from the reference
    warp_weight: float = 0.0  # > 0: the reference warp also learns to predict each frame (latent MSE), so weighted
    warp_only: bool = False  # train the reference warp alone by that loss, the DiT frozen (no DiT forward: fast)
    reference_flow: str | None = None  # a `worldsim train flow` file: each reference moved by it, as served
    text_dropout: float = 0.1
    control_dropout: float = 0.1
    sample_steps: int = 16  # denoising steps per chunk of the sample strips (autoregressive, KV cache)
    sample_count: int = 2  # clips in a sample strip


class TeacherStage(Stage):
    name = "teacher"
    Options = TeacherOptions
    ema_model = "teacher"
    package_model = "teacher"  # with ``package: true``: served with its sample strips' many-step sampler

    def build(self) -> None:
        self.schedule = FlowMatchSchedule(self.opts.shift)
        self.models["teacher"] = self.build_dit(self.ctx.init)
        if self.opts.motion_weight < 0:
            raise ValueError(f"stage.motion_weight must be >= 0, got {self.opts.motion_weight}")
        model = self.unwrap("teacher")
        if self.opts.motion_weight > 0 and not model.cfg.frame_reference:
            raise ValueError("stage.motion_weight weighs latents by their change from the frame's reference: it needs "
                             "a model with frame_reference (the toy preset has it)")
        if self.opts.warp_weight < 0 or (self.opts.warp_weight and not model.cfg.reference_warp):
            raise ValueError(f"stage.warp_weight must be 0, or > 0 for a model with reference_warp; got "
                             f"{self.opts.warp_weight}")
        if self.opts.warp_only:
            if not model.cfg.reference_warp:
                raise ValueError("stage.warp_only trains the reference warp: the model has none (reference_warp: 0)")
            if self.accelerator.num_processes > 1:  # the warp runs outside the wrapped forward: DDP would not sync it
                raise ValueError("stage.warp_only runs in one process (the warp is small: about 11 steps/s of 32 "
                                 "clips on one CPU thread): launch it as one process")
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith("reference_warp."))
        if self.opts.reference_flow:
            self.use_reference_flow(self.opts.reference_flow)
        self.optimizers["teacher"] = self.adamw(self.models["teacher"])
        self.empty_text = self.ctx.data.text_encoder("")[0]  # [L, D]: the unconditional prompt
        self.sampler = SamplerConfig(shift=self.opts.shift, denoising_steps=evenly_spaced_steps(self.opts.sample_steps))

    def _timesteps(self, b: int, frames: int, device, generator: torch.Generator | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-frame timesteps [B, F] (one per chunk), the clean-context mask [B, F] (the chunks before a random
        chunk, with probability ``clean_context_prob``) and each sample's context level [B] (0 unless
        ``context_noise_max`` > 0), the timestep its context frames are labelled with."""
        n = self.unwrap("teacher").cfg.chunk_frames
        chunks = frames // n
        t = sample_timesteps(self.schedule, (b, chunks), generator=generator, sampling=self.opts.timestep_sampling,
                             device=device)
        first_noisy = torch.randint(chunks, (b, 1), generator=generator, device=device)
        clean = (torch.arange(chunks, device=device) < first_noisy) & \
            (torch.rand(b, 1, generator=generator, device=device) < self.opts.clean_context_prob)
        if self.opts.context_noise_max > 0:
            level = torch.rand(b, 1, generator=generator, device=device) * self.opts.context_noise_max  # [B, 1]
        else:
            level = torch.zeros(b, 1, device=device)
        t = torch.where(clean, level.expand_as(t), t)
        return t.repeat_interleave(n, dim=1), clean.repeat_interleave(n, dim=1), level[:, 0]

    def _history(self, x0: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        """The latents as history [B, C, F, H, W], what context frames and references are made of: x0 itself without
        context noise, else re-noised to each sample's context level [B]."""
        if self.opts.context_noise_max <= 0:
            return x0
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return add_noise(self.schedule, x0, noise, level)

    def _conditions(self, batch: LatentBatch, history: torch.Tensor, dropout: bool
                    ) -> tuple[torch.Tensor, Controls | None]:
        text, c = batch.text, self.referenced(batch, history).controls  # text [B, n_chunks, L, D]
        if not c.sources() and c.reference is None:
            c = None
        if not dropout:
            return text, c
        b, device = text.shape[0], text.device
        drop_text = torch.rand(b, device=device) < self.opts.text_dropout
        text = torch.where(drop_text[:, None, None, None], self.empty_text.to(device), text)
        if c is not None and c.sources():
            keep = torch.rand(b, device=device) >= self.opts.control_dropout
            present = c.present if c.present is not None else torch.ones(c.sources()[0].shape[:2], dtype=torch.bool,
                                                                           device=device)
            c = dataclasses.replace(c, present=present & keep[:, None])  # the reference frame is not dropped
        return text, c

    def _mirrored(self, c: Controls | None) -> Controls | None:
        """The controls with every commanded motion reversed, or None if mirroring changes nothing in this schema."""
        schema = self.unwrap("teacher").cfg.control
        if c is None or schema is None or (c.keys is None and c.axes is None):
            return None
        perm, signs = mirror_plan(tuple(schema.keys), tuple(schema.axes))
        if perm == list(range(len(perm))) and all(s > 0 for s in signs):
            return None
        keys = None if c.keys is None else c.keys[..., perm]  # [B, F, k, K]
        axes = None if c.axes is None else c.axes * c.axes.new_tensor(signs)  # [B, F, k, A]
        return dataclasses.replace(c, keys=keys, axes=axes)

    def _flow_loss(self, x0: torch.Tensor, history: torch.Tensor, t: torch.Tensor, clean: torch.Tensor,
                   noise: torch.Tensor, text: torch.Tensor, controls: Controls | None, weighted: bool = False
                   ) -> torch.Tensor:
        """Flow-matching loss of latents x0 [B, C, F, H, W] noised with noise at per-frame timesteps t [B, F]; the
        clean-context frames (mask [B, F]) come from ``history`` and carry no loss. ``weighted``: with the motion
        weights (training; validation stays unweighted, comparable across recipes)."""
        xt = torch.where(clean[:, None, :, None, None], history, add_noise(self.schedule, x0, noise, t))
        flow = clip_flow(self.models["teacher"], xt, t, text, controls)
        err = (flow.float() - (noise - x0).float()).pow(2)  # [B, C, F, H, W]
        if weighted and self.opts.motion_weight > 0 and controls is not None and controls.reference is not None:
            err = err * self._motion_weights(x0, controls.reference)
        weight = (~clean).float()
        return (err.mean(dim=(1, 3, 4)) * weight).sum() / weight.sum()

    def _motion_weights(self, x0: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Per-latent loss weights [B, 1, F, H, W]: within each frame that has a reference, 1 + motion_weight x the
        latent's change from it (the channel-mean absolute difference over the frame's mean change), divided by
        1 + motion_weight, so every frame keeps a total weight of one latent each and only its distribution moves
        to what changes; 1 where a frame has no reference yet (the module docstring says why)."""
        change = (x0 - reference).abs().float().mean(dim=1, keepdim=True)  # [B, 1, F, H, W]
        scale = change.mean(dim=(3, 4), keepdim=True).clamp_min(1e-6)  # [B, 1, F, 1, 1]
        w = (1 + self.opts.motion_weight * change / scale) / (1 + self.opts.motion_weight)
        has_ref = has_reference(reference)[:, None, :, None, None]  # [B, 1, F, 1, 1]
        return torch.where(has_ref, w, torch.ones_like(w))

    def _inputs(self, batch: LatentBatch, dropout: bool, generator: torch.Generator | None = None):
        """(x0, history, t, clean, noise, text, controls) of one loss evaluation."""
        x0 = batch.latents  # [B, C, F, H, W]
        t, clean, level = self._timesteps(x0.shape[0], x0.shape[2], x0.device, generator=generator)
        history = self._history(x0, level, generator)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        text, controls = self._conditions(batch, history, dropout)
        return x0, history, t, clean, noise, text, controls

    def _warp_losses(self, x0: torch.Tensor, controls: Controls | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Mean squared error of the warped reference, and of the reference itself, against each frame x0
        [B, C, F, H, W], over the frames the warp acts on (controls present, a reference); None without any."""
        model = self.unwrap("teacher")
        if not model.cfg.reference_warp or controls is None or controls.is_empty() or controls.reference is None:
            return None
        b, _, f = x0.shape[:3]
        u, gate = model.control_embedding.features(controls, b, f)  # gate [B, F, 1]
        reference = controls.reference
        warped = model.reference_warp(reference, u, gate)
        acts = gate[..., 0] * has_reference(reference)  # [B, F]
        if not bool(acts.any()):
            return None

        def mse(pred: torch.Tensor) -> torch.Tensor:
            return ((pred.float() - x0.float()).pow(2).mean(dim=(1, 3, 4)) * acts).sum() / acts.sum()

        return mse(warped), mse(reference)

    def loss(self, batch: LatentBatch, dropout: bool) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss (motion-weighted when ``motion_weight`` > 0, plus ``warp_weight`` x the warp's own
        loss; with ``warp_only`` the warp's loss alone) and its parts."""
        inputs = self._inputs(batch, dropout and not self.opts.warp_only)  # dropped controls would gate the warp off
        if self.opts.warp_only:
            warp = self._warp_losses(inputs[0], inputs[-1])
            if warp is None:
                raise ValueError("stage.warp_only: the clips have no frame with controls and a reference (the data "
                                 "needs controls, and data.clip_chunks >= 2)")
            return warp[0], {"loss": warp[0].item()}
        flow = self._flow_loss(*inputs, weighted=True)
        warp = self._warp_losses(inputs[0], inputs[-1]) if self.opts.warp_weight > 0 else None
        if warp is None:
            return flow, {"loss": flow.item()}
        loss = flow + self.opts.warp_weight * warp[0]
        return loss, {"loss": loss.item(), "flow_loss": flow.item(), "warp_loss": warp[0].item()}

    def step(self, batch: LatentBatch, step: int) -> dict[str, float]:
        loss, parts = self.loss(batch, dropout=True)
        self.update(loss, "teacher")
        return parts

    def validate(self, batch: LatentBatch) -> dict[str, float]:
        """Held-out loss, and the same with mirrored controls on the same noise and timesteps (module docstring)."""
        g = torch.Generator(batch.latents.device).manual_seed(self.ctx.cfg.seed)
        *inputs, controls = self._inputs(batch, dropout=False, generator=g)
        loss = self._flow_loss(*inputs, controls).item()
        out = {"loss": loss}
        warp = self._warp_losses(inputs[0], controls)
        if warp is not None:  # the warped reference against the frame, and the plain reference (its floor to beat)
            out.update(warp_loss=warp[0].item(), copy_loss=warp[1].item())
        mirrored = self._mirrored(controls)
        if mirrored is not None:
            loss_mirrored = self._flow_loss(*inputs, mirrored).item()
            out.update(loss_mirrored=loss_mirrored, control_gap=loss_mirrored / loss - 1)
        return out

    def sample(self, batch: LatentBatch) -> torch.Tensor:
        """Autoregressive generation with the current weights (KV cache, ``sample_steps`` per chunk, the clip's
        prompts and controls) above the decoded ground truth: [2k, F, 3, H, W]."""
        from ..rollout import self_forcing_rollout

        k = min(self.opts.sample_count, batch.latents.shape[0])
        model = self.unwrap("teacher")
        sampler = self.sampler
        steps = sampler.denoising_steps
        c = batch.controls
        controls = Controls(*(None if v is None else v[:k] for v in (c.keys, c.axes, c.embedding, c.present)))
        text = batch.text[:k]
        _, c_lat, frames, h, w = batch.latents.shape
        out = self_forcing_rollout(model, [text[:, j] for j in range(text.shape[1])], num_frames=frames,
                                   latent_shape=(c_lat, h, w), sampler=sampler, exit_step=len(steps) - 1,
                                   controls=controls if controls.sources() else None)
        return torch.cat([self.decode(out.latents), self.decode(batch.latents[:k])])
