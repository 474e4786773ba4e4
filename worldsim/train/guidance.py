"""Denoiser calls shared by the distillation objectives: whole clips with per-chunk prompts, and classifier-free
guidance on text and controls.

A denoiser is called as ``model(x_t, t, context, controls=controls) -> flow`` (see :mod:`.flow_matching`).
"""

from __future__ import annotations

import torch

from ..model.control import Controls
from ..sampling.schedule import FlowMatchSchedule
from .flow_matching import add_noise


def clip_flow(model, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, controls: Controls | None = None):
    """The model's flow over a clip x [B, C, F, H, W] whose chunks may each have their own prompt.

    text: [B, L, D] (one prompt per sample) or [B, n_chunks, L, D] (a batch's per-chunk prompts). Chunks whose
    prompts agree across the batch are predicted in one call under that prompt (usually a single call), and each
    frame keeps the prediction made under its own chunk's prompt. For a causal student this means earlier frames
    are re-read under the later prompt, like a "recache" switch.
    """
    if text.dim() == 3:
        return model(x, t, text, controls=controls)
    n_chunks, frames = text.shape[1], x.shape[2]
    groups: list[list[int]] = []
    for c in range(n_chunks):
        same = next((g for g in groups if torch.equal(text[:, g[0]], text[:, c])), None)
        if same is None:
            groups.append([c])
        else:
            same.append(c)
    chunk_of_frame = torch.arange(frames, device=x.device) * n_chunks // frames  # [F]
    out = None
    for g in groups:
        flow = model(x, t, text[:, g[0]], controls=controls)
        mine = torch.isin(chunk_of_frame, torch.tensor(g, device=x.device))[None, None, :, None, None]
        out = flow if out is None else torch.where(mine, flow, out)
    return out


def clip_flow_loss(model, schedule: FlowMatchSchedule, x0: torch.Tensor, history: torch.Tensor, t: torch.Tensor,
                   clean: torch.Tensor, noise: torch.Tensor, text: torch.Tensor, controls: Controls | None,
                   scored: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Teacher-forced flow-matching loss over a clip x0 [B, C, F, H, W] noised with ``noise`` at per-frame timesteps
    t [B, F], its frames where ``clean`` [B, F] taken from ``history`` instead (the context a KV cache holds); the
    squared error (times ``weights`` [B, 1, F, H, W] if given) averaged over the frames ``scored`` [B, F] (0/1)."""
    xt = torch.where(clean[:, None, :, None, None], history, add_noise(schedule, x0, noise, t))
    flow = clip_flow(model, xt, t, text, controls)
    err = (flow.float() - (noise - x0).float()).pow(2)  # [B, C, F, H, W]
    if weights is not None:
        err = err * weights
    return (err.mean(dim=(1, 3, 4)) * scored).sum() / scored.sum()


def guided_flow(model, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, controls: Controls | None,
                uncond_text: torch.Tensor, scale: float, control_scale: float | None = None) -> torch.Tensor:
    """Classifier-free guidance, standard form: uncond + scale * (cond - uncond); scale 1 is the plain conditional flow.

    The unconditional branch drops both the text (``uncond_text`` [B, L, D], the empty prompt's embedding) and the
    controls, so guidance sharpens prompt and control following together; a reference frame (the history, not a
    condition to sharpen) stays in both branches.

    ``control_scale`` (None: ``scale``) guides the controls apart from the prompt, in the composed form
    uncond + scale * (text_only - uncond) + control_scale * (cond - text_only), where text_only keeps the prompt and
    drops the controls; equal scales give the standard form exactly (and skip the text_only call).
    """
    cond = clip_flow(model, x, t, text, controls)
    kept = None if controls is None or controls.reference is None else Controls(reference=controls.reference)
    if control_scale is None or control_scale == scale or controls is None:
        if scale == 1:
            return cond
        uncond = model(x, t, uncond_text, controls=kept)
        return uncond + scale * (cond - uncond)
    text_only = clip_flow(model, x, t, text, kept)
    uncond = text_only if scale == 1 else model(x, t, uncond_text, controls=kept)
    return uncond + scale * (text_only - uncond) + control_scale * (cond - text_only)
