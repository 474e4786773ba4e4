"""The Stage contract: what one kind of training (teacher, codec, ode-init, self-forcing) gives the trainer.

The trainer (:mod:`worldsim.train.trainer`) owns everything shared: the Accelerator, data, gradient-accumulation
context, logging, EMA, checkpoints, resume, samples and validation. A stage owns its models and its objective.

Life cycle, driven by the trainer:

1. ``stage = Cls(ctx)``: ``ctx.cfg.stage`` (a dict from the recipe's ``stage:`` block) is parsed into the stage's
   ``Options`` dataclass as ``self.opts``.
2. ``stage.build()`` fills three dicts:
   - ``self.models``: trained modules by name (e.g. ``{"generator": dit, "critic": critic}``); checkpointed;
   - ``self.optimizers``: one optimizer per trained module, **under the same name** (``self.adamw(...)`` makes
     one from the recipe's ``optim`` block; pass ``lr``/``betas`` to differ per model);
   - ``self.frozen``: modules used without training (the teacher); not checkpointed, loaded from their own files.
   The trainer then runs ``accelerator.prepare`` on models and optimizers and puts the wrapped objects back into
   the same dicts (DDP/FSDP wrappers: call them for forward passes; ``self.unwrap(name)`` gives the module).
3. Every micro-batch: ``metrics = stage.step(batch, step)`` inside ``accelerator.accumulate(*models)`` and the
   trainer's autocast. ``step`` is the optimizer-step index (0-based; the same for all micro-batches of one
   accumulation). The stage computes its losses and calls ``self.update(loss, name)`` for every optimizer it wants
   to advance this step — zero, one or several times, e.g. self-forcing updates the critic every step and the
   generator when ``step % ratio == 0``. ``update`` does backward, clipping, ``opt.step()`` and ``zero_grad()``;
   accelerate turns the step into a no-op on micro-batches that only accumulate. It returns plain floats to log.
4. EMA: the trainer keeps an EMA of ``models[ema_model]`` and updates it after a step in which that model's
   optimizer really stepped (``self.stepped``).
5. ``validate(batch) -> metrics`` (no grad; held-out loss) and ``sample(batch) -> frames [B, T, 3, H, W] in
   [0, 1]`` (for the sample strips; ``self.decode`` turns latents into frames with the dataset's codec) run at
   the recipe's intervals under no_grad and a fixed seed, on every process (wrapped models may synchronise in
   forward) with the same held-out batches; only the main process writes the results.
6. At the end ``export(name, state, path)`` writes each trained model's weights (the EMA where kept) in its
   serving format; the default writes a worldsim ``.safetensors`` DiT file.

The registry ``STAGES`` (CLI name -> class, imported lazily) is in :mod:`worldsim.train.stages`.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ...model.config import DiTConfig
    from ...model.dit import CausalWanDiT
    from ..config import TrainConfig
    from ..data import DataInfo, LatentBatch


@dataclass
class StageContext:
    """What a stage may use to build itself."""

    cfg: "TrainConfig"  # the whole recipe (shared trainer keys + ``stage`` dict)
    accelerator: "Accelerator"
    data: "DataInfo"  # dataset facts: control schema, latent shape, text encoder, codec (for decoding samples)
    model_cfg: "DiTConfig | None" = None  # DiT architecture (recipe preset or --init's), with the data's controls
    init: Path | None = None  # ``--init CHECKPOINT``: weights to start the trained model from


@dataclass
class NoOptions:
    """Options of a stage that has none."""


class Stage:
    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions  # dataclass of the recipe's ``stage:`` block
    data_kind: ClassVar[str] = "latents"  # "latents": LatentBatch (codec latents, text, controls); "frames": FrameBatch
    ema_model: ClassVar[str | None] = None  # name in ``models`` whose EMA the trainer keeps
    package_model: ClassVar[str | None] = None  # name in ``models`` that can be exported as a model package
    package_by_default: ClassVar[bool] = False  # every run packages it (students); else on request (``package``)

    def __init__(self, ctx: StageContext):
        self.ctx = ctx
        self.accelerator = ctx.accelerator
        try:
            self.opts = self.Options(**(ctx.cfg.stage or {}))
        except TypeError as err:
            known = [f.name for f in dataclasses.fields(self.Options)]
            raise ValueError(f"stage {self.name!r}: bad 'stage' options {ctx.cfg.stage} ({err}); "
                             f"known: {known}") from err
        self.models: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.frozen: dict[str, nn.Module] = {}
        self.stepped: set[str] = set()  # optimizers that really stepped in the current trainer step
        self.reference_flow = None  # a ReferenceFlow that moves each frame's reference, as the served package does
        self.reference_flow_file: Path | None = None  # its file (the trainer's package names it)
        self.reference_codec: nn.Module | None = None  # the data's codec on the training device, for the flow's moves

    # ---- to implement --------------------------------------------------------------------------------------
    def build(self) -> None:
        """Fill ``self.models``, ``self.optimizers`` (same names) and ``self.frozen``."""
        raise NotImplementedError

    def step(self, batch: Any, step: int) -> dict[str, float]:
        """One micro-batch: losses, ``self.update(loss, name)`` calls; returns metrics to log."""
        raise NotImplementedError

    def validate(self, batch: Any) -> dict[str, float]:
        """Held-out metrics for one batch (called under ``torch.no_grad``); averaged by the trainer."""
        return {}

    def sample(self, batch: Any) -> torch.Tensor | None:
        """Frames [B, T, 3, H, W] in [0, 1] to show how training goes, or None."""
        return None

    def serving_cache(self) -> dict[str, int]:
        """The KV cache a package of this stage serves with, in latent frames: the training clip, no sink."""
        return {"sink_frames": 0, "window_frames": self.ctx.cfg.data.clip_chunks * self.ctx.model_cfg.chunk_frames}

    def export(self, name: str, state: dict[str, torch.Tensor], path: Path) -> Path:
        """Write trained weights ``state`` of ``models[name]`` (the EMA where kept) for serving, at ``path`` plus
        the format's suffix. Default: a worldsim ``.safetensors`` DiT file (config in the header)."""
        from ...checkpoints import save_worldsim

        return save_worldsim(self.unwrap(name), path.with_suffix(".safetensors"), state)

    # ---- helpers -------------------------------------------------------------------------------------------
    def adamw(self, module: nn.Module, *, lr: float | None = None,
              betas: tuple[float, float] | None = None) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters of ``module`` with the recipe's ``optim`` settings."""
        o = self.ctx.cfg.optim
        params = [p for p in module.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=o.lr if lr is None else lr, betas=tuple(betas or o.betas),
                                 weight_decay=o.weight_decay, eps=o.eps)

    def update(self, loss: torch.Tensor, name: str) -> None:
        """Backward ``loss`` and advance optimizer ``name`` (clipping its model's gradients to ``optim.grad_clip``)."""
        acc, opt = self.accelerator, self.optimizers[name]
        acc.backward(loss)
        clip = self.ctx.cfg.optim.grad_clip
        if acc.sync_gradients:
            if clip:
                acc.clip_grad_norm_(self.models[name].parameters(), clip)
            self.stepped.add(name)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def build_dit(self, init: Path | None = None) -> "CausalWanDiT":
        """A trainable DiT of ``ctx.model_cfg``: loaded from ``init`` (any checkpoint format; a checkpoint without
        control weights gets the zero-initialised control module) or freshly initialised."""
        from ...checkpoints import load_model
        from ...model.dit import CausalWanDiT

        if init is not None:
            return load_model(init, config=self.ctx.model_cfg).train()
        return CausalWanDiT(self.ctx.model_cfg)

    def use_reference_flow(self, path: str | Path) -> None:
        """Move every reference frame by ``path``'s reference flow (``worldsim train flow``) from now on: checked
        against the DiT (``frame_reference``), the data's codec (per frame, with an encoder) and control schema."""
        from ...codecs.toy_codec import ToyCodec
        from ...model.reference_flow import ReferenceFlow
        from ...pipeline.devices import channels_last_convs

        cfg, data = self.ctx.model_cfg, self.ctx.data
        if cfg is None or not cfg.frame_reference:
            raise ValueError("stage.reference_flow moves the DiT's reference frame: the model needs frame_reference "
                             "(the toy preset has it)")
        if not isinstance(data.codec, ToyCodec):
            raise ValueError("stage.reference_flow decodes and re-encodes each reference frame: it needs the toy codec "
                             f"(data.codec), not {type(data.codec).__name__}")
        flow = ReferenceFlow.load(path)
        c = data.control
        if not flow.reads_controls_of(c):
            raise ValueError(f"{path} reads controls {flow.control.keys} + {flow.control.axes}; the dataset records "
                             f"{None if c is None else (c.keys, c.axes)}: train the flow on this dataset")
        device = self.accelerator.device
        # the data's codec stays on the CPU with the data; every step decodes and encodes the moved frames, so on an
        # accelerator they go through a copy of it there
        on_device = next(data.codec.parameters()).device == device
        self.reference_codec = data.codec if on_device else copy.deepcopy(data.codec).to(device)
        self.reference_flow, self.reference_flow_file = flow.to(device), Path(path)
        channels_last_convs(self.reference_codec)  # the faster layout for the per-step convolutions

    def unwrap(self, name: str) -> nn.Module:
        return self.accelerator.unwrap_model(self.models[name])

    def referenced(self, batch: "LatentBatch", latents: torch.Tensor) -> "LatentBatch":
        """The batch with each frame's reference (the clean frame before its chunk, taken from ``latents``
        [B, C, F, H, W]: the data, or a rollout) in its controls, for a ``frame_reference`` DiT; else unchanged.
        With ``self.reference_flow`` each reference is moved by its chunk's controls through the data's codec (a
        copy of it on the training device), as a package with that flow serves."""
        cfg = self.ctx.model_cfg
        if cfg is None or not cfg.frame_reference:
            return batch
        from ...model.control import reference_frames

        ref = self.move_references(batch, reference_frames(latents.detach(), cfg.chunk_frames))
        return dataclasses.replace(batch, controls=batch.controls.with_reference(ref))

    def move_references(self, batch: "LatentBatch", ref: torch.Tensor) -> torch.Tensor:
        """References [B, C, F, H, W] moved by ``self.reference_flow`` and the batch's controls (through the data's
        codec on the training device); unchanged without a flow. Zero (absent) references stay zero and cost nothing."""
        if self.reference_flow is None:
            return ref
        return self._move(ref, batch.controls, self.ctx.model_cfg.chunk_frames)

    def reference_mover(self):
        """``(last [B, C, 1, H, W], one frame's controls) -> the moved reference`` for a rollout
        (:func:`~worldsim.train.rollout.self_forcing_rollout`), as a session serving the flow moves it; None
        without a flow."""
        return None if self.reference_flow is None else self._move

    def _move(self, ref: torch.Tensor, controls, chunk_frames: int = 1) -> torch.Tensor:
        codec = self.reference_codec
        where = next(codec.parameters()).device
        moved = self.reference_flow.move_latents(ref.to(where, torch.float32), controls.to(where), codec, chunk_frames)
        return moved.to(ref)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, F, H, W] -> frames [B, T, 3, H', W'] in [0, 1] with the dataset's codec."""
        codec = self.ctx.data.codec
        if codec is None:
            raise RuntimeError("no codec to decode samples with (the recipe names none)")
        codec.reset()
        return codec.decode(latents.float().cpu())  # the codec lives on the CPU with the data
