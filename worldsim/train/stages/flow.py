"""Stage ``flow``: learn the reference flow (:class:`~worldsim.model.reference_flow.ReferenceFlow`) from a dataset's
consecutive frames: how each control row moves the picture.

Every pair (frame t-1, frame t) of a clip whose row t carries controls is a sample: frame t-1 moved along the flow
of row t should be frame t. Loss: pixel MSE at full, half and quarter resolution (the coarse terms reach shifts
of several pixels, where the full-resolution gradient of a bilinear warp is blind). Reported: the held-out MSE and
that of copying frame t-1 (what a model that does not move its reference gets). Needs no codec and no DiT; minutes
on one CPU thread. ``--init FLOW`` continues from a flow file of the same control schema (e.g. on new data). The
export is ``OUT/final/flow.safetensors``, which a model package names as its ``reference_flow``.

``through_codec: true`` (with ``data.codec``, the toy codec; usually with ``--init`` a flow trained without it) trains
the flow on the path it is served on: a stream's frame is a latent, decoded, moved and encoded again as the DiT's
reference, and the codec's round trip is not the identity (it shifts the near ground and the view by a fraction of
a pixel per pass, which a walk of 1-2 pixels per frame feels). Both frames of a pair are taken through the codec
(before: as the stream holds it; after: the reference a perfect flow would give, the next frame encoded), and the
loss compares the moved reference's decoding with the answer's; the gradient runs through the frozen codec.
``streamed: true`` (with ``through_codec``) compounds the passes as a stream does: each clip starts from its first
frame through the codec, and every later frame is the previous *moved* one moved again (rows where nothing is
held pass unchanged, as served), compared with the world's frame through the codec; the gradient runs through the
whole clip, so a motion the round trip takes back a little at every pass shows in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ...model.config import ControlConfig
from ...model.control import Controls
from ...model.reference_flow import ReferenceFlow, ReferenceFlowConfig
from ..data import FrameBatch
from .base import Stage


@dataclass
class FlowOptions:
    bases: int = 12
    grid: int = 16
    hidden: int = 64
    scales: tuple[int, ...] = (1, 2, 4)  # average-pooling factors of the loss terms
    through_codec: bool = False  # train on the served path: the codec's round trip around the flow (data.codec)
    streamed: bool = False  # with through_codec: each clip streamed from its first frame, the passes compounding


def frame_pairs(batch: FrameBatch) -> tuple[torch.Tensor, torch.Tensor, Controls]:
    """Clips [B, T, ...] -> the pairs whose second frame carries controls: (before [N, 3, H, W], after [N, 3, H, W],
    controls of one frame per row: keys [N, 1, 1, K], ...)."""
    c = batch.controls
    if c is None:
        raise ValueError("the reference flow learns how controls move the frames: the dataset records no controls")
    present = torch.ones(batch.frames.shape[:2], dtype=torch.bool) if c.present is None else c.present.bool()
    keep = present[:, 1:].cpu().flatten()  # [B * (T-1)]

    def rows(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[:, 1:].flatten(0, 1)[keep][:, None]  # [N, 1, 1, n]

    before, after = (x.flatten(0, 1)[keep] for x in (batch.frames[:, :-1], batch.frames[:, 1:]))
    return before, after, Controls(rows(c.keys), rows(c.axes), rows(c.embedding))


def multiscale_mse(a: torch.Tensor, b: torch.Tensor, scales: tuple[int, ...]) -> torch.Tensor:
    return sum(F.mse_loss(F.avg_pool2d(a, s) if s > 1 else a, F.avg_pool2d(b, s) if s > 1 else b) for s in scales)


class FlowStage(Stage):
    name = "flow"
    Options = FlowOptions
    data_kind = "frames"
    ema_model = "flow"

    def build(self) -> None:
        control = self.ctx.data.control
        if control is None:
            raise ValueError("the reference flow learns how controls move the frames: the dataset records no controls")
        self.control = ControlConfig(control.keys, control.axes, control.embedding_dim, frames_per_latent=1)
        o = self.opts
        self.flow_cfg = ReferenceFlowConfig(o.bases, o.grid, o.hidden)
        if self.ctx.init is not None:
            flow = ReferenceFlow.load(self.ctx.init).train()
            if not flow.reads_controls_of(self.control):
                raise ValueError(f"--init {self.ctx.init} reads controls {flow.control}; the dataset records "
                                 f"{self.control}")
            self.flow_cfg = flow.cfg
        else:
            flow = ReferenceFlow(self.flow_cfg, self.control)
        self.models["flow"] = flow
        self.optimizers["flow"] = self.adamw(self.models["flow"])
        if o.streamed and not o.through_codec:
            raise ValueError("stage.streamed compounds the codec's round trips: it needs stage.through_codec: true")
        self.codec = self._frozen_codec() if o.through_codec else None

    def _frozen_codec(self):
        from ...codecs.toy_codec import ToyCodec
        from ..data import load_codec

        path = self.ctx.cfg.data.codec
        if not path:
            raise ValueError("stage.through_codec trains the flow around the codec's round trip: set data.codec to "
                             "the toy codec the model packages serve")
        codec = load_codec(path)
        if not isinstance(codec, ToyCodec):
            raise ValueError(f"stage.through_codec moves single frames through the toy codec; data.codec {path} is "
                             f"a {type(codec).__name__}")
        return codec.requires_grad_(False).eval().to(self.accelerator.device)

    def _round_trip(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [N, 3, H, W] -> encoded and decoded by the frozen codec (the gradient passes through)."""
        return self.codec(frames).clamp(0, 1)

    def _moved(self, batch: FrameBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        before, after, controls = frame_pairs(batch)
        u, _ = self.unwrap("flow").features(controls)
        if self.codec is None:
            return before, after, self.models["flow"](before, u)  # through the (DDP) wrapper
        with torch.no_grad():
            before, after = self._round_trip(before), self._round_trip(after)
        return before, after, self._round_trip(self.models["flow"](before, u))

    def _streamed(self, batch: FrameBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each clip streamed as served (``streamed``): (the frames before each step, the world's frames, the moved
        ones), each [B * (T-1), 3, H, W], all through the codec."""
        flow, frames, c = self.unwrap("flow"), batch.frames, batch.controls
        with torch.no_grad():
            truth = self._round_trip(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])  # [B, T, 3, H, W]
        out = [truth[:, 0]]
        for t in range(1, frames.shape[1]):
            u, gate = flow.features(Controls(*(None if x is None else x[:, t:t + 1] for x in
                                               (c.keys, c.axes, c.embedding, c.present))))
            moving = flow.moves(flow.weights(u), gate)  # [B]: as the served path decides
            moved = self._round_trip(self.models["flow"](out[-1], u))
            out.append(torch.where(moving[:, None, None, None], moved, out[-1]))
        return (torch.stack(out[:-1], 1).flatten(0, 1), truth[:, 1:].flatten(0, 1),
                torch.stack(out[1:], 1).flatten(0, 1))

    def step(self, batch: FrameBatch, step: int) -> dict[str, float]:
        before, after, moved = self._streamed(batch) if self.opts.streamed else self._moved(batch)
        loss = multiscale_mse(moved.float(), after, tuple(self.opts.scales))
        self.update(loss, "flow")
        return {"loss": loss.item(), "mse": F.mse_loss(moved.detach().float(), after).item(),
                "copy_mse": F.mse_loss(before, after).item()}

    def validate(self, batch: FrameBatch) -> dict[str, float]:
        before, after, moved = self._streamed(batch) if self.opts.streamed else self._moved(batch)
        return {"mse": F.mse_loss(moved.float(), after).item(), "copy_mse": F.mse_loss(before, after).item()}

    def sample(self, batch: FrameBatch) -> torch.Tensor:
        """Each clip's first frame moved by the clip's controls again and again, over the clip: [2B, T, 3, H, W]."""
        flow, frames, c = self.unwrap("flow"), batch.frames, batch.controls
        out = [frames[:, 0]]
        for t in range(1, frames.shape[1]):
            u, gate = flow.features(Controls(*(None if x is None else x[:, t:t + 1] for x in
                                               (c.keys, c.axes, c.embedding, c.present))))
            out.append(flow(out[-1], u, gate).clamp(0, 1))
        return torch.cat([frames, torch.stack(out, dim=1)])

    def export(self, name: str, state: dict[str, torch.Tensor], path: Path) -> Path:
        return self.unwrap(name).save(path.with_suffix(".safetensors"), state)
