"""One inference runtime: everything that turns prompts + controls into frames, built from one model source.

``build_runtime(RuntimeOptions(model=...))`` loads one of:

- a Wan2.1 model folder (official or diffusers layout), optionally with a Self-Forcing ``.pt`` (``checkpoint``): its
  DiT, UMT5 for prompts (cached per prompt; ``offload_text_encoder`` keeps it in CPU RAM between prompts), the Wan
  VAE or TAEHV streaming decoder, and the Wan VAE encoder for start frames;
- a worldsim model package (:mod:`worldsim.model_package`): the DiT with its own codec, text encoder, sampler,
  geometry and cache defaults;
- one checkpoint file (worldsim safetensors, Self-Forcing ``.pt`` with ``config``), or, with no ``model``, a
  preset with random weights (tests, benchmarks; the frames depict nothing but respond to prompts and controls).
  These have no text encoder or decoder of their own: prompts go through the hashing embedder and frames through
  the weight-free :class:`~worldsim.codecs.preview.PreviewDecoder`.

``worldsim serve`` (and so ``worldsim play --spawn-daemon``), ``worldsim generate``, the toy evaluation of packages
and the benchmarks all build from here; :meth:`Runtime.new_session` starts a stream with the source's sampler and
cache settings.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .codecs.base import StreamingDecoder
from .codecs.preview import PreviewDecoder
from .codecs.taehv import TAEHVStreamingDecoder, load_taehv
from .codecs.toy_codec import ToyCodec
from .codecs.wan_vae import WanVAEDecoder, load_wan_vae
from .model.config import ControlConfig, DiTConfig, load_preset
from .model.control import Controls
from .model.dit import CausalWanDiT
from .model_package import PackageError, is_package, read_package
from .pipeline.devices import (channels_last_convs, column_major_linears, compile_blocks, resolve_device, resolve_dtype,
                               text_encoder_dtype)
from .sampling.schedule import SamplerConfig
from .sampling.session import StreamingSession
from .serve.frame_format import fit
from .serve.protocol import ControlSchema
from .text.hashing import HashingPromptEmbedder, PromptEmbedder

log = logging.getLogger(__name__)

DEFAULT_KEYS = ("W", "A", "S", "D", "Space", "Shift")
DEFAULT_AXES = ("mouse_dx", "mouse_dy")
SPATIAL_STRIDE = 8  # video pixels per latent pixel (Wan VAE, preview decoder)
DECODER_TYPES = {"wan": WanVAEDecoder, "taehv": TAEHVStreamingDecoder}
DECODERS = tuple(DECODER_TYPES)


def default_video(dim: int) -> tuple[int, int]:
    """832 x 480 for Wan2.1-sized models (dim >= 1536), else 128 x 128 (latent 16 x 16) for CPU-sized ones."""
    return (480, 832) if dim >= 1536 else (128, 128)


# sampler fields a serving or evaluation option may override (serving also hold_idle_reference)
SAMPLER_OVERRIDES = ("control_guidance", "text_guidance", "guided_steps", "reference_start")


@dataclass
class RuntimeOptions:
    preset: str = "small"
    model: str | None = None  # Wan2.1 folder, model package or checkpoint file; None: the preset, random weights
    config: str | None = None  # architecture for a checkpoint that stores none (a preset name or a Wan folder)
    height: int | None = None  # video pixels (default: the package's, else by model size)
    width: int | None = None
    device: str = "auto"
    dtype: str = "auto"  # fp32 | bf16 | fp16 | auto (bf16 on CUDA, fp32 on CPU)
    keys: tuple[str, ...] = DEFAULT_KEYS  # control schema of a preset's (untrained) control module
    axes: tuple[str, ...] = DEFAULT_AXES
    embedding_dim: int = 0
    fps: float | None = None  # default: the package's, else 16
    sink_frames: int | None = None  # KV cache, latent frames; default: the package's, else 3
    window_frames: int | None = None  # default: the package's, else 12
    chunk_latents: int | None = None  # latent frames per chunk (default: the model's training chunk size)
    seed: int = 0  # random weights of a preset
    denoising_steps: tuple[int, ...] | None = None  # timesteps per chunk (None: the source's, else 1000,750,500,250)
    control_guidance: float | None = None  # the sampler's guidance on the controls (None: the source's, else 1)
    text_guidance: float | None = None  # the sampler's guidance on the prompt (None: the source's, else 1)
    guided_steps: tuple[int, ...] | None = None  # denoising steps guidance applies to (None: the source's, else all)
    hold_idle_reference: bool | None = None  # SamplerConfig.hold_idle_reference (None: the source's, else off)
    reference_start: int | None = None  # SamplerConfig.reference_start (None: the source's, else 0)
    # a Wan2.1 folder (model=DIR) only:
    checkpoint: str | None = None  # Self-Forcing .pt whose weights replace the folder's DiT
    use_ema: bool = True  # the .pt's generator_ema (else generator)
    decoder: str = "auto"  # wan | taehv | preview; auto: wan for a folder, the package's codec, else preview
    taehv: str | None = None  # TAEHV weights (default: taew2_1.pth in the folder)
    attn: str = "auto"  # attention backend (worldsim.model.attention)
    compile: bool = False  # torch.compile the transformer blocks
    offload_text_encoder: bool = False  # keep UMT5 on the CPU between prompts (a 24 GB card then fits the rest)
    stage_on_cpu: bool = False  # load weights into CPU RAM; Runtime.to_device() moves them (see worldsim generate)
    reference_flow: bool = True  # a package's reference flow moves each reference frame (False: serve without it)


@dataclass
class Runtime:
    model: CausalWanDiT
    name: str
    untrained: bool
    latent_shape: tuple[int, int, int]  # (C, h, w) of one latent frame
    video_shape: tuple[int, int]  # (H, W) pixels
    fps: float
    sink_frames: int
    window_frames: int
    chunk_latents: int
    make_decoder: Callable[[], StreamingDecoder]
    embed_prompt: PromptEmbedder | None  # text -> [1, L, D] float32 on the CPU; None once released
    encode_start: Callable[[np.ndarray], torch.Tensor] | None  # [H, W, 3] uint8 -> clean latents [1, C, 1, h, w]
    schema: ControlSchema  # the controls sessions accept (empty when the model has no control module)
    decoder_name: str = "preview"
    text_encoder_name: str = "hashing"
    sampler: SamplerConfig | None = None  # None: the default few-step sampler
    source: dict = field(default_factory=dict)  # where the weights came from (folder, layout, checkpoint)
    target_device: torch.device | None = None  # where to_device() moves the weights (stage_on_cpu)
    modules: list[nn.Module] = field(default_factory=list)  # decoder/encoder modules moved with the DiT
    move_reference: Callable[[torch.Tensor, Controls], torch.Tensor] | None = None  # a package's reference flow
    start_frames: dict[str, np.ndarray] = field(default_factory=dict)  # prompt -> a package's start [H, W, 3] uint8
    _start_latents: dict[str, torch.Tensor] = field(default_factory=dict)  # start_frames encoded, once each
    _empty_prompt: torch.Tensor | None = None  # the empty prompt's embedding, for text guidance (kept once made)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def temporal_stride(self) -> int:
        """Video frames per latent frame."""
        return self.schema.frames_per_latent

    def video_info(self) -> dict:
        k, n = self.schema.frames_per_latent, self.chunk_latents
        return {"width": self.video_shape[1], "height": self.video_shape[0], "fps": self.fps, "chunk_latents": n,
                "frames_per_latent": k, "frames_per_chunk": k * n, "first_chunk_frames": 1 + k * (n - 1)}

    def start_latents(self, prompt: str) -> torch.Tensor | None:
        """The clean latents [1, C, 1, h, w] of the package's start frame for ``prompt`` (encoded on first use, then
        kept: sessions only read them), or None when it has none."""
        if prompt not in self.start_frames or self.encode_start is None:
            return None
        if prompt not in self._start_latents:
            self._start_latents[prompt] = self.encode_start(self.start_frames[prompt])
        return self._start_latents[prompt]

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        """prompt -> its embedding [1, L, D] (float32, CPU), each distinct prompt encoded once."""
        if self.embed_prompt is None:
            raise RuntimeError("the text encoder was released; encode every prompt before release_text_encoder()")
        return {p: self.embed_prompt(p) for p in dict.fromkeys(prompts)}

    def empty_prompt(self) -> torch.Tensor:
        """The empty prompt's embedding [1, L, D]: text guidance's unconditional branch (what text dropout trained)."""
        if self._empty_prompt is None:
            self._empty_prompt = self.encode_prompts([""])[""]
        return self._empty_prompt

    @property
    def text_guided(self) -> bool:
        return self.sampler is not None and self.sampler.text_guidance != 1

    def release_text_encoder(self) -> None:
        """Free the text encoder (a fixed prompt list is encoded; UMT5-XXL is ~11 GiB in bf16); the empty prompt is
        encoded first when the sampler guides on text."""
        if self.text_guided:
            self.empty_prompt()
        self.embed_prompt = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def to_device(self) -> None:
        """Move weights loaded with ``stage_on_cpu`` to the device they are meant for."""
        if self.target_device is not None:
            for m in (self.model, *self.modules):
                m.to(self.target_device)

    def new_session(self, prompt_embeds: torch.Tensor, *, seed: int = 0, context_latents: torch.Tensor | None = None,
                    context_controls: Controls | None = None) -> StreamingSession:
        """A stream with this runtime's latent shape, chunk size, sampler and cache (sink, window). On a CPU each
        chunk's cache write is deferred into the next chunk's first forward (see StreamingSession)."""
        return StreamingSession(self.model, prompt_embeds, latent_shape=self.latent_shape, seed=seed,
                                sink_frames=self.sink_frames, window_frames=self.window_frames,
                                chunk_frames=self.chunk_latents, sampler=self.sampler, context_latents=context_latents,
                                context_controls=context_controls, defer_cache_write=self.device.type == "cpu",
                                uncond_prompt=self.empty_prompt() if self.text_guided else None,
                                move_reference=self.move_reference)


# ---- loaders for the published files ---------------------------------------------------------------------------
def load_dit(folder, *, use_ema: bool, dtype: torch.dtype, device: torch.device) -> CausalWanDiT:
    """A model folder's DiT, or its architecture with a Self-Forcing checkpoint's weights when one is given."""
    from .checkpoints import load_model

    dit = folder["dit"].path
    if "checkpoint" in folder.parts:
        return load_model(folder["checkpoint"].path, config=dit, use_ema=use_ema, dtype=dtype, device=device)
    log.warning("no --checkpoint: using the base Wan2.1 weights, which were not trained for few-step causal "
                "sampling; expect noise. Pass the Self-Forcing checkpoint (checkpoints/self_forcing_dmd.pt).")
    return load_model(dit, dtype=dtype, device=device)


def load_text_encoder(encoder: Path, tokenizer: Path, dit_cfg: DiTConfig, device: torch.device, offload: bool):
    """UMT5 (Wan's .pth or a text_encoder/ folder) as a cached prompt encoder for this DiT (offload: kept on the CPU
    between prompts)."""
    from .text.umt5 import UMT5TextEncoder, load_tokenizer, load_umt5_encoder

    model = load_umt5_encoder(encoder, dtype=text_encoder_dtype(device), device="cpu" if offload else device)
    text = UMT5TextEncoder(model, load_tokenizer(tokenizer), text_len=dit_cfg.text_len, device=device,
                           offload=offload)
    if text.dim != dit_cfg.text_dim:
        raise ValueError(f"{encoder}: the text encoder gives {text.dim}-dim embeddings but the DiT takes "
                         f"{dit_cfg.text_dim}")
    return text


def load_decoder(folder, kind: str, *, dtype: torch.dtype, device: torch.device) -> StreamingDecoder:
    """A model folder's Wan VAE or TAEHV as a streaming decoder."""
    if kind == "wan":
        return WanVAEDecoder(load_wan_vae(folder["vae"].path, dtype=dtype, device=device))
    if kind == "taehv":
        return TAEHVStreamingDecoder(load_taehv(folder["taehv"].path, dtype=dtype, device=device))
    raise ValueError(f"unknown decoder {kind!r}; choose one of {DECODERS}")


def _random_model(opts: RuntimeOptions, device: torch.device, dtype: torch.dtype) -> CausalWanDiT:
    """A preset with seeded random weights; head and control output are made non-zero so frames respond."""
    control = ControlConfig(keys=opts.keys, axes=opts.axes, embedding_dim=opts.embedding_dim) \
        if (opts.keys or opts.axes or opts.embedding_dim) else None
    cfg = load_preset(opts.preset).with_control(control)
    g = torch.Generator().manual_seed(opts.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)
        model = CausalWanDiT(cfg)
    with torch.no_grad():
        outs = [model.head.head] + ([model.control_embedding.mlp[2]] if model.control_embedding is not None else [])
        for layer in outs:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * 0.02)
    return model.to(device=device, dtype=dtype).eval()


def preview_encoder(decoder: PreviewDecoder,
                    latent_shape: tuple[int, int, int]) -> Callable[[np.ndarray], torch.Tensor]:
    """The least-squares inverse of the preview decoder: an image -> the latent frame it previews as."""
    c, h, w = latent_shape
    pinv = torch.linalg.pinv(decoder.proj)  # [C, 3]

    def encode(image: np.ndarray) -> torch.Tensor:
        rgb = torch.from_numpy(np.array(image, np.float32)).div(255).permute(2, 0, 1)[None]  # [1, 3, H, W]
        rgb = F.adaptive_avg_pool2d(rgb, (h, w))
        lat = torch.einsum("co,bohw->bchw", pinv, (rgb - 0.5) / 0.25)  # PreviewDecoder: rgb = proj @ z * 0.25 + 0.5
        return lat[:, :, None]  # [1, C, 1, h, w]

    return encode


def _video_size(opts: RuntimeOptions, cfg, spatial: int) -> tuple[int, int, tuple[int, int, int]]:
    default_h, default_w = default_video(cfg.dim)
    height, width = opts.height or default_h, opts.width or default_w
    unit = spatial * cfg.patch_size[1]
    if height % unit or width % unit or height <= 0 or width <= 0:
        raise ValueError(f"video size {height}x{width} must be a positive multiple of {unit} "
                         f"(decoder stride {spatial} x patch {cfg.patch_size[1]})")
    return height, width, (cfg.in_dim, height // spatial, width // spatial)


def _schema(cfg, temporal_stride: int) -> ControlSchema:
    c = cfg.control
    return ControlSchema(frames_per_latent=temporal_stride) if c is None else \
        ControlSchema(c.keys, c.axes, c.embedding_dim, c.frames_per_latent)


def _checked_chunk(opts: RuntimeOptions, cfg) -> int:
    chunk = opts.chunk_latents or cfg.chunk_frames
    if chunk < 1:
        raise ValueError(f"chunk_latents must be at least 1, got {chunk}")
    if opts.window_frames < chunk:
        raise ValueError(f"window_frames ({opts.window_frames}) must hold a chunk ({chunk} latent frames)")
    return chunk


def _with_defaults(opts: RuntimeOptions, fps: float = 16.0, sink_frames: int = 3,
                   window_frames: int = 12) -> RuntimeOptions:
    """Options with stream settings the user left unset filled in (from a package, else the daemon's defaults)."""
    return dataclasses.replace(opts, fps=fps if opts.fps is None else opts.fps,
                               sink_frames=sink_frames if opts.sink_frames is None else opts.sink_frames,
                               window_frames=window_frames if opts.window_frames is None else opts.window_frames)


def codec_encoder(codec, device: torch.device, dtype: torch.dtype) -> Callable[[np.ndarray], torch.Tensor]:
    """Start frames through a codec with an encoder (Wan VAE, toy codec): [H, W, 3] uint8 -> [1, C, 1, h, w]."""

    def encode(image: np.ndarray) -> torch.Tensor:
        frames = torch.from_numpy(np.array(image, np.float32) / 255).permute(2, 0, 1)[None, None]  # [1, 1, 3, H, W]
        return codec.encode(frames.to(device, dtype)).float()

    return encode


def build_runtime(opts: RuntimeOptions) -> Runtime:
    """Load the source ``opts.model`` names (see the module docstring); every missing or mismatched file is named
    before anything heavy is read where that can be known."""
    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device, cpu_half=True)
    load_device = torch.device("cpu") if opts.stage_on_cpu else device
    if opts.model and is_package(opts.model):
        rt = _package_runtime(opts, device, load_device, dtype)
    else:
        opts = _with_defaults(opts)
        if opts.model and Path(opts.model).is_dir():
            rt = _folder_runtime(opts, device, load_device, dtype)
        else:
            rt = _file_runtime(opts, load_device, dtype)
    overrides = {k: v for k in (*SAMPLER_OVERRIDES, "hold_idle_reference") if (v := getattr(opts, k)) is not None}
    if opts.denoising_steps is not None:
        overrides["denoising_steps"] = steps = tuple(opts.denoising_steps)
        own = rt.sampler or SamplerConfig()
        guiding = own.text_guidance != 1 or own.control_guidance != 1
        if opts.guided_steps is None and guiding and own.guided_steps is not None:  # indices into the old list
            raise ValueError(f"{len(steps)} denoising steps: the model's sampler guides its steps "
                             f"{','.join(map(str, own.guided_steps))} of {len(own.denoising_steps)}; name the guided "
                             f"steps of the new list too (serve --guided-steps {len(steps) - 1}: the last one)")
        if opts.reference_start is None and own.reference_start >= len(steps):
            raise ValueError(f"{len(steps)} denoising steps: the model's sampler starts from the reference at step "
                             f"{own.reference_start}; name a start within the new list (serve --reference-start "
                             f"0..{len(steps) - 1}; 0: every step from noise)")
    if overrides:
        rt.sampler = dataclasses.replace(rt.sampler or SamplerConfig(), **overrides)
    if rt.text_guided:  # encoded now, so that sessions opened on other threads only read it
        rt.empty_prompt()
    if opts.stage_on_cpu:
        rt.target_device = device
    if device.type == "cpu":
        column_major_linears(rt.model)
        for module in rt.modules:
            if isinstance(module, ToyCodec):  # decoded every frame, and twice while the reference flow moves it
                channels_last_convs(module)
    if opts.compile:
        compile_blocks(rt.model)
    return rt


def _file_runtime(opts: RuntimeOptions, device: torch.device, dtype: torch.dtype) -> Runtime:
    """One checkpoint file, or the preset with random weights: hashing prompts, preview frames."""
    if opts.checkpoint or opts.taehv or opts.decoder in ("wan", "taehv"):
        raise ValueError("--checkpoint, --taehv and --decoder wan|taehv need --model to be a Wan2.1 model folder "
                         f"(official or diffusers layout){f'; {opts.model} is a file' if opts.model else ''}")
    if opts.decoder not in ("auto", "preview"):
        raise ValueError(f"unknown decoder {opts.decoder!r}; choose auto, wan, taehv or preview")
    if opts.model:
        from .checkpoints import load_model

        model = load_model(opts.model, config=opts.config, dtype=dtype, device=device)
        name, untrained = str(opts.model), False
    else:
        model, name, untrained = _random_model(opts, device, dtype), opts.preset, True
    model.attn_backend = opts.attn
    cfg = model.cfg
    stride = 4 if cfg.control is None else cfg.control.frames_per_latent
    height, width, latent_shape = _video_size(opts, cfg, SPATIAL_STRIDE)
    chunk = _checked_chunk(opts, cfg)

    def make_decoder() -> PreviewDecoder:
        return PreviewDecoder(cfg.in_dim, temporal_stride=stride, spatial_stride=SPATIAL_STRIDE)

    return Runtime(model=model, name=name, untrained=untrained, latent_shape=latent_shape, video_shape=(height, width),
                   fps=opts.fps, sink_frames=opts.sink_frames, window_frames=opts.window_frames,
                   chunk_latents=chunk, make_decoder=make_decoder,
                   embed_prompt=HashingPromptEmbedder(cfg.text_len, cfg.text_dim),
                   encode_start=preview_encoder(make_decoder(), latent_shape), schema=_schema(cfg, stride))


def _folder_runtime(opts: RuntimeOptions, device: torch.device, load_device: torch.device,
                    dtype: torch.dtype) -> Runtime:
    """A Wan2.1 folder (+ Self-Forcing .pt): the DiT, UMT5, the chosen decoder and the Wan VAE encoder. Every missing
    file is named before anything heavy is read. ``load_device`` is the CPU when staging (UMT5 then rests on the CPU
    and visits ``device`` only to encode)."""
    from .model.attention import select_backend
    from .pipeline.folders import find_model_folder

    kind = "wan" if opts.decoder == "auto" else opts.decoder
    if kind not in DECODER_TYPES:
        raise ValueError(f"decoder {opts.decoder!r} does not serve a model folder; choose wan or taehv")
    if opts.config:
        raise ValueError("--config is for a single checkpoint file; a model folder carries its architecture")
    folder = find_model_folder(opts.model, checkpoint=opts.checkpoint, taehv=opts.taehv)
    folder.require(kind)
    select_backend(opts.attn, device, dtype, masked=False)  # an unusable backend fails before loading
    model = load_dit(folder, use_ema=opts.use_ema, dtype=dtype, device=load_device)
    model.attn_backend = opts.attn
    cfg = model.cfg
    height, width, latent_shape = _video_size(opts, cfg, DECODER_TYPES[kind].spatial_stride)
    chunk = _checked_chunk(opts, cfg)
    decoder = load_decoder(folder, kind, dtype=dtype, device=load_device)  # weights shared by every session's decoder
    channels = decoder.latent_channels
    if channels != cfg.out_dim:
        raise ValueError(f"{folder[kind].path}: the {kind} decoder takes {channels}-channel latents but the DiT "
                         f"makes {cfg.out_dim}")
    text = load_text_encoder(folder["text_encoder"].path, folder["tokenizer"].path, cfg, device,
                             offload=opts.offload_text_encoder or load_device != device)
    vae = decoder if kind == "wan" else (load_decoder(folder, "wan", dtype=dtype, device=load_device)
                                         if folder["vae"].present else None)
    stride = DECODER_TYPES[kind].temporal_stride
    weights = decoder.vae if kind == "wan" else decoder.model

    def make_decoder():
        return type(decoder)(weights)

    ckpt = folder.parts.get("checkpoint")
    source = {"folder": str(folder.root), "layout": folder.layout, "checkpoint": ckpt and str(ckpt.path)}
    name = folder.root.name + (f" + {ckpt.path.name}" if ckpt else "")
    modules = [weights] + ([vae.vae] if vae is not None and vae is not decoder else [])
    return Runtime(model=model, name=name, untrained=False, latent_shape=latent_shape, video_shape=(height, width),
                   fps=opts.fps, sink_frames=opts.sink_frames, window_frames=opts.window_frames, chunk_latents=chunk,
                   make_decoder=make_decoder, embed_prompt=text,
                   encode_start=codec_encoder(vae, device, dtype) if vae else None,
                   schema=_schema(cfg, stride), decoder_name=kind, text_encoder_name="umt5", source=source,
                   modules=modules)


def _package_runtime(opts: RuntimeOptions, target: torch.device, device: torch.device, dtype: torch.dtype) -> Runtime:
    """A worldsim model package (worldsim/model_package.py): its DiT, codec, text encoder, sampler and cache
    defaults, loaded on ``device`` (the CPU when staging) for ``target``. Every mismatch between the manifest and the
    weights is named before serving."""
    from .checkpoints import load_model

    pkg = read_package(opts.model)
    where = str(pkg.root / "worldsim-model.json")
    if opts.checkpoint or opts.taehv or opts.decoder not in ("auto",) or opts.config:
        raise ValueError("a model package names its own weights, codec and text encoder: --checkpoint, --taehv, "
                         "--decoder and --config do not apply")
    geo, cache = pkg.geometry, pkg.cache
    opts = _with_defaults(opts, fps=float(geo["fps"]), sink_frames=cache.get("sink_frames", 3),
                          window_frames=cache.get("window_frames", 12))
    model = load_model(pkg.dit, dtype=dtype, device=device)
    model.attn_backend = opts.attn
    cfg = model.cfg
    text = pkg.text_encoder
    if text["kind"] == "hashing":
        if (text["text_len"], text["text_dim"]) != (cfg.text_len, cfg.text_dim):
            raise PackageError(f"{where}: text_encoder is {text['text_len']} x {text['text_dim']} but the DiT "
                               f"({pkg.dit.name}) takes {cfg.text_len} x {cfg.text_dim}")
        embed = HashingPromptEmbedder(cfg.text_len, cfg.text_dim)
    else:
        embed = load_text_encoder(pkg.file(text["path"]), pkg.file(text["tokenizer"]), cfg, target,
                                  opts.offload_text_encoder or device != target)
    kind, spatial, temporal = pkg.codec["kind"], geo["spatial_stride"], geo["temporal_stride"]
    if geo["latent_shape"][0] != cfg.in_dim:
        raise PackageError(f"{where}: geometry latent_shape has {geo['latent_shape'][0]} channels but the DiT "
                           f"({pkg.dit.name}) takes {cfg.in_dim}")
    if cfg.control is not None and cfg.control.frames_per_latent != temporal:
        raise PackageError(f"{where}: geometry temporal_stride {temporal} but the DiT's controls have "
                           f"{cfg.control.frames_per_latent} frames per latent")
    if kind == "toy":
        codec = ToyCodec.load(pkg.file(pkg.codec["path"]), device=device).to(dtype)
        facts, weights = (codec.cfg.latent_channels, codec.spatial_stride, codec.temporal_stride), codec
    elif kind == "wan_vae":
        codec = WanVAEDecoder(load_wan_vae(pkg.file(pkg.codec["path"]), dtype=dtype, device=device))
        facts, weights = (codec.latent_channels, codec.spatial_stride, codec.temporal_stride), codec.vae
    else:
        codec, facts, weights = None, (cfg.in_dim, SPATIAL_STRIDE, temporal), None
    if facts != (cfg.in_dim, spatial, temporal):
        raise PackageError(f"{where}: the {kind} codec has {facts[0]} latent channels, spatial stride {facts[1]} and "
                           f"temporal stride {facts[2]}; the manifest and DiT say {cfg.in_dim}, {spatial}, {temporal}")
    height, width, latent_shape = _video_size(dataclasses.replace(opts, height=opts.height or geo["height"],
                                                                  width=opts.width or geo["width"]), cfg, spatial)
    chunk = _checked_chunk(opts, cfg)
    if kind == "toy":
        make_decoder = lambda: codec  # noqa: E731 - per-frame: no state between chunks, one module serves all
    elif kind == "wan_vae":
        make_decoder = lambda: WanVAEDecoder(codec.vae)  # noqa: E731 - own causal cache per session
    else:
        make_decoder = lambda: PreviewDecoder(cfg.in_dim, temporal_stride=temporal, spatial_stride=spatial)  # noqa: E731

    modules, move_reference = [weights] if weights is not None else [], None
    if pkg.reference_flow is not None and opts.reference_flow:
        flow = _reference_flow(pkg, cfg, device, where)
        modules.append(flow)
        move_reference = lambda last, controls: flow.move_latents(last, controls, codec)  # noqa: E731
    prov = pkg.provenance
    return Runtime(model=model, name=prov.get("name") or pkg.root.name, untrained=bool(prov.get("untrained", False)),
                   latent_shape=latent_shape, video_shape=(height, width), fps=opts.fps, sink_frames=opts.sink_frames,
                   window_frames=opts.window_frames, chunk_latents=chunk, make_decoder=make_decoder,
                   embed_prompt=embed, encode_start=codec_encoder(codec, target, dtype) if codec is not None else
                   preview_encoder(make_decoder(), latent_shape), schema=_schema(cfg, temporal), decoder_name=kind,
                   text_encoder_name=text["kind"], sampler=pkg.sampler(),
                   source={"package": str(pkg.root), "provenance": prov,
                           "reference_flow": move_reference is not None},
                   modules=modules, move_reference=move_reference,
                   start_frames=_start_frames(pkg, height, width, where))


def _start_frames(pkg, height: int, width: int, where: str) -> dict[str, np.ndarray]:
    """The package's start frames (``starts``), each read as RGB and fitted to the video size."""
    frames = {}
    for prompt, path in pkg.starts.items():
        try:
            with Image.open(path) as image:
                frames[prompt] = fit(np.asarray(image.convert("RGB")), height, width)
        except (OSError, ValueError) as e:
            raise PackageError(f"{where}: 'starts' image {path} for {prompt!r:.80} is not readable: {e}") from None
    return frames


def _reference_flow(pkg, cfg: DiTConfig, device: torch.device, where: str):
    """The package's reference flow (float32, on ``device``), checked against its DiT."""
    from .checkpoints.base import CheckpointError
    from .model.reference_flow import ReferenceFlow

    if not cfg.frame_reference:
        raise PackageError(f"{where}: a reference_flow moves the DiT's reference frame, but {pkg.dit.name} takes none")
    try:
        flow = ReferenceFlow.load(pkg.reference_flow).to(device)
    except CheckpointError as err:
        raise PackageError(f"{where}: reference_flow: {err}") from None
    if not flow.reads_controls_of(cfg.control):
        raise PackageError(f"{where}: the reference flow reads controls {flow.control.keys} + {flow.control.axes} + "
                           f"{flow.control.embedding_dim}-d embedding; the DiT {pkg.dit.name} reads "
                           f"{None if cfg.control is None else (cfg.control.keys, cfg.control.axes)}")
    return flow



def describe(backend: Runtime) -> dict:
    """Model facts for ``welcome`` and the start-up log."""
    cfg = backend.model.cfg
    return {"name": backend.name, "untrained": backend.untrained, "decoder": backend.decoder_name,
            "dim": cfg.dim, "layers": cfg.num_layers, "device": str(backend.device),
            "dtype": str(backend.dtype).removeprefix("torch."), "text_encoder": backend.text_encoder_name,
            "sink_frames": backend.sink_frames, "window_frames": backend.window_frames,
            "starts": list(backend.start_frames), **backend.source}

