"""The one training loop every stage runs in, through accelerate (single device, DDP, FSDP2, multi-node).

The trainer owns what all stages share: the Accelerator (gradient accumulation, bf16 autocast), the data, the
learning-rate warmup, EMA, logging (tqdm, ``metrics.jsonl`` always, TensorBoard when installed), validation,
sample strips, checkpoints and resume. The stage (see :mod:`worldsim.train.stages.base`) owns its models and
objective. Everything a run writes lands in ``cfg.out``::

    OUT/config.yaml  metrics.jsonl  tensorboard/  samples/step_XXXXXXX.png  checkpoints/  final/<model>.safetensors
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from ..checkpoints.worldsim_format import worldsim_metadata
from ..codecs.base import to_uint8
from ..model.config import load_preset
from ..model.dit import CausalWanDiT
from . import checkpoint as ckpt
from .config import DataConfig, TrainConfig
from .data import TrainData, file_identity
from .ema import EMA
from .stages import stage_class
from .stages.base import Stage, StageContext

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    out: Path
    step: int  # optimizer steps done
    last_metrics: dict[str, float]


# zero-initialised modules a recipe's preset adds to an --init (with frame_reference) that lacks them
ADDED_BY_RECIPE = ("reference_warp",)


def model_config(cfg: TrainConfig, init: Path | None):
    """The DiT architecture: the one in ``--init``'s header for a worldsim file, else the recipe's ``model`` preset
    (name the published model's preset, e.g. ``model=wan2.1-t2v-1.3b``; loading checks that the weights fit).
    A module of ``ADDED_BY_RECIPE`` that the preset has and the header lacks is added (it starts as a no-op)."""
    from ..checkpoints.detect import resolve
    from ..checkpoints.worldsim_format import read_worldsim_config

    if init is not None:
        fmt, where = resolve(init)
        if fmt == "worldsim":
            header = read_worldsim_config(where)
            try:
                preset = load_preset(cfg.model)
            except (OSError, ValueError):
                return header
            added = {name: getattr(preset, name) for name in ADDED_BY_RECIPE
                     if getattr(preset, name) and not getattr(header, name) and header.frame_reference}
            header = dataclasses.replace(header, **added)
            warn_header_over_recipe(header, preset, init)
            return header
    return load_preset(cfg.model)


def warn_header_over_recipe(header, preset, init: Path) -> None:
    """Say so when ``--init``'s header overrides settings the recipe's model preset gives otherwise (the control
    module aside: a missing one is added): e.g. a recipe's ``chunk_frames: 2`` does nothing with a chunk-1 init."""
    differ = [f"{f.name} {getattr(header, f.name)} (recipe {getattr(preset, f.name)})"
              for f in dataclasses.fields(header)
              if f.name != "control" and getattr(header, f.name) != getattr(preset, f.name)]
    if differ:
        log.warning("--init %s: training keeps its header's %s; to train with the recipe's, save the weights with that "
                    "config first (worldsim.checkpoints.save_worldsim)", init, ", ".join(differ))


def open_text_encoder(data: DataConfig, text_len: int, text_dim: int):
    """The prompt embedder of a latent dataset: Wan's UMT5-XXL when ``data.text_encoder`` names it (control
    fine-tunes of published models), else the fixed hashing embedder of the toy models. Both map a prompt to
    [1, text_len, text_dim] and carry an ``identity`` that keys the embedding cache."""
    if data.text_encoder is None:
        from ..text.hashing import HashingPromptEmbedder

        return HashingPromptEmbedder(text_len, text_dim)
    from ..text.umt5 import UMT5TextEncoder, load_tokenizer, load_umt5_encoder

    path = Path(data.text_encoder)
    tokenizer = Path(data.tokenizer) if data.tokenizer else (
        path.parent / "tokenizer" if path.is_dir() else path.parent / "google" / "umt5-xxl")
    encoder = UMT5TextEncoder(load_umt5_encoder(path), load_tokenizer(tokenizer), text_len=text_len,
                              identity=f"umt5-{file_identity(path)}-{text_len}")
    if encoder.dim != text_dim:
        raise ValueError(f"{path}: the text encoder gives {encoder.dim}-d embeddings; the DiT takes {text_dim}")
    return encoder


class Trainer:
    def __init__(self, stage_name: str, cfg: TrainConfig, *, resume: bool = False, init: str | Path | None = None):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import set_seed

        # accelerate keeps one AcceleratorState per process; let a later run in the same process (tests, notebooks)
        # choose its own precision. The process group (PartialState) is kept.
        AcceleratorState._reset_state()

        self.cfg, self.out = cfg, Path(cfg.out)
        self.ckpt_root = self.out / "checkpoints"
        self.acc = acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum, mixed_precision=cfg.mixed_precision)
        log.info("%s on %s: %d process(es), device %s, mixed precision %s", stage_name, acc.distributed_type,
                 acc.num_processes, acc.device, acc.mixed_precision)
        cls = stage_class(stage_name)
        if cfg.package and cls.package_model is None:
            raise ValueError(f"package: true, but stage {stage_name!r} trains no DiT that could be served")
        init = Path(init) if init is not None else None
        model_cfg = self._open_data(cls.data_kind, init)

        self.loaded = None
        found = ckpt.latest_checkpoint(self.ckpt_root)
        if found is not None and not resume:
            raise ValueError(f"{self.out} already holds checkpoints (newest {found.name}); pass --resume to continue "
                             f"that run, or choose another --out")
        if resume:
            if found is None:
                log.warning("--resume: no complete checkpoint in %s; starting from scratch", self.ckpt_root)
            else:
                self.loaded = ckpt.Loaded(found)
                init = None  # the checkpoint has the weights
                log.info("resuming from %s (step %d)", found, self.loaded.step)

        set_seed(cfg.seed)  # the same initial weights in every process
        self.stage: Stage = cls(StageContext(cfg, acc, self.data.info, model_cfg, init))
        self.stage.build()
        st = self.stage
        if set(st.optimizers) - set(st.models):
            raise ValueError(f"stage {stage_name!r}: optimizers {sorted(st.optimizers)} must be named after models "
                             f"{sorted(st.models)}")
        for m in st.models.values():
            if hasattr(m, "gradient_checkpointing"):
                m.gradient_checkpointing = cfg.gradient_checkpointing
            m.train()
        for m in st.frozen.values():
            m.requires_grad_(False).eval().to(acc.device)
        if self.loaded:
            for name, m in st.models.items():
                m.load_state_dict(self.loaded.model(name))
        self.ema = EMA(st.models[cls.ema_model], cfg.ema_decay, cfg.ema_start) if cls.ema_model else None
        if self.ema and self.loaded and (saved := self.loaded.ema(cls.ema_model)) is not None:
            self.ema.load(saved)

        names = list(st.models)
        prepared = acc.prepare(*[st.models[n] for n in names], *[st.optimizers[n] for n in st.optimizers])
        prepared = prepared if isinstance(prepared, (list, tuple)) else [prepared]
        st.models = dict(zip(names, prepared[:len(names)]))
        st.optimizers = dict(zip(st.optimizers, prepared[len(names):]))
        for opt in st.optimizers.values():
            for g in opt.param_groups:
                g.setdefault("initial_lr", g["lr"])
        self.step = 0
        set_seed(cfg.seed + acc.process_index)  # different noise per process from here on
        if self.loaded:
            self._load_optimizers()
            self.step = self.loaded.step
            if (rng := self.loaded.rng(acc.process_index)) is not None:  # absent: resumed on more processes
                ckpt.set_rng(rng)
        if self.ema:
            self.ema.shadow = {k: v.to(acc.device) for k, v in self.ema.shadow.items()}
        self.tb = None
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.yaml").write_text(yaml.safe_dump({"stage": stage_name, **cfg.to_dict()}))
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                log.info("tensorboard is not installed: metrics go to %s only", self.out / "metrics.jsonl")
        self.stage_name = stage_name

    def _open_data(self, kind: str, init: Path | None):
        """Load the dataset as ``self.data``; return the DiT config (with the data's controls) for latent stages."""
        cfg, model_cfg, text_encoder = self.cfg, None, None
        if cfg.data.path is None:
            raise ValueError("no dataset: set data.path in the recipe or pass --data DIR")
        if kind == "latents":
            model_cfg = model_config(cfg, init)
            text_encoder = open_text_encoder(cfg.data, model_cfg.text_len, model_cfg.text_dim)
        with self.acc.main_process_first():  # the main process fills the latent/text caches, the others read them
            self.data = TrainData(cfg.data.path, kind=kind, batch_size=cfg.data.batch_size, seed=cfg.seed,
                                  val_episodes=cfg.data.val_episodes, clip_frames=cfg.data.clip_frames,
                                  chunk_frames=model_cfg.chunk_frames if model_cfg else 1,
                                  clip_chunks=cfg.data.clip_chunks, codec_path=cfg.data.codec,
                                  text_encoder=text_encoder)
        if model_cfg is not None and self.data.info.control is not None:
            model_cfg = model_cfg.with_control(self.data.info.control)
        return model_cfg

    # ---- optimizer state (full, parameter-name keyed: the same file for DDP, FSDP2 or one device) -------------
    def _optim_options(self, loading: bool):
        from accelerate.utils import DistributedType
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        fsdp = self.acc.distributed_type == DistributedType.FSDP
        if loading:
            return StateDictOptions(full_state_dict=True, broadcast_from_rank0=True) if fsdp else StateDictOptions()
        return StateDictOptions(full_state_dict=True, cpu_offload=True)

    def _load_optimizers(self) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        for name, opt in self.stage.optimizers.items():
            set_optimizer_state_dict(self.stage.unwrap(name), opt.optimizer, self.loaded.optimizer(name),
                                     options=self._optim_options(loading=True))

    def save_checkpoint(self) -> None:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        acc, st = self.acc, self.stage
        tmp = ckpt.begin(self.ckpt_root, self.step)
        ckpt.save_rank_rng(tmp, acc.process_index)
        models = {n: acc.get_state_dict(m) for n, m in st.models.items()}
        optims = {n: get_optimizer_state_dict(st.unwrap(n), o.optimizer, options=self._optim_options(loading=False))
                  for n, o in st.optimizers.items()}
        emas = {st.ema_model: self.ema.state_dict(st.unwrap(st.ema_model))} if self.ema else {}
        acc.wait_for_everyone()
        if acc.is_main_process:
            meta = {"stage": self.stage_name, "config": json.dumps(self.cfg.to_dict())}
            dits = {n: worldsim_metadata(st.unwrap(n)) for n in st.models if isinstance(st.unwrap(n), CausalWanDiT)}
            ckpt.finish(self.ckpt_root, tmp, self.step, models=models, emas=emas, optimizers=optims, meta=meta,
                        keep=self.cfg.keep_checkpoints, model_meta=dits)
        acc.wait_for_everyone()

    # ---- the loop ------------------------------------------------------------------------------------------
    def _set_lr(self) -> None:
        warmup = self.cfg.optim.warmup_steps
        scale = min(1.0, (self.step + 1) / warmup) if warmup else 1.0
        for opt in self.stage.optimizers.values():
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * scale

    def _log(self, metrics: dict[str, float]) -> None:
        if self.acc.is_main_process:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": self.step, "time": time.time(), **metrics}) + "\n")
            if self.tb:
                for k, v in metrics.items():
                    self.tb.add_scalar(k, v, self.step)

    def _mean_across(self, sums: dict[str, list[float]]) -> dict[str, float]:
        keys = sorted(sums)
        local = torch.tensor([float(np.mean(sums[k])) for k in keys], device=self.acc.device, dtype=torch.float64)
        return dict(zip(keys, self.acc.reduce(local, "mean").tolist())) if keys else {}

    def _eval_rng(self):
        """Validation and samples use their own seeded RNG, so they never change the training run's randomness."""
        return torch.random.fork_rng(devices=[self.acc.device] if self.acc.device.type == "cuda" else [])

    def validate(self) -> dict[str, float]:
        sums: dict[str, list[float]] = {}
        with self._eval_rng(), torch.no_grad(), self.acc.autocast():
            torch.manual_seed(self.cfg.seed)
            for batch in self.data.val_batches(self.cfg.val_batches):
                for k, v in self.stage.validate(batch.to(self.acc.device)).items():
                    sums.setdefault(f"val/{k}", []).append(v)
        return self._mean_across(sums)

    def write_sample(self) -> None:
        batches = self.data.val_batches(1) or [self.data.batch(0)]
        with self._eval_rng(), torch.no_grad(), self.acc.autocast():
            torch.manual_seed(self.cfg.seed)
            frames = self.stage.sample(batches[0].to(self.acc.device))
        if frames is None or not self.acc.is_main_process:
            return
        from PIL import Image

        b, t, _, h, w = frames.shape  # rows: samples, columns: frames
        grid = to_uint8(frames.float()).permute(0, 2, 1, 3, 4).reshape(b * h, t * w, 3).numpy()  # [b, t, h, w, 3]
        path = self.out / "samples" / f"step_{self.step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(path)

    def run(self, max_steps: int | None = None) -> RunResult:
        from tqdm.auto import tqdm

        cfg, acc, st = self.cfg, self.acc, self.stage
        total = cfg.max_steps if max_steps is None else max_steps
        bar = tqdm(total=total, initial=self.step, disable=not acc.is_main_process, desc=self.stage_name)
        sums: dict[str, list[float]] = {}
        last: dict[str, float] = {}
        models = list(st.models.values())
        started = time.monotonic()
        while self.step < total:
            st.stepped.clear()
            self._set_lr()
            for micro in range(cfg.grad_accum):
                batch = self.data.batch(self.step * cfg.grad_accum + micro, acc.process_index, acc.num_processes)
                with acc.accumulate(*models), acc.autocast():
                    for k, v in st.step(batch.to(acc.device), self.step).items():
                        sums.setdefault(k, []).append(v)
            if self.ema and st.ema_model in st.stepped:
                self.ema.update(st.unwrap(st.ema_model), self.step)
            self.step += 1
            bar.update(1)
            if cfg.max_minutes and self._out_of_time(started):
                log.info("max_minutes %g reached at step %d: stopping there", cfg.max_minutes, self.step)
                total = self.step  # the last step's logging, validation, checkpoint and export run as at max_steps
            if self.step % cfg.log_every == 0 or self.step == total:
                last = self._mean_across(sums)
                sums = {}
                bar.set_postfix({k: f"{v:.4g}" for k, v in last.items()})
                self._log(last)
            if self.data.val_clips and (self.step % cfg.val_every == 0 or self.step == total):
                self._log(self.validate())
            if cfg.sample_every and self.step % cfg.sample_every == 0:
                self.write_sample()
            if self.step % cfg.ckpt_every == 0 or self.step == total:
                self.save_checkpoint()
        bar.close()
        self.export(last)
        if self.tb:
            self.tb.close()
        return RunResult(self.out, self.step, last)

    def _out_of_time(self, started: float) -> bool:
        """Whether ``max_minutes`` of training have passed since ``started``; every process gets the main one's
        answer, so all stop at the same step."""
        over = time.monotonic() - started > self.cfg.max_minutes * 60
        if self.acc.num_processes == 1:
            return over
        from accelerate.utils import broadcast
        return bool(broadcast(torch.tensor(float(over), device=self.acc.device), from_process=0).item())

    def export(self, metrics: dict[str, float] | None = None) -> None:
        """Write each trained model (EMA weights where kept) to ``OUT/final/<name>`` in its serving format; a stage
        that trains a servable student (or any DiT stage with ``package: true``) also makes ``OUT/final`` a model
        package."""
        acc, st = self.acc, self.stage
        states = {n: self.ema.state_dict(st.unwrap(n)) if self.ema and n == st.ema_model else acc.get_state_dict(m)
                  for n, m in st.models.items()}
        if acc.is_main_process:
            written = {}
            for name, state in states.items():
                written[name] = path = st.export(name, state, self.out / "final" / name)
                log.info("wrote %s", path)
            if st.package_model is not None and (st.package_by_default or self.cfg.package):
                log.info("wrote %s", self.write_package(written[st.package_model], metrics or {}))
        acc.wait_for_everyone()

    def write_package(self, dit: Path, metrics: dict[str, float]) -> Path:
        """``OUT/final/worldsim-model.json`` (worldsim/model_package.py): the student with the data's codec and
        text encoder, the stage's sampler, and cache defaults spanning what a training clip attended to."""
        from ..codecs.toy_codec import ToyCodec
        from ..model_package import write_package

        cfg, info, st = self.cfg, self.data.info, self.stage
        codec, model_cfg = info.codec, st.unwrap(st.package_model).cfg
        if isinstance(codec, ToyCodec):
            codec_entry = {"kind": "toy", "path": str(Path(cfg.data.codec).resolve())}
        else:
            codec_entry = {"kind": "wan_vae", "path": str(Path(cfg.data.codec).resolve())}
        if cfg.data.text_encoder is None:
            text = {"kind": "hashing", "text_len": model_cfg.text_len, "text_dim": model_cfg.text_dim}
        else:
            enc = Path(cfg.data.text_encoder).resolve()
            tok = Path(cfg.data.tokenizer).resolve() if cfg.data.tokenizer else (
                enc.parent / "tokenizer" if enc.is_dir() else enc.parent / "google" / "umt5-xxl")
            text = {"kind": "umt5", "path": str(enc), "tokenizer": str(tok)}
        c, h, w = info.latent_shape
        geometry = {"height": info.height, "width": info.width, "fps": info.fps, "latent_shape": [c, h, w],
                    "spatial_stride": info.height // h, "temporal_stride": codec.temporal_stride}
        sampler = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(st.sampler).items()}
        cache = st.serving_cache()
        provenance = {"name": f"{self.stage_name} ({self.out.name})", "stage": self.stage_name, "steps": self.step,
                      "data": str(Path(cfg.data.path).resolve()), "recipe": dataclasses.asdict(cfg), "metrics": metrics,
                      "untrained": False}
        return write_package(self.out / "final", dit=dit, codec=codec_entry, text_encoder=text, geometry=geometry,
                             sampler=sampler, cache=cache, provenance=provenance, reference_flow=st.reference_flow_file)


def train(stage: str, cfg: TrainConfig, *, resume: bool = False, init: str | Path | None = None) -> RunResult:
    return Trainer(stage, cfg, resume=resume, init=init).run()
