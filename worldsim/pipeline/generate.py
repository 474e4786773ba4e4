"""Text-to-video generation from a model folder: prompts -> UMT5 -> streaming DiT -> streaming decoder -> mp4.

The video is produced chunk by chunk (``chunk_frames`` latent frames each, 12 video frames with the defaults) with a
rolling KV cache, so any length runs in constant memory; each chunk is decoded and muxed as soon as it is made.
A prompt schedule switches the prompt at chunk boundaries. All prompts are encoded before the DiT moves to the GPU,
then the text encoder is released, so the GPU never holds both (peak memory is the larger of the two, not the sum).

    result = generate(GenerateConfig(model="wan_models/Wan2.1-T2V-1.3B", checkpoint="checkpoints/self_forcing_dmd.pt",
                                     prompt="a red fox running through snow", seconds=10, out="fox.mp4"))
"""

from __future__ import annotations

import gc
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoints import load_model
from ..codecs.base import StreamingDecoder, frames_for_chunk, to_uint8
from ..codecs.taehv import TAEHVStreamingDecoder, load_taehv
from ..codecs.wan_vae import WanVAEDecoder, load_wan_vae
from ..model.attention import select_backend
from ..model.config import DiTConfig
from ..model.dit import CausalWanDiT
from ..sampling.session import StreamingSession
from .folders import ModelFolder, find_model_folder
from .runtime import compile_blocks, resolve_device, resolve_dtype, text_encoder_dtype
from .schedule import PromptSchedule, load_schedule

log = logging.getLogger(__name__)

DECODER_TYPES = {"wan": WanVAEDecoder, "taehv": TAEHVStreamingDecoder}
DECODERS = tuple(DECODER_TYPES)


@dataclass
class GenerateConfig:
    """Everything ``worldsim generate`` takes. Length: ``chunks`` if given, else ``seconds`` rounded up to whole
    chunks (5 s at 16 fps -> 7 chunks -> 81 frames, as Self Forcing makes)."""

    model: Path
    prompt: str | None = None
    out: Path = Path("video.mp4")
    seconds: float = 5.0
    chunks: int | None = None
    seed: int = 0
    schedule: Path | None = None
    schedule_index: int = 0  # line of a LongLive schedule file
    switch_frames: Sequence[int] | None = None  # LongLive switch indices (latent frames) when the file has none
    switch_mode: str = "recache"  # default for switches that name no mode
    checkpoint: Path | None = None  # Self-Forcing .pt replacing the folder's DiT weights
    use_ema: bool = True
    decoder: str = "wan"
    taehv: Path | None = None
    height: int = 480
    width: int = 832
    fps: int = 16
    window_frames: int = 21
    sink_frames: int = 0
    device: str = "auto"
    dtype: str = "auto"
    attn: str = "auto"
    compile: bool = False
    offload_text_encoder: bool = False
    crf: int = 18
    progress: bool = True


@dataclass
class GenerateResult:
    path: Path
    frames: int
    chunks: int
    width: int
    height: int
    fps: int
    load_s: float  # loading weights and encoding prompts
    stream_s: float  # generating, decoding and writing every chunk
    first_frame_s: float  # from the start of streaming until the first chunk's frames were written
    switch_chunks: list[int] = field(default_factory=list)  # chunks that started with a new prompt

    @property
    def realtime_fps(self) -> float:
        return self.frames / self.stream_s if self.stream_s > 0 else float("inf")


def plan_chunks(seconds: float, fps: float, chunk_frames: int, temporal_stride: int) -> int:
    """Fewest chunks whose frames cover ``seconds`` of video."""
    if not seconds > 0:
        raise ValueError(f"--seconds must be > 0, got {seconds}")
    needed, chunks, frames = math.ceil(seconds * fps - 1e-9), 0, 0
    while frames < needed:
        frames += frames_for_chunk(chunk_frames, temporal_stride, first=chunks == 0)
        chunks += 1
    return max(chunks, 1)


def build_schedule(cfg: GenerateConfig, chunk_frames: int, temporal_stride: int) -> PromptSchedule:
    if cfg.schedule is not None:
        return load_schedule(cfg.schedule, chunk_frames=chunk_frames, fps=cfg.fps, temporal_stride=temporal_stride,
                             first_prompt=cfg.prompt, default_mode=cfg.switch_mode, index=cfg.schedule_index,
                             switch_frames=cfg.switch_frames)
    if not cfg.prompt or not cfg.prompt.strip():
        raise ValueError("give a --prompt or a --schedule")
    return PromptSchedule.single(cfg.prompt)


def load_dit(folder: ModelFolder, *, use_ema: bool, dtype: torch.dtype, device: torch.device) -> CausalWanDiT:
    """The folder's DiT, or its architecture with a Self-Forcing checkpoint's weights when one is given."""
    dit = folder["dit"].path
    if "checkpoint" in folder.parts:
        return load_model(folder["checkpoint"].path, config=dit, use_ema=use_ema, dtype=dtype, device=device)
    log.warning("no --checkpoint: using the base Wan2.1 weights, which were not trained for few-step causal "
                "sampling; expect noise. Pass the Self-Forcing checkpoint (checkpoints/self_forcing_dmd.pt).")
    return load_model(dit, dtype=dtype, device=device)


def load_text_encoder(encoder: Path, tokenizer: Path, dit_cfg: DiTConfig, device: torch.device, offload: bool):
    """UMT5 (Wan's .pth or a text_encoder/ folder) as a cached prompt encoder for this DiT (offload: kept on the CPU
    between prompts)."""
    from ..text.umt5 import UMT5TextEncoder, load_tokenizer, load_umt5_encoder

    model = load_umt5_encoder(encoder, dtype=text_encoder_dtype(device), device="cpu" if offload else device)
    text = UMT5TextEncoder(model, load_tokenizer(tokenizer), text_len=dit_cfg.text_len, device=device,
                           offload=offload)
    if text.dim != dit_cfg.text_dim:
        raise ValueError(f"{encoder}: the text encoder gives {text.dim}-dim embeddings but the DiT takes "
                         f"{dit_cfg.text_dim}")
    return text


def folder_text_encoder(folder: ModelFolder, dit_cfg: DiTConfig, device: torch.device, offload: bool):
    return load_text_encoder(folder["text_encoder"].path, folder["tokenizer"].path, dit_cfg, device, offload)


def encode_prompts(folder: ModelFolder, prompts: Sequence[str], dit_cfg: DiTConfig, device: torch.device,
                   offload: bool) -> dict[str, torch.Tensor]:
    """prompt -> [1, text_len, text_dim] on ``device``; the encoder is freed afterwards."""
    encoder = folder_text_encoder(folder, dit_cfg, device, offload)
    embeds = encoder.encode(list(prompts))
    del encoder
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {p: e[None] for p, e in zip(prompts, embeds)}


def latent_shape_for(dit_cfg: DiTConfig, spatial_stride: int, height: int, width: int) -> tuple[int, int, int]:
    """(C, H, W) of one latent frame for a video size; ValueError unless the size fits the decoder and patch grid."""
    s = spatial_stride * dit_cfg.patch_size[1]
    if height % s or width % s or height <= 0 or width <= 0:
        raise ValueError(f"video size {width}x{height} must be a positive multiple of {s} (decoder {spatial_stride}x, "
                         f"patch {dit_cfg.patch_size[1]}x)")
    return dit_cfg.in_dim, height // spatial_stride, width // spatial_stride


def load_decoder(folder: ModelFolder, kind: str, *, dtype: torch.dtype, device: torch.device) -> StreamingDecoder:
    if kind == "wan":
        return WanVAEDecoder(load_wan_vae(folder["vae"].path, dtype=dtype, device=device))
    if kind == "taehv":
        return TAEHVStreamingDecoder(load_taehv(folder["taehv"].path, dtype=dtype, device=device))
    raise ValueError(f"unknown decoder {kind!r}; choose one of {DECODERS}")


def generate(cfg: GenerateConfig) -> GenerateResult:
    """Load the folder's models, stream the video into ``cfg.out`` and report what was made."""
    if cfg.decoder not in DECODERS:
        raise ValueError(f"unknown decoder {cfg.decoder!r}; choose one of {DECODERS}")
    t0 = time.perf_counter()
    folder = find_model_folder(cfg.model, checkpoint=cfg.checkpoint, taehv=cfg.taehv)
    folder.require(cfg.decoder)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    select_backend(cfg.attn, device, dtype, masked=False)  # an unusable backend fails here, not after loading
    # The DiT waits in CPU RAM while UMT5 encodes, so the GPU never holds both (UMT5-XXL is ~11 GiB in bf16).
    model = load_dit(folder, use_ema=cfg.use_ema, dtype=dtype, device=torch.device("cpu"))
    decoder_type = DECODER_TYPES[cfg.decoder]
    latent_shape_for(model.cfg, decoder_type.spatial_stride, cfg.height, cfg.width)  # fail before loading UMT5
    stride = decoder_type.temporal_stride
    schedule = build_schedule(cfg, model.cfg.chunk_frames, stride)
    chunks = cfg.chunks if cfg.chunks is not None else plan_chunks(cfg.seconds, cfg.fps, model.cfg.chunk_frames,
                                                                   stride)
    if chunks < 1:
        raise ValueError(f"--chunks must be >= 1, got {chunks}")
    if schedule.last_chunk >= chunks:
        raise ValueError(f"the schedule switches prompt at chunk {schedule.last_chunk} but the video has {chunks} "
                         f"chunk(s); make it longer (--seconds / --chunks)")
    embeds = encode_prompts(folder, schedule.prompts, model.cfg, device, cfg.offload_text_encoder)
    model.to(device)
    decoder = load_decoder(folder, cfg.decoder, dtype=dtype, device=device)
    model.attn_backend = cfg.attn
    if cfg.compile:
        compile_blocks(model)
    load_s = time.perf_counter() - t0
    return stream_video(model, decoder, embeds, schedule, chunks, cfg, load_s)


def stream_video(model: CausalWanDiT, decoder: StreamingDecoder, embeds: dict[str, torch.Tensor],
                 schedule: PromptSchedule, chunks: int, cfg: GenerateConfig, load_s: float = 0.0) -> GenerateResult:
    """Generate ``chunks`` chunks, switching prompts per ``schedule``, decoding and writing each as it is made."""
    from .video import Mp4Writer

    latent_shape = latent_shape_for(model.cfg, decoder.spatial_stride, cfg.height, cfg.width)
    channels = getattr(decoder, "latent_channels", model.cfg.out_dim)
    if channels != model.cfg.out_dim:
        raise ValueError(f"the decoder takes {channels}-channel latents but the DiT makes {model.cfg.out_dim}")
    t0 = time.perf_counter()
    session = StreamingSession(model, embeds[schedule.switches[0].prompt], latent_shape=latent_shape, seed=cfg.seed,
                               sink_frames=cfg.sink_frames, window_frames=cfg.window_frames)
    decoder.reset()
    first_frame_s, switched = 0.0, []
    with Mp4Writer(cfg.out, cfg.width, cfg.height, fps=cfg.fps, crf=cfg.crf) as writer, \
            tqdm(total=chunks, unit="chunk", desc="generating", disable=not cfg.progress) as bar:
        for k in range(chunks):
            switch = schedule.switch_at(k)
            if switch is not None and k > 0:
                session.set_prompt(embeds[switch.prompt], mode=switch.mode)
                switched.append(k)
            writer.write(to_uint8(decoder.decode(session.step())[0]))  # to_uint8 copies to the CPU: synchronises
            if k == 0:
                first_frame_s = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(frames=writer.frames, fps=f"{writer.frames / (time.perf_counter() - t0):.2f}")
    return GenerateResult(Path(cfg.out), writer.frames, chunks, cfg.width, cfg.height, cfg.fps, load_s,
                          time.perf_counter() - t0, first_frame_s, switched)
