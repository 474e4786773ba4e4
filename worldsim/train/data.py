"""Training data: episodes (docs/DATASET.md) cut into clips, with codec latents and text embeddings cached on disk.

A clip is ``clip_chunks * chunk_frames`` consecutive latent frames starting at a multiple of ``chunk_frames`` in
its episode, with

- latents [C, F, h, w] (the DiT's layout) from the codec, cached per episode in
  ``DIR/.cache/latents-<codec identity>/`` (the identity hashes the codec file, so a retrained codec recomputes);
- controls grouped per latent frame: with k = ``frames_per_latent``, latent frame l takes the controls of video
  frames k*l-k+1 ... k*l (docs/DATASET.md; for a per-frame codec, k = 1, just frame l); frames before 0 are absent;
- one prompt per chunk, the one in effect at the chunk's first video frame (prompts switch at chunk boundaries),
  embedded once per distinct text and cached in ``DIR/.cache/text-<encoder identity>.safetensors``.

Frame stages (the codec, the reference flow) get clips of ``clip_frames`` video frames instead, with each video
frame's control row (frame t: the row that led into it). Batches are a pure function of
(seed, step, rank), so a resumed run sees exactly the batches an uninterrupted one would. An episode that cannot be
read is skipped with a warning naming it and the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoints.base import CheckpointError
from ..checkpoints.safetensors_io import read_metadata, read_tensors, save_tensors
from ..codecs.toy_codec import ToyCodec
from ..dataset import Episode, episode_dirs, load_episode, read_info
from ..model.config import ControlConfig
from ..model.control import Controls

log = logging.getLogger(__name__)
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError)


@dataclass
class DataInfo:
    """Facts about the data a stage builds its models for."""

    control: ControlConfig | None  # the dataset's control schema (None: it records no controls)
    height: int
    width: int
    fps: float
    latent_shape: tuple[int, int, int] | None = None  # (C, h, w) of codec latents; None for frame stages
    codec: Any = None  # ToyCodec or WanVAEDecoder (load_codec): encodes the episodes, decodes sample strips
    text_encoder: Any = None  # HashingPromptEmbedder or UMT5TextEncoder: prompt -> [1, L, D], with an identity


@dataclass
class LatentBatch:
    latents: torch.Tensor  # [B, C, F, h, w] float32, normalised codec latents
    text: torch.Tensor  # [B, n_chunks, L, D] float32, the prompt embedding of each chunk
    controls: Controls  # keys [B, F, k, K], axes [B, F, k, A], embedding [B, F, k, D_e] or None; present [B, F]
    prompts: list[list[str]]  # [B][n_chunks] prompt texts

    def frames(self, start: int, stop: int, chunk_frames: int) -> "LatentBatch":
        """Latent frames ``start:stop`` of the clips (whole chunks), with their prompts and controls."""
        if start % chunk_frames or stop % chunk_frames or not 0 <= start < stop <= self.latents.shape[2]:
            raise ValueError(f"frames {start}:{stop} are not whole chunks of {chunk_frames} within the clip "
                             f"({self.latents.shape[2]} frames)")
        a, b = start // chunk_frames, stop // chunk_frames
        return LatentBatch(self.latents[:, :, start:stop], self.text[:, a:b], self.controls.slice_frames(start, stop),
                           [p[a:b] for p in self.prompts])

    def to(self, device) -> "LatentBatch":
        return LatentBatch(self.latents.to(device), self.text.to(device), self.controls.to(device), self.prompts)


@dataclass
class FrameBatch:
    frames: torch.Tensor  # [B, T, 3, H, W] float32 in [0, 1]
    controls: Controls | None = None  # per video frame (k = 1): keys [B, T, 1, K], ...; None: the data has none

    def to(self, device) -> "FrameBatch":
        return FrameBatch(self.frames.to(device), None if self.controls is None else self.controls.to(device))


def file_identity(path: str | Path) -> str:
    """Short content hash of a weights file (or of every file in a weights folder): the cache key of everything
    computed with it."""
    path, h = Path(path), hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        h.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def load_codec(path: str | Path):
    """The codec of a latent dataset: the Wan2.1 VAE for ``Wan2.1_VAE.pth`` or a diffusers ``vae/`` folder (4 video
    frames per latent, the published models' latent space), else worldsim's toy codec (``worldsim train codec``).
    Both encode [1, T, 3, H, W] frames in [0, 1] to normalised latents and decode them back."""
    path = Path(path)
    if path.is_dir() or path.suffix == ".pth":
        from ..codecs.wan_vae import WanVAEDecoder, load_wan_vae

        return WanVAEDecoder(load_wan_vae(path))
    return ToyCodec.load(path)


def _text_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def read_episodes(root: Path) -> list[tuple[str, Episode]]:
    """Every readable episode of ``root`` as (name, episode); unreadable ones are skipped with a warning."""
    info = read_info(root)
    out = []
    for d in episode_dirs(root):
        try:
            ep = load_episode(d)
            n = len(ep.frames)
            if ep.frames.shape[1:] != (info["height"], info["width"], 3):
                raise ValueError(f"frames are {list(ep.frames.shape[1:])}, dataset.json says "
                                 f"{[info['height'], info['width'], 3]}")
            for name in ("keys", "axes", "control_present"):
                if len(getattr(ep, name)) != n:
                    raise ValueError(f"{name} has {len(getattr(ep, name))} rows for {n} frames")
        except UNREADABLE as err:
            log.warning("skipping episode %s: %s: %s", d, type(err).__name__, err)
            continue
        out.append((d.name, ep))
    return out


class TrainData:
    """Clips of one dataset directory, split into train and validation episodes (the last ``val_episodes``)."""

    def __init__(self, root: str | Path, *, kind: str, batch_size: int, seed: int, val_episodes: int = 1,
                 clip_frames: int = 8, chunk_frames: int = 3, clip_chunks: int = 2,
                 codec_path: str | Path | None = None, text_encoder: Any = None):
        if kind not in ("latents", "frames"):
            raise ValueError(f"data kind must be 'latents' or 'frames', got {kind!r}")
        self.root, self.kind, self.batch_size, self.seed = Path(root), kind, batch_size, seed
        info = read_info(self.root)
        c = info["control"]
        control = ControlConfig(**c) if (c["keys"] or c["axes"] or c["embedding_dim"]) else None
        self.info = DataInfo(control, info["height"], info["width"], float(info["fps"]), text_encoder=text_encoder)
        self.k = int(c["frames_per_latent"])
        episodes = read_episodes(self.root)
        if not episodes:
            raise ValueError(f"{self.root}: no readable episodes")
        n_val = min(val_episodes, len(episodes) - 1)
        if n_val < val_episodes:
            log.warning("%s has %d episode(s): %d held out for validation", self.root, len(episodes), n_val)
        if kind == "frames":
            self.clip_len, self.stride = clip_frames, clip_frames
            self.tracks = [self._frame_track(ep) for _, ep in episodes]
        else:
            if codec_path is None or text_encoder is None:
                raise ValueError("latent data needs a codec (data.codec) and a text encoder")
            self.info.codec = load_codec(codec_path)
            if self.info.codec.temporal_stride != self.k:
                raise ValueError(f"codec temporal stride {self.info.codec.temporal_stride} != the dataset's "
                                 f"frames_per_latent {self.k}")
            self.clip_len, self.stride, self.chunk_frames = clip_chunks * chunk_frames, chunk_frames, chunk_frames
            latent_dir = self.root / ".cache" / f"latents-{file_identity(codec_path)}"
            self.texts = self._text_table([ep for _, ep in episodes])
            self.tracks = [self._latent_track(name, ep, latent_dir) for name, ep in episodes]
            self.info.latent_shape = tuple(self.tracks[0]["latents"].shape[1:])  # type: ignore[assignment]
        split = len(self.tracks) - n_val
        self.train_clips = self._clips(range(split))
        self.val_clips = self._clips(range(split, len(self.tracks)))
        if not self.train_clips:
            raise ValueError(f"{self.root}: no episode is long enough for a clip of {self.clip_len} "
                             f"{'video' if kind == 'frames' else 'latent'} frames")
        self._perms: dict[int, torch.Tensor] = {}

    # ---- per-episode tracks --------------------------------------------------------------------------------
    def _frame_track(self, ep: Episode) -> dict:
        return {"frames": torch.from_numpy(ep.frames).permute(0, 3, 1, 2).contiguous(), "length": len(ep.frames),
                **self._controls(ep, len(ep.frames), k=1)}

    @torch.no_grad()
    def _latent_track(self, name: str, ep: Episode, cache_dir: Path) -> dict:
        path = cache_dir / f"{name}.safetensors"
        stamp = json.dumps({"frames": int(ep.meta.get("frames", len(ep.frames))), "shards": ep.meta.get("shards")})
        latents = None
        if path.is_file():
            try:
                if read_metadata(path).get("episode") == stamp:
                    latents = read_tensors(path)["latents"]
            except CheckpointError as err:
                log.warning("recomputing the latent cache %s: %s", path, err)
        if latents is None:
            codec, frames = self.info.codec, torch.from_numpy(ep.frames).permute(0, 3, 1, 2).float() / 255
            if self.k == 1:  # a per-frame codec: any split will do
                parts = [codec.encode(frames[i:i + 64][None])[0] for i in range(0, len(frames), 64)]  # [C, n, h, w]
            else:  # a causal video codec: the whole episode in one pass, cut to 1 + k*n frames
                parts = [codec.encode(frames[:1 + self.k * ((len(frames) - 1) // self.k)][None])[0]]
            latents = torch.cat(parts, dim=1).transpose(0, 1).contiguous()  # [N_lat, C, h, w]
            try:
                save_tensors({"latents": latents}, path, {"episode": stamp})
            except OSError as err:
                log.warning("cannot write the latent cache %s (%s); keeping it in memory", path, err)
        return {"latents": latents, "length": len(latents), **self._controls(ep, len(latents)),
                "prompt_at": self._prompt_index(ep, len(latents))}

    def _controls(self, ep: Episode, n_lat: int, k: int | None = None) -> dict:
        """Per-latent-frame control groups: video frames k*l-k+1 ... k*l (negative indices: absent); k defaults to
        the dataset's frames_per_latent (1: one group per video frame)."""
        k = k or self.k
        idx = np.arange(n_lat)[:, None] * k - k + 1 + np.arange(k)[None, :]  # [N_lat, k]
        valid = (idx >= 0) & (idx < len(ep.frames))
        safe = np.clip(idx, 0, len(ep.frames) - 1)
        present = ep.control_present[safe] & valid  # [N_lat, k]

        def grouped(a: np.ndarray | None) -> torch.Tensor | None:
            if a is None or a.shape[1] == 0:
                return None
            return torch.from_numpy(np.where(present[..., None], a[safe], 0).astype(np.float32))  # [N_lat, k, n]

        return {"keys": grouped(ep.keys), "axes": grouped(ep.axes), "embedding": grouped(ep.embedding),
                "present": torch.from_numpy(present.any(axis=1))}

    def _prompt_index(self, ep: Episode, n_lat: int) -> list[str]:
        """The prompt in effect at each latent frame's first video frame ("" before any prompt)."""
        first = np.maximum(np.arange(n_lat) * self.k - self.k + 1, 0)
        starts = [p["from_frame"] for p in ep.prompts]
        texts = [p["text"] for p in ep.prompts]
        return [texts[i - 1] if (i := int(np.searchsorted(starts, f, side="right"))) else "" for f in first]

    def _text_table(self, episodes: list[Episode]) -> dict[str, torch.Tensor]:
        """Embeddings [L, D] of every prompt text (and ""), through the on-disk cache of this text encoder."""
        enc = self.info.text_encoder
        wanted = {""} | {p["text"] for ep in episodes for p in ep.prompts}
        path = self.root / ".cache" / f"text-{enc.identity}.safetensors"
        cached: dict[str, torch.Tensor] = {}
        if path.is_file():
            try:
                cached = read_tensors(path)
            except CheckpointError as err:
                log.warning("recomputing the text cache %s: %s", path, err)
        table = {t: cached[_text_key(t)] if _text_key(t) in cached else enc(t)[0] for t in wanted}
        if any(_text_key(t) not in cached for t in wanted):
            try:
                save_tensors({**cached, **{_text_key(t): e for t, e in table.items()}}, path)
            except OSError as err:
                log.warning("cannot write the text cache %s (%s)", path, err)
        return table

    # ---- clips and batches ---------------------------------------------------------------------------------
    def _clips(self, episodes: range) -> list[tuple[int, int]]:
        return [(e, s) for e in episodes for s in range(0, self.tracks[e]["length"] - self.clip_len + 1, self.stride)]

    def _clip(self, e: int, s: int):
        tr, sl = self.tracks[e], slice(s, s + self.clip_len)
        if self.kind == "frames":
            return tr, sl, []
        prompts = [tr["prompt_at"][s + j * self.chunk_frames] for j in range(self.clip_len // self.chunk_frames)]
        return tr, sl, prompts

    def collate(self, clips: list[tuple[int, int]]) -> LatentBatch | FrameBatch:
        parts = [self._clip(e, s) for e, s in clips]

        def stack(name: str) -> torch.Tensor | None:
            return None if parts[0][0][name] is None else torch.stack([tr[name][sl] for tr, sl, _ in parts])

        controls = Controls(stack("keys"), stack("axes"), stack("embedding"), stack("present"))
        if self.kind == "frames":
            return FrameBatch(stack("frames").float() / 255, controls if controls.sources() else None)
        latents = torch.stack([tr["latents"][sl] for tr, sl, _ in parts]).transpose(1, 2)  # [B, C, F, h, w]
        text = torch.stack([torch.stack([self.texts[p] for p in prompts]) for _, _, prompts in parts])
        return LatentBatch(latents.contiguous(), text, controls, [prompts for _, _, prompts in parts])

    def batch(self, step: int, rank: int = 0, world: int = 1) -> LatentBatch | FrameBatch:
        """The batch of process ``rank`` at optimizer step ``step`` (micro-batches: step * grad_accum + i)."""
        n, b = len(self.train_clips), self.batch_size
        first = (step * world + rank) * b
        picks = []
        for g in range(first, first + b):  # global sample index -> (epoch, position) in that epoch's shuffle
            epoch, pos = divmod(g, n)
            if epoch not in self._perms:
                self._perms = {epoch: torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))}
            picks.append(self.train_clips[int(self._perms[epoch][pos])])
        return self.collate(picks)

    def val_batches(self, count: int) -> list[LatentBatch | FrameBatch]:
        """Up to ``count`` fixed validation batches (the same every time)."""
        clips, b = self.val_clips, self.batch_size
        return [self.collate(clips[i:i + b]) for i in range(0, min(len(clips), count * b), b)]
