"""Text-to-video generation from a model source: prompts -> text encoder -> streaming DiT -> streaming decoder -> mp4.

The model comes from :mod:`worldsim.runtime` (a Wan2.1 folder with UMT5 + Wan VAE/TAEHV, a worldsim model package,
or a checkpoint file), exactly as ``worldsim serve`` loads it. The video is produced chunk by chunk with a rolling KV
cache, so any length runs in constant memory; each chunk is decoded and muxed as soon as it is made. A prompt
schedule switches the prompt at chunk boundaries. All prompts are encoded while the DiT and decoder still wait in
CPU RAM, then the text encoder is released and they move to the GPU, so the GPU never holds both (peak memory is
the larger of the two, not the sum).

    result = generate(GenerateConfig(model="wan_models/Wan2.1-T2V-1.3B", checkpoint="checkpoints/self_forcing_dmd.pt",
                                     prompt="a red fox running through snow", seconds=10, out="fox.mp4"))
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from ..codecs.base import frames_for_chunk, to_uint8
from ..model_package import is_package
from ..runtime import DECODERS, Runtime, RuntimeOptions, build_runtime
from .schedule import PromptSchedule, load_schedule


@dataclass
class GenerateConfig:
    """Everything ``worldsim generate`` takes. Length: ``chunks`` if given, else ``seconds`` rounded up to whole
    chunks (5 s at 16 fps -> 7 chunks -> 81 frames, as Self Forcing makes). Video size, fps and cache default to
    the source's (a package's own; for a Wan2.1 folder 832x480 at 16 fps with a 21-frame window)."""

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
    decoder: str = "auto"  # wan | taehv for a folder (auto: wan); a package brings its own codec
    taehv: Path | None = None
    height: int | None = None
    width: int | None = None
    fps: float | None = None
    window_frames: int | None = None  # default: a package's, else 21
    sink_frames: int | None = None  # default: a package's, else 0
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
    fps: float
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


def build_schedule(cfg: GenerateConfig, chunk_frames: int, temporal_stride: int, fps: float) -> PromptSchedule:
    if cfg.schedule is not None:
        return load_schedule(cfg.schedule, chunk_frames=chunk_frames, fps=fps, temporal_stride=temporal_stride,
                             first_prompt=cfg.prompt, default_mode=cfg.switch_mode, index=cfg.schedule_index,
                             switch_frames=cfg.switch_frames)
    if not cfg.prompt or not cfg.prompt.strip():
        raise ValueError("give a --prompt or a --schedule")
    return PromptSchedule.single(cfg.prompt)


def runtime_options(cfg: GenerateConfig) -> RuntimeOptions:
    """The runtime a generate run loads: staged in CPU RAM; without a package's own cache settings, Self Forcing's
    (a 21-frame window, no sink) rather than the daemon's interactive ones."""
    own = is_package(cfg.model)
    return RuntimeOptions(
        model=str(cfg.model), checkpoint=cfg.checkpoint and str(cfg.checkpoint), use_ema=cfg.use_ema,
        decoder=cfg.decoder, taehv=cfg.taehv and str(cfg.taehv), height=cfg.height, width=cfg.width, fps=cfg.fps,
        window_frames=cfg.window_frames if cfg.window_frames is not None or own else 21,
        sink_frames=cfg.sink_frames if cfg.sink_frames is not None or own else 0,
        device=cfg.device, dtype=cfg.dtype, attn=cfg.attn, compile=cfg.compile,
        offload_text_encoder=cfg.offload_text_encoder, stage_on_cpu=True)


def generate(cfg: GenerateConfig) -> GenerateResult:
    """Load the source's models, stream the video into ``cfg.out`` and report what was made."""
    if cfg.decoder not in ("auto", *DECODERS):
        raise ValueError(f"unknown decoder {cfg.decoder!r}; choose one of {DECODERS}")
    t0 = time.perf_counter()
    runtime = build_runtime(runtime_options(cfg))
    stride = runtime.temporal_stride
    schedule = build_schedule(cfg, runtime.chunk_latents, stride, runtime.fps)
    chunks = cfg.chunks if cfg.chunks is not None else plan_chunks(cfg.seconds, runtime.fps, runtime.chunk_latents,
                                                                   stride)
    if chunks < 1:
        raise ValueError(f"--chunks must be >= 1, got {chunks}")
    if schedule.last_chunk >= chunks:
        raise ValueError(f"the schedule switches prompt at chunk {schedule.last_chunk} but the video has {chunks} "
                         f"chunk(s); make it longer (--seconds / --chunks)")
    embeds = runtime.encode_prompts(schedule.prompts)
    runtime.release_text_encoder()
    runtime.to_device()
    load_s = time.perf_counter() - t0
    return stream_video(runtime, embeds, schedule, chunks, cfg, load_s)


def stream_video(runtime: Runtime, embeds: dict[str, torch.Tensor], schedule: PromptSchedule, chunks: int,
                 cfg: GenerateConfig, load_s: float = 0.0) -> GenerateResult:
    """Generate ``chunks`` chunks, switching prompts per ``schedule``, decoding and writing each as it is made."""
    from .video import Mp4Writer

    height, width = runtime.video_shape
    fps = runtime.fps
    t0 = time.perf_counter()
    session = runtime.new_session(embeds[schedule.switches[0].prompt], seed=cfg.seed)
    decoder = runtime.make_decoder()
    decoder.reset()
    first_frame_s, switched = 0.0, []
    with Mp4Writer(cfg.out, width, height, fps=fps, crf=cfg.crf) as writer, \
            tqdm(total=chunks, unit="chunk", desc="generating", disable=not cfg.progress) as bar, \
            torch.inference_mode():  # frames are only written out: no autograd bookkeeping per op
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
    return GenerateResult(Path(cfg.out), writer.frames, chunks, width, height, fps, load_s,
                          time.perf_counter() - t0, first_frame_s, switched)
