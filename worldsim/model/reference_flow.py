"""Control-conditioned optical flow of the reference frame, in pixels: how the controls move the view.

A ``frame_reference`` DiT renders what its reference frame shows (docs/EXPERIMENTS.md, "What limits walking": given
the world's true next frame as its reference, the default teacher walks at 73-85% of the world's speed; given its
own last frame, at 8%). On the toy codec's 8x8 latent grid a walking step moves the near ground by a fifth of a
latent pixel, and the latent does not translate with the image at that scale: the best vertical shift of each latent
row predicts the next latent at most 3% better than copying it, and W and S pick the same shifts. In pixels the same
motion is a plain flow. So this module moves the reference where motion is linear: the stream's last frame is
decoded, resampled along a flow the controls choose, and encoded again as the DiT's reference.

The flow is a mix of ``bases`` learned fields [2, grid, grid] (pixels per frame, x and y; upsampled bilinearly to
the frame), weighted by an MLP of the frame's controls (:func:`~worldsim.model.control.control_features`). A turn,
a walk's perspective expansion, a strafe's parallax are each a field; held together they add. The weights are
the MLP's output minus its output for the same row with nothing held, so an idle frame moves by exactly zero and
comes back unchanged, as do frames without controls (absent, or dropped for guidance): a stream left alone never
passes through the codec again. The MLP's last layer is zero-initialised: a fresh flow moves nothing. Trained by
``worldsim train flow`` on a dataset's frame pairs (train/stages/flow.py); served from a model package's
``reference_flow`` file. Needs a per-frame codec (``frames_per_latent`` 1).

``gain`` (one per key and axis, 1 when trained) scales the flow of each control: a frame's weights are multiplied by
the mean gain of what it holds, weighted by how much each key or axis is held. A squared-error fit moves the
picture less than the world does (it prefers a short step to a misplaced one, and a served stream loses some of
each step in the codec's round trip), so :func:`~worldsim.train.calibrate.calibrate_gains` measures the reference
stream's speed under each held command against the world's and sets the gains that make them match (``worldsim
world calibrate-flow``).
File version 2 stores them; version 1 files (no gains) load with gains 1.

    flow = ReferenceFlow(ReferenceFlowConfig(), control_cfg)
    moved = flow(frames, *flow.features(controls))    # frames [B, 3, H, W] in [0, 1], controls of one frame
    reference = flow.move_latents(last, controls, codec)   # latents [B, C, F, h, w] through a per-frame codec
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints.base import CheckpointError
from ..checkpoints.safetensors_io import read_metadata, read_tensors, save_tensors
from .config import ControlConfig
from .control import Controls, control_features, has_reference

FORMAT, VERSION = "worldsim-reference-flow", 2
READS = ("1", "2")  # version 1: no gains (all 1)


@dataclass(frozen=True)
class ReferenceFlowConfig:
    bases: int = 12  # learned flow fields mixed per frame
    grid: int = 16  # resolution of each field (upsampled bilinearly to the frame)
    hidden: int = 64  # width of the control MLP

    def __post_init__(self) -> None:
        for name in ("bases", "grid", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"reference flow {name} must be >= 1, got {getattr(self, name)}")


class ReferenceFlow(nn.Module):
    """frames [B, 3, H, W] + control features [B, D] -> the frames moved along the controls' flow."""

    def __init__(self, cfg: ReferenceFlowConfig, control: ControlConfig):
        super().__init__()
        if control.frames_per_latent != 1:
            raise ValueError(f"the reference flow moves single frames: it needs a per-frame codec (frames_per_latent "
                             f"1), not {control.frames_per_latent}")
        self.cfg, self.control = cfg, control
        self.mix = nn.Sequential(nn.Linear(control.frame_dim, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, cfg.bases))
        nn.init.zeros_(self.mix[2].weight)
        nn.init.zeros_(self.mix[2].bias)
        self.fields = nn.Parameter(torch.randn(cfg.bases, 2, cfg.grid, cfg.grid) * 0.5)  # pixels per frame (x, y)
        self.register_buffer("gain", torch.ones(len(control.keys) + len(control.axes)))  # per key, then per axis

    def features(self, controls: Controls) -> tuple[torch.Tensor, torch.Tensor]:
        """Controls of one frame per batch row (keys [B, 1, 1, K], ...) -> (u [B, D], gate [B, 1])."""
        batch = controls.sources()[0].shape[0]
        u, gate = control_features(self.control, controls, batch, 1, self.mix[0].weight.dtype)
        return u[:, 0], gate[:, 0]

    def weights(self, u: torch.Tensor) -> torch.Tensor:
        """Control features [B, D] -> each field's weight [B, bases]; exactly 0 for a row with nothing held (its
        keys, axes and engine vector all 0; the "source given" bits, the last 3 features, are kept), scaled by the
        held controls' mean gain."""
        idle = torch.cat([torch.zeros_like(u[:, :-3]), u[:, -3:]], dim=1)
        return (self.mix(u) - self.mix(idle)) * self.held_gain(u)[:, None]

    def held_gain(self, u: torch.Tensor) -> torch.Tensor:
        """Control features [B, D] -> [B]: the gains of the held keys and axes, averaged with their magnitudes as
        weights (1 where nothing is held)."""
        held = u[:, :self.gain.numel()].abs()  # [B, keys + axes]
        total = held.sum(dim=1)
        return torch.where(total > 0, (held * self.gain.to(u)).sum(dim=1) / total.clamp_min(1e-12), 1.0)

    @staticmethod
    def moves(weights: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """[B] bool: the rows that move (carry controls and hold something), from weights [B, bases] and gate
        [B, 1]; a stream's other frames pass unchanged, not through the codec."""
        return (gate[:, 0].to(weights.device) > 0) & (weights.abs().amax(dim=1) > 0)

    def flow(self, u: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Control features [B, D] -> flow [B, 2, H, W] in pixels (x right, y down)."""
        return self._flow(self.weights(u), height, width)

    def _flow(self, weights: torch.Tensor, height: int, width: int) -> torch.Tensor:
        fields = torch.einsum("bk,kcij->bcij", weights, self.fields)  # [B, 2, grid, grid]
        return F.interpolate(fields, size=(height, width), mode="bilinear", align_corners=False)

    def forward(self, frames: torch.Tensor, u: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        """frames [B, 3, H, W] -> the same frames with their content moved by the flow (border pixels repeat where
        content enters); rows whose gate is 0 come back unchanged."""
        moved = self._resample(frames, self.weights(u.to(frames.dtype)))
        if gate is None:
            return moved
        return torch.where(gate.reshape(-1, 1, 1, 1) > 0, moved, frames)

    def _resample(self, frames: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """frames [B, 3, H, W] moved along the flow of field weights [B, bases]."""
        _, _, h, w = frames.shape
        flow = self._flow(weights, h, w)  # [B, 2, H, W]
        ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=frames.device, dtype=frames.dtype)
        xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=frames.device, dtype=frames.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # pixel centres in grid_sample's [-1, 1] coordinates
        # content moves by +flow: each output pixel reads the input at its position minus the flow
        grid = torch.stack([gx - flow[:, 0] * 2 / w, gy - flow[:, 1] * 2 / h], dim=-1)  # [B, H, W, 2]
        return F.grid_sample(frames, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def reads_controls_of(self, control: ControlConfig | None) -> bool:
        """Whether this flow was trained on ``control``'s keys, axes and engine vector (the grouping aside)."""
        return control is not None and (control.keys, control.axes, control.embedding_dim) == (
            self.control.keys, self.control.axes, self.control.embedding_dim)

    @torch.no_grad()
    def move_latents(self, references: torch.Tensor, controls: Controls, codec, chunk_frames: int = 1
                     ) -> torch.Tensor:
        """References [B, C, F, h, w] (a stream's last frame, F = 1, or a training clip's, from
        :func:`~worldsim.model.control.reference_frames`) moved through ``codec`` (decode, flow, encode) by the
        controls of F frames (each chunk of ``chunk_frames`` by its first frame's, as a stream moves its one
        reference per chunk). Frames that do not move (no reference yet, no controls, nothing held) come back as
        they were, not re-encoded."""
        b, _, f = references.shape[:3]
        first = torch.arange(f, device=references.device) // chunk_frames * chunk_frames  # [F]
        c = Controls(*(None if t is None else t[:, first] for t in (controls.keys, controls.axes, controls.embedding,
                                                                     controls.present)))
        u, gate = control_features(self.control, c, b, f, self.mix[0].weight.dtype)  # [B, F, D], [B, F, 1]
        u, gate = u.flatten(0, 1).to(self.mix[0].weight.device), gate.flatten(0, 1)  # [N, D], [N, 1]
        rows = references.transpose(1, 2).flatten(0, 1)  # [N, C, h, w]
        weights = self.weights(u)  # [N, bases]
        moving = self.moves(weights, gate).to(rows.device) & has_reference(rows[:, :, None])[:, 0]  # [N]
        if not bool(moving.any()):
            return references
        frames = codec.decode(rows[moving][:, :, None])[:, 0].clamp(0, 1)  # [M, 3, H, W], in the codec's dtype
        moved = self._resample(frames.float(), weights[moving.to(weights.device)])
        moved = codec.encode(moved[:, None].to(frames.dtype))[:, :, 0]
        rows = rows.clone()
        rows[moving] = moved.to(rows)
        return rows.unflatten(0, (b, f)).transpose(1, 2)

    # ---- files ---------------------------------------------------------------------------------------------
    def save(self, path: str | Path, state: dict[str, torch.Tensor] | None = None,
             calibration: dict | None = None) -> Path:
        """Write the weights (``state``, default this module's) with config and control schema in the header, and
        ``calibration`` (the report of :func:`~worldsim.train.calibrate.calibrate_gains`) where given."""
        meta = {"format": FORMAT, "version": str(VERSION), "config": json.dumps(asdict(self.cfg)),
                "control": json.dumps(asdict(self.control))}
        if calibration is not None:
            meta["calibration"] = json.dumps(calibration)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in (state or self.state_dict()).items()}
        return save_tensors(tensors, Path(path), meta)

    @classmethod
    def load(cls, path: str | Path) -> "ReferenceFlow":
        """Read a file written by :meth:`save`; a wrong format, version or tensor set is a CheckpointError."""
        path = Path(path)
        meta = read_metadata(path)
        if meta.get("format") != FORMAT:
            raise CheckpointError(f"{path} is not a worldsim reference flow (format {meta.get('format')!r}); "
                                  f"train one with `worldsim train flow`")
        if meta.get("version") not in READS:
            raise CheckpointError(f"{path}: reference flow version {meta.get('version')!r}; this worldsim reads "
                                  f"versions {', '.join(READS)}")
        try:
            flow = cls(ReferenceFlowConfig(**json.loads(meta["config"])), ControlConfig(**json.loads(meta["control"])))
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: bad reference flow header ({err})") from err
        tensors = read_tensors(path)
        if meta["version"] == "1":
            tensors.setdefault("gain", flow.gain.clone())  # before gains: all 1
        try:
            flow.load_state_dict(tensors)
        except RuntimeError as err:
            raise CheckpointError(f"{path}: reference flow weights do not match its header ({err})") from err
        return flow.eval()
