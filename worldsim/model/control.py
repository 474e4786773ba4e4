"""Control conditioning: per-video-frame keys, axes and an engine embedding, grouped per latent frame.

Controls enter through one zero-initialised, presence-gated path (reference §8.3, path A): an MLP maps the k
video-frame samples of each latent frame to a vector added to that frame's time embedding ``e`` before
``time_projection``, so it modulates every block's adaLN and the head exactly per latent frame. The output is
multiplied by a presence gate, so a frame with no control input gets exactly zero and the model computes the
same bits as a text-only checkpoint.

A model with ``frame_reference`` also takes, per latent frame, the clean latent of the last frame before its chunk
(:func:`reference_frames`; the sampler fills it, it is not a user control): a game's controls say how the next
frame differs from the last one, and a denoiser that sees that frame in its input channels learns the difference
quickly, where one that reaches it only through attention did not learn it at all (issue 12's experiments).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .config import ControlConfig


@dataclass
class Controls:
    """Controls for F latent frames, each grouped as k = frames_per_latent video-frame samples.

    keys: [B, F, k, K] in {0, 1} (or the fraction of the interval held); axes: [B, F, k, A] normalised to about
    [-1, 1]; embedding: [B, F, k, D_e]. A source left as None is absent. ``present`` [B, F] bool optionally
    marks latent frames that carry any control (default: every frame, if any source is given). ``reference``
    [B, C, F, H, W]: each frame's reference latent for a ``frame_reference`` model (zeros: none yet); the presence
    gate and control dropout do not touch it.
    """

    keys: torch.Tensor | None = None
    axes: torch.Tensor | None = None
    embedding: torch.Tensor | None = None
    present: torch.Tensor | None = None
    reference: torch.Tensor | None = None

    def sources(self) -> list[torch.Tensor]:
        return [t for t in (self.keys, self.axes, self.embedding) if t is not None]

    def is_empty(self) -> bool:
        return not self.sources() or (self.present is not None and not bool(self.present.any()))

    def signature(self) -> tuple[bool, bool, bool, bool]:
        """Which sources are given: streams batched together must agree on it (the module sees it as a feature)."""
        return self.keys is not None, self.axes is not None, self.embedding is not None, self.reference is not None

    def with_reference(self, reference: torch.Tensor | None) -> "Controls":
        return dataclasses.replace(self, reference=reference)

    @staticmethod
    def cat(items: list["Controls | None"], frames: bool = False) -> "Controls | None":
        """Concatenate controls along the batch (per-stream controls batched together), or along the frames with
        ``frames`` (consecutive chunks of one batch): all None gives None; otherwise every item must be given,
        with the same sources."""
        if all(c is None for c in items):
            return None
        if any(c is None for c in items) or len({c.signature() for c in items}) > 1:
            raise ValueError("controls joined together must all carry the same sources (or all none)")
        dim = 1 if frames else 0

        def join(name: str, d: int = dim) -> torch.Tensor | None:
            parts = [getattr(c, name) for c in items]
            return None if parts[0] is None else torch.cat(parts, dim=d)

        present = None
        if any(c.present is not None for c in items):
            present = torch.cat([c.present if c.present is not None else
                                 torch.ones(c.sources()[0].shape[:2], dtype=torch.bool, device=c.sources()[0].device)
                                 for c in items], dim=dim)
        return Controls(join("keys"), join("axes"), join("embedding"), present, join("reference", 2 if frames else 0))

    def to(self, device) -> "Controls":
        """The same controls with every tensor on ``device``."""
        return Controls(*(None if t is None else t.to(device) for t in (self.keys, self.axes, self.embedding,
                                                                         self.present, self.reference)))

    def slice_frames(self, start: int, stop: int) -> "Controls":
        def cut(t):
            return None if t is None else t[:, start:stop]

        ref = None if self.reference is None else self.reference[:, :, start:stop]
        return Controls(cut(self.keys), cut(self.axes), cut(self.embedding), cut(self.present), ref)


class ControlEmbedding(nn.Module):
    """MLP from grouped per-frame controls [B, F, k * frame_dim] to a time-embedding offset [B, F, dim].

    :meth:`features` checks and flattens a :class:`Controls` into the MLP's input (:func:`control_features`)."""

    def __init__(self, cfg: ControlConfig, dim: int):
        super().__init__()
        self.cfg = cfg
        self.mlp = nn.Sequential(nn.Linear(cfg.frames_per_latent * cfg.frame_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, u: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """The time-embedding offset [B, F, dim] from :meth:`features`' input and gate."""
        return gate * self.mlp(u)

    def features(self, c: Controls, batch: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The MLP's input [B, F, k * frame_dim] and the presence gate [B, F, 1] (:func:`control_features`)."""
        return control_features(self.cfg, c, batch, frames, self.mlp[0].weight.dtype)


def control_features(cfg: ControlConfig, c: Controls, batch: int, frames: int, dtype: torch.dtype
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Check and flatten controls of F latent frames: keys, axes, the RMS-normalised engine vector and three
    "source given" bits per video frame -> [B, F, k * frame_dim], and the presence gate [B, F, 1] (1: the frame
    carries controls). The input of every module that reads controls (the control MLP, the reference warp and
    flow), so all of them see a control row the same way."""
    k = cfg.frames_per_latent

    def check(name: str, t: torch.Tensor | None, width: int) -> None:
        want = (batch, frames, k, width)
        if t is not None and (t.dim() != 4 or tuple(t.shape) != want):
            raise ValueError(f"controls.{name} must have shape [B, F, frames_per_latent, {name}_dim] = {list(want)}, "
                             f"got {list(t.shape)}")

    check("keys", c.keys, len(cfg.keys))
    check("axes", c.axes, len(cfg.axes))
    check("embedding", c.embedding, cfg.embedding_dim)
    ref = c.sources()[0]

    def part(t: torch.Tensor | None, width: int) -> torch.Tensor:
        return ref.new_zeros(batch, frames, k, width, dtype=dtype) if t is None else t.to(dtype)

    emb = part(c.embedding, cfg.embedding_dim)
    if cfg.embedding_dim:
        emb = emb * torch.rsqrt(emb.pow(2).mean(-1, keepdim=True) + 1e-6)  # engine vectors: RMS-normalised
    bits = torch.tensor([c.keys is not None, c.axes is not None, c.embedding is not None], dtype=dtype,
                        device=ref.device).expand(batch, frames, k, 3)
    u = torch.cat([part(c.keys, len(cfg.keys)), part(c.axes, len(cfg.axes)), emb, bits], dim=-1)
    gate = torch.ones(batch, frames, 1, dtype=dtype, device=ref.device)
    if c.present is not None:
        if tuple(c.present.shape) != (batch, frames):
            raise ValueError(f"controls.present must have shape [B, F] = {[batch, frames]}, "
                             f"got {list(c.present.shape)}")
        gate = c.present.to(dtype)[..., None]
    return u.flatten(2), gate


def reference_frames(latents: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """Each frame's reference for a clip of clean latents [B, C, F, H, W]: the last frame before its chunk (zeros
    for the first chunk), as a streaming session has it when the chunk is generated. -> [B, C, F, H, W]."""
    f = latents.shape[2]
    before = torch.arange(f, device=latents.device) // chunk_frames * chunk_frames - 1  # [F]
    ref = latents[:, :, before.clamp(min=0)]
    return torch.where((before >= 0)[None, None, :, None, None], ref, torch.zeros_like(ref))


def has_reference(reference: torch.Tensor) -> torch.Tensor:
    """[B, F] bool: which frames of references [B, C, F, H, W] have one (zeros mean "none yet", as
    :func:`reference_frames` and the streaming session leave the first chunk's)."""
    return reference.flatten(3).abs().amax(dim=(1, 3)) > 0


def group_video_frames(samples: torch.Tensor, frames_per_latent: int) -> torch.Tensor:
    """[B, F*k, C] per-video-frame samples -> [B, F, k, C] grouped per latent frame."""
    b, n, c = samples.shape
    if n % frames_per_latent:
        raise ValueError(f"{n} video-frame samples do not group into latent frames of {frames_per_latent}")
    return samples.view(b, n // frames_per_latent, frames_per_latent, c)
