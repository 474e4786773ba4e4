"""Flow-matching schedule and few-step sampler settings (Self Forcing's ``FlowMatchScheduler``, shift 5).

The training table has 1000 entries: s_i = 1 - i/1000, sigma_i = shift*s_i / (1 + (shift-1)*s_i), t_i = 1000*sigma_i.
Noising is x_t = (1 - sigma) x0 + sigma * noise; the DiT predicts the flow v = noise - x0, so x0 = x_t - sigma * v.
Sigma for any timestep is looked up as its nearest table entry (exactly t/1000 for table entries).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplerConfig:
    """Few-step sampler settings. ``denoising_steps`` are warped through the shifted table when ``warp`` is set:
    the default [1000, 750, 500, 250] with shift 5 runs at t = 1000, 937.5, 833.3, 625."""

    shift: float = 5.0
    denoising_steps: tuple[int, ...] = (1000, 750, 500, 250)
    warp: bool = True
    context_noise: float = 0.0  # timestep label of the clean re-run that writes a finished chunk into the cache
    num_train_timesteps: int = 1000
    control_guidance: float = 1.0  # classifier-free guidance on the controls alone; 1 = off (sampling/session.py)
    text_guidance: float = 1.0  # classifier-free guidance on the prompt alone; 1 = off (sampling/session.py)
    guided_steps: tuple[int, ...] | None = None  # denoising steps (0 = the first) guidance applies to; None: all
    hold_idle_reference: bool = False  # a frame_reference model's reference stays put while nothing is held
    reference_start: int = 0  # steps skipped: a frame_reference chunk starts from its reference noised to that step

    def __post_init__(self) -> None:
        object.__setattr__(self, "denoising_steps", tuple(int(s) for s in self.denoising_steps))
        if not self.denoising_steps:
            raise ValueError("denoising_steps must not be empty")
        if any(not 0 < s <= self.num_train_timesteps for s in self.denoising_steps):
            raise ValueError(f"denoising_steps must lie in (0, {self.num_train_timesteps}], got {self.denoising_steps}")
        if list(self.denoising_steps) != sorted(self.denoising_steps, reverse=True):
            raise ValueError(f"denoising_steps must decrease, got {self.denoising_steps}")
        if self.guided_steps is not None:
            object.__setattr__(self, "guided_steps", tuple(int(i) for i in self.guided_steps))
            if any(not 0 <= i < len(self.denoising_steps) for i in self.guided_steps):
                raise ValueError(f"guided_steps must index denoising_steps (0..{len(self.denoising_steps) - 1}), "
                                 f"got {self.guided_steps}")
        if not 0 <= self.reference_start < len(self.denoising_steps):
            raise ValueError(f"reference_start must lie in 0..{len(self.denoising_steps) - 1} (steps skipped), "
                             f"got {self.reference_start}")
        for name in ("control_guidance", "text_guidance"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 (1: off), got {getattr(self, name)}")


def evenly_spaced_steps(count: int, num_train_timesteps: int = 1000) -> tuple[int, ...]:
    """``count`` evenly spaced denoising steps from ``num_train_timesteps`` down, rounded: 4 gives the served
    few-step list (1000, 750, 500, 250), 16 the teacher's sampling. Warped through the shifted table like any list."""
    if count < 1:
        raise ValueError(f"need at least one denoising step, got {count}")
    return tuple(torch.linspace(num_train_timesteps, 0, count + 1)[:-1].round().long().tolist())


class FlowMatchSchedule:
    def __init__(self, shift: float = 5.0, num_train_timesteps: int = 1000):
        self.num_train_timesteps = num_train_timesteps
        s = torch.linspace(1.0, 0.0, num_train_timesteps + 1, dtype=torch.float64)[:-1]
        self.sigmas = shift * s / (1 + (shift - 1) * s)  # [1000] float64, 1.0 ... ~0.005 for shift 5
        self.timesteps = self.sigmas * num_train_timesteps

    @classmethod
    def from_config(cls, cfg: SamplerConfig) -> "FlowMatchSchedule":
        return cls(cfg.shift, cfg.num_train_timesteps)

    def sampling_timesteps(self, cfg: SamplerConfig) -> list[float]:
        """The timesteps a chunk is denoised at, in order."""
        steps = torch.tensor(cfg.denoising_steps, dtype=torch.long)
        if not cfg.warp:
            return [float(s) for s in steps]
        table = torch.cat([self.timesteps, torch.zeros(1, dtype=torch.float64)])
        return [float(t) for t in table[self.num_train_timesteps - steps]]

    def sigma(self, t: torch.Tensor | float) -> torch.Tensor:
        """Nearest-entry sigma for timesteps t (any shape), float64."""
        t = torch.as_tensor(t, dtype=torch.float64)
        idx = (self.timesteps.to(t.device)[None, :] - t.reshape(-1, 1)).abs().argmin(dim=1)
        return self.sigmas.to(t.device)[idx].reshape(t.shape)

    def _per_frame(self, t, like: torch.Tensor) -> torch.Tensor:
        """sigma broadcast over latents [B, C, F, H, W] from t as a float, [B] or [B, F]."""
        s = self.sigma(torch.as_tensor(t, dtype=torch.float64, device=like.device))
        if s.dim() == 2:
            return s[:, None, :, None, None]
        return s.reshape(-1, 1, 1, 1, 1) if s.dim() == 1 else s

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        s = self._per_frame(t, x0)
        return ((1 - s) * x0.double() + s * noise.double()).to(x0.dtype)

    def x0_from_flow(self, flow: torch.Tensor, xt: torch.Tensor, t) -> torch.Tensor:
        s = self._per_frame(t, xt)
        return (xt.double() - s * flow.double()).to(xt.dtype)

    def flow_target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0
