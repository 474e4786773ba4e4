"""DMD on a 2-D problem: a small MLP generator learns a Gaussian mixture from its exact (analytic) score, and the
critic, trained only on the generator's samples, follows the generator's distribution."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from worldsim.sampling.schedule import FlowMatchSchedule
from worldsim.train.dmd import critic_loss, dmd_loss
from worldsim.train.flow_matching import sample_timesteps

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread (conftest)

MEANS = torch.tensor([[-2.0, 1.0], [2.0, -1.0]])  # two equally likely components
STD = 0.4


def mixture_samples(n: int, g: torch.Generator) -> torch.Tensor:
    return MEANS[torch.randint(len(MEANS), (n,), generator=g)] + STD * torch.randn(n, 2, generator=g)


def mixture_flow(schedule: FlowMatchSchedule):
    """The exact flow of the mixture: x_t = (1 - s) x0 + s noise, so E[x0 | x_t] is a posterior-weighted mean."""

    def flow(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s = schedule.sigma(t).float()[:, None, None]  # [B, 1, 1]
        a, var = 1 - s, (1 - s) ** 2 * STD**2 + s**2
        offset = xt[:, None] - a * MEANS[None]  # [B, K, 2]
        w = torch.softmax(-(offset**2).sum(-1, keepdim=True) / (2 * var), dim=1)
        x0 = (w * (MEANS[None] + a * STD**2 / var * offset)).sum(1)
        return (xt - x0) / s[:, 0]

    return flow


class Critic(nn.Module):
    """A 2-D denoiser with the DiT's calling convention: (x_t [B, 2], t [B], context, controls) -> flow."""

    def __init__(self, width: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 + 16, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU(),
                                 nn.Linear(width, 2))

    def forward(self, x, t, context=None, controls=None):
        angles = (t[:, None] / 1000) * 2.0 ** torch.arange(8) * math.pi
        return self.net(torch.cat([x, angles.sin(), angles.cos()], dim=1))


def mmd(a: torch.Tensor, b: torch.Tensor) -> float:
    """Squared maximum mean discrepancy with a unit RBF kernel."""
    k = lambda x, y: torch.exp(-torch.cdist(x, y) ** 2 / 2).mean()  # noqa: E731
    return float(k(a, a) + k(b, b) - 2 * k(a, b))


@torch.no_grad()
def sample_flow(flow, n: int, g: torch.Generator, steps: int = 24) -> torch.Tensor:
    """Euler integration of a flow from noise (sigma 1) to data (sigma 0)."""
    x, sig = torch.randn(n, 2, generator=g), torch.linspace(1, 0, steps + 1)
    for i in range(steps):
        x = x + (sig[i + 1] - sig[i]) * flow(x, torch.full((n,), float(sig[i]) * 1000))
    return x


def test_dmd_moves_student_to_teacher_and_critic_tracks_student():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    schedule = FlowMatchSchedule(shift=1.0)
    teacher = mixture_flow(schedule)
    student = nn.Sequential(nn.Linear(2, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))
    critic = Critic()
    gen_opt = torch.optim.AdamW(student.parameters(), lr=2e-3, betas=(0.0, 0.999))
    critic_opt = torch.optim.AdamW(critic.parameters(), lr=2e-3, betas=(0.0, 0.999))
    target, z = mixture_samples(1000, g), torch.randn(1000, 2, generator=g)
    fake = lambda xt, t: critic(xt, t)  # noqa: E731

    def critic_step(x):
        loss = critic_loss(critic, x, None, None, schedule, generator=g)
        critic_opt.zero_grad()
        loss.backward()
        critic_opt.step()

    for _ in range(60):  # the critic first learns the initial student
        critic_step(student(torch.randn(256, 2, generator=g)))
    with torch.no_grad():
        start = student(z)
    critic_start = sample_flow(fake, 1000, g)
    assert mmd(critic_start, start) < 0.3 * mmd(critic_start, target)

    for step in range(1000):  # 5 critic updates per generator update
        x = student(torch.randn(256, 2, generator=g))
        if step % 5 == 0:
            loss, metrics = dmd_loss(x, teacher, fake, schedule, generator=g)
            gen_opt.zero_grad()
            loss.backward()
            gen_opt.step()
        critic_step(x)

    with torch.no_grad():
        end = student(z)
    assert mmd(end, target) < 0.1 * mmd(start, target)  # the student now matches the mixture
    assert (end[:, 0] < 0).float().mean().item() > 0.3 and (end[:, 0] > 0).float().mean().item() > 0.3  # both modes
    critic_end = sample_flow(fake, 1000, g)
    assert mmd(critic_end, end) < 0.1 * mmd(critic_start, end)  # the critic moved with the student


def test_dmd_gradient_is_normalised_difference_of_x0_predictions():
    """d loss / d x = (x0_fake - x0_real) / mean|x - x0_real| / numel, and the scores get no gradient."""
    schedule = FlowMatchSchedule()
    x = torch.randn(3, 4, 6, 2, 2, requires_grad=True)  # video-shaped: [B, C, F, H, W]
    real = lambda xt, t: torch.zeros_like(xt)  # noqa: E731  (x0_real = x_t)
    fake = lambda xt, t: torch.ones_like(xt)  # noqa: E731  (x0_fake = x_t - sigma)
    loss, _ = dmd_loss(x, real, fake, schedule, generator=torch.Generator().manual_seed(0))
    loss.backward()
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(schedule, (3,), generator=g, timestep_range=(0.02, 0.98))
    noise = torch.randn(x.shape, generator=g)
    s = schedule.sigma(t).float()[:, None, None, None, None]
    xt = (1 - s) * x.detach() + s * noise
    expected = -s / (x.detach() - xt).abs().mean(dim=(1, 2, 3, 4), keepdim=True) / x.numel()
    assert torch.allclose(x.grad, expected.expand_as(x), rtol=1e-4, atol=1e-9)


def test_guidance_on_the_controls_apart_composes_with_the_prompts_and_equal_scales_give_the_joint_form():
    """guided_flow with a control scale of its own: uncond + s (text_only - uncond) + c (cond - text_only), each
    branch keeping the reference; c == s (or None) is the standard joint form exactly, with no text-only call."""
    from worldsim.model.control import Controls
    from worldsim.train.guidance import guided_flow

    calls = []

    def model(x, t, context, controls=None):  # each condition adds its own, distinguishable term
        calls.append(controls is not None and controls.keys is not None)
        keys = 0 if controls is None or controls.keys is None else 3 * controls.keys.sum()
        ref = 0 if controls is None or controls.reference is None else 5 * controls.reference.sum()
        return 2 * x + context.sum() + keys + ref

    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 2, 3, 1, 1, generator=g), torch.full((1,), 500.0)
    text, empty = torch.randn(1, 4, 8, generator=g), torch.zeros(1, 4, 8)
    controls = Controls(keys=torch.rand(1, 3, 1, 6, generator=g), reference=torch.randn(1, 2, 3, 1, 1, generator=g))
    base, ref = 2 * x + 5 * controls.reference.sum(), 5 * controls.reference.sum()
    uncond, text_only, cond = base, base + text.sum(), base + text.sum() + 3 * controls.keys.sum()
    assert ref != 0 and text.sum() != 0

    joint = guided_flow(model, x, t, text, controls, empty, 1.5)
    torch.testing.assert_close(joint, uncond + 1.5 * (cond - uncond))
    assert len(calls) == 2
    calls.clear()
    torch.testing.assert_close(guided_flow(model, x, t, text, controls, empty, 1.5, control_scale=1.5), joint)
    assert len(calls) == 2
    calls.clear()
    composed = guided_flow(model, x, t, text, controls, empty, 1.5, control_scale=3.0)
    torch.testing.assert_close(composed, uncond + 1.5 * (text_only - uncond) + 3.0 * (cond - text_only))
    assert calls == [True, False, False]  # cond, text-only, uncond
    calls.clear()
    only_controls = guided_flow(model, x, t, text, controls, empty, 1.0, control_scale=2.0)
    torch.testing.assert_close(only_controls, text_only + 2.0 * (cond - text_only))
    assert calls == [True, False]  # the text-only branch is the unconditional one at prompt scale 1
