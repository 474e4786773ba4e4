"""Evaluation of trained toy models against the ground-truth world: do generated motions follow the controls
(counterfactually: do mirrored controls reverse them?), how close are the frames to the world's, and how far do
image statistics drift over a rollout much longer than the training clips?

Protocol, per held-out episode (generated fresh by the world's own episode generator, from a seed the training
data does not use) and per model:

1. the episode's first chunk (``chunk_frames`` frames) is encoded with the codec and pushed into a
   :class:`~worldsim.sampling.session.StreamingSession` as clean context, with its controls;
2. the session generates ``chunks`` more chunks, each driven by the episode's controls for its frames and by the
   prompt in effect at the chunk's first frame, exactly as the training data pairs them (``worldsim.train.data``:
   latent frame l takes control row l, row t driving frame t-1 -> t; a prompt switch is "soft", as in training);
3. the same again from the same context with the same noise seed, but with the generated chunks' controls
   mirrored (``worldsim.world.metrics.mirror_controls``: W<->S, A<->D, mouse deltas negated);
4. the decoded frames are scored against the episode's ground truth: motion agreement (true controls), the
   counterfactual pairs per kind (``counterfactual_counts``: do the two rollouts move in opposite directions, the
   true one as commanded?), MSE/PSNR, SSIM and paired statistics drift per chunk.

The scored span starts at the last context frame, so the first transition scored is context -> first generated
frame. References are scored the same way, each as a pair of videos:

- ``ground_truth``: the world's rollouts from the context's last state under the true and the mirrored controls
  (the ceiling);
- ``codec``: the codec's reconstruction of both (what the codec alone loses);
- ``frozen``: the span's first frame repeated, in both (no motion at all);
- ``ignores_controls``: the true ground truth as both rollouts, what a perfect model that ignores the controls
  would give (counterfactual score exactly 0.5);
- ``mismatched``: the ground-truth pair scored against the controls of each of up to ``MISMATCHES`` other held-out
  episodes (the chance level of every motion score; needs two episodes or more);
- ``shuffled``: the ground-truth pair with its frames in one random order (chance for an incoherent video);
- ``elsewhere``: the ground-truth pair swapped, the world under the mirrored controls scored as the true rollout: a
  drift-free video that goes elsewhere than the ground truth, so its paired statistics drift is the level any valid
  rollout that diverges reaches (its counterfactual pairs are all reversed).

Motion and counterfactual counts are pooled over episodes; drift, MSE, PSNR and SSIM are per generated chunk,
averaged over episodes.

Held commands (``held_frames`` > 0): from each episode's context, one command is held for ``held_frames`` frames
(turn: mouse_dx +1; move: W; strafe: D) and, from the same context and noise, its mirror (mouse_dx -1; S; A). The
cue's observed motion is summed over each video and signed so that the ground truth's held command moves
positively: a model following the controls gives a positive sum under the command and a negative one under its
mirror ("reversed"), in pixels per frame comparable to the world's. Cheap and direct where the counterfactual pairs
of a random episode rarely show confident motion; no chance level is needed for the sign test (a model ignoring
the controls gives the same video twice, never reversed). The codec's reconstruction of the world's videos is scored
too: how much of each motion the latent space the models work in keeps. ``held_<model>.png`` shows the first
episode: per kind, the world and the model under the command, then under its mirror.

From a prompt (``prompt_frames`` > 0): what ``worldsim play`` shows when it opens a model without start frames.
Per theme, ``prompt_streams``
streams (noise seeds) start from the theme's first dataset prompt alone (no context frames) and run
``prompt_frames`` frames with no key or mouse held. Each frame's colour histogram is compared with the theme's
look: the world's frames of that theme seen turning on the spot at ``THEME_PLACES`` held-out places
(total-variation distance, 0 = the same colours, 1 = none shared), averaged over the streams, as a curve per chunk
and early (first ``PROMPT_SPAN`` frames) / late (last ``PROMPT_SPAN``) means. References: ``world`` (the theme's
frames at other places: the floor), ``codec`` (those through the codec: what its blur alone costs) and
``other_themes`` (the other themes' frames: what a stream that lost its theme scores). Histograms do not see layout
(a forest that loses its trees keeps its colours, a checkerboard of the theme's colours keeps them too), so each
frame is also scored by :func:`~worldsim.world.metrics.token_grid` at the model's token size in pixels (patch x
codec stride): about 0 for the world's frames and through the codec (the references), well above it for a stream
tiled with token-size blobs. ``prompt_<model>.png`` shows each theme's first stream for looking.

From a start frame (``from_start``, with the above): the same streams, scored the same way, each first continuing
from one frame of its theme's world at a held-out place of its own (:func:`theme_start`), as the daemon opens a
prompt for which the model package has a start frame: does the model keep a world it is shown? ``start_<model>.png``.

Theme switches (``switch_frames`` > 0): does a prompt switch change the world? For each theme and the next one
(forest -> desert -> snow -> lava -> dungeon -> forest), a stream continues ``SWITCH_BEFORE`` frames from a start
frame of the first theme, then switches to the next theme's first prompt with each mode (``soft``, ``recache``,
``cut``; the cut continues from a start frame of the new theme, as the daemon's cut to a prompt with a package
start frame does) and runs ``switch_frames`` frames more, no controls held. Scored after the switch: the
colour-histogram distance to the new theme's look and to the old one's (the from-a-prompt references apply).
``switch_<model>.png``: the first pair, one row per mode.
"""

from __future__ import annotations

import filecmp
import json
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..codecs.base import to_uint8
from ..codecs.toy_codec import ToyCodec
from ..model.control import Controls
from ..model.dit import CausalWanDiT
from ..model_package import is_package, read_package
from ..runtime import SAMPLER_OVERRIDES, RuntimeOptions, build_runtime
from ..sampling.schedule import FlowMatchSchedule, SamplerConfig, evenly_spaced_steps
from ..sampling.session import SWITCH_MODES, StreamingSession
from ..world import AXES, KEYS, World, theme_for_prompt
from ..world.episodes import EpisodeConfig, episode_seeds, generate_episode, themes_per_frame
from ..world.game import WorldState
from ..world.metrics import (KINDS, OUTCOMES, SIGNS, counterfactual_counts, counterfactual_summary, estimate_motion,
                             colour_look, horizons, look_distance, mirror_controls, motion_breakdown, sharpness, ssim,
                             stat_drift, token_grid)
from ..world.themes import THEMES

THEME_PLACES = 4  # world places per theme pooled into its look (from-a-prompt probe)
PROMPT_SPAN = 16  # frames averaged for the probe's early and late distances
SWITCH_BEFORE = 48  # frames streamed from the first theme's start frame before the theme-switch probe's switch
REFERENCES = ("ground_truth", "codec", "frozen", "ignores_controls", "mismatched", "shuffled", "elsewhere")
MISMATCHES = 7  # other episodes whose controls each ground-truth pair is scored against (all of them for 8 episodes)


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: ``NAME=PATH[:STEPS]`` on the command line. PATH is a DiT checkpoint, or a model package
    (``OUT/final`` of a student stage), which brings its own sampler: STEPS and the evaluation's shift then do not
    apply."""

    name: str
    path: Path
    steps: int = 4  # denoising steps per chunk: 4 = the served few-step sampler; more for a multi-step teacher

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        name, sep, rest = text.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"expected NAME=PATH[:STEPS], got {text!r}")
        path, colon, steps = rest.rpartition(":")
        if colon and steps.isdigit():
            return cls(name, Path(path), int(steps))
        return cls(name, Path(rest))


@dataclass(frozen=True)
class EvalConfig:
    """How the evaluation runs. The cache defaults to the training attention span: a toy-recipe clip has 6 latent
    frames (6 chunks of one frame) and no sink, so a frame saw at most the 5 before it."""

    episodes: int = 8
    chunks: int = 60  # generated chunks per episode; 10x the toy recipe's 6-chunk training clips
    seed: int = 10_000  # held-out episode seeds (training data uses dataset seed 0) and sampler noise
    window_frames: int = 6  # the rolling KV window in latent frames (the daemon serves 12)
    sink_frames: int = 0  # the daemon serves 3
    shift: float = 5.0  # the samplers' timestep shift, as trained
    strip_episodes: int = 3  # episodes shown in each model's PNG strip
    strip_every: int = 3  # every Nth frame in the strips
    held_frames: int = 0  # > 0: also the held-command probe over this many frames (module docstring)
    prompt_frames: int = 0  # > 0: also the from-a-prompt probe over this many frames (module docstring)
    prompt_streams: int = 3  # the probe's streams per theme (noise seeds), averaged (one stream moved by up to 0.5)
    switch_frames: int = 0  # > 0: also the theme-switch probe, this many frames after each switch (module docstring)
    control_guidance: float | None = None  # the samplers' (sampling/session.py); None: a package's own, else 1
    text_guidance: float | None = None  # likewise, on the prompt
    guided_steps: tuple[int, ...] | None = None  # steps guidance applies to; None: a package's own, else all
    reference_start: int | None = None  # steps a chunk with a reference skips; None: a package's own, else 0
    chunk_frames: int | None = None  # latent frames per generated chunk; None: the model's own (serve --chunk-latents)
    drift_window: int = 6  # frames per window of the theme drift: the toy recipe's training clip
    switches: int = 2  # theme switches per held-out episode, at most (as the training data); 0: all keep one theme
    device: str = "cpu"


@dataclass
class HeldOutEpisode:
    """A ground-truth episode of (chunks + 1) chunks: one of context, then the frames to generate."""

    seed: int
    frames: np.ndarray  # [N, H, W, 3] uint8
    keys: np.ndarray  # [N, 6], row t drives frame t-1 -> t (row 0 unused)
    axes: np.ndarray  # [N, 2]
    prompts: list[str]  # the prompt of each chunk
    pitch: float  # view pitch at the scored span's first frame (the last context frame)
    mirror: HeldOutEpisode | None = None  # the same context, then the generated chunks under mirrored controls
    state: WorldState | None = None  # the world at the last context frame (ground truth of other controls)


def held_out_episodes(cfg: EvalConfig, chunk_frames: int) -> list[HeldOutEpisode]:
    """Fresh episodes from the world's episode generator, long enough for the context and ``cfg.chunks`` chunks,
    each with its mirror: the world rolled out from the last context state under the mirrored controls."""
    n = chunk_frames
    ep_cfg = EpisodeConfig(frames=(cfg.chunks + 1) * n, chunk_frames=n, switches=cfg.switches)
    world = World(ep_cfg.world)
    out = []
    for seed in episode_seeds(cfg.seed, cfg.episodes):
        ep = generate_episode(seed, ep_cfg)
        starts = [p["from_frame"] for p in ep.prompts]
        prompts = [ep.prompts[int(np.searchsorted(starts, c * n, side="right")) - 1]["text"]
                   for c in range(cfg.chunks + 1)]
        keys, axes = mirror_controls(ep.keys, ep.axes)
        keys[:n], axes[:n] = ep.keys[:n], ep.axes[:n]  # the context keeps its controls
        themes = themes_per_frame(ep.prompts, ep_cfg.frames)
        mirrored = world.rollout(ep.states[n - 1], keys[n:], axes[n:], themes=themes[n:]).frames
        pitch = ep.states[n - 1].pitch
        mirror = HeldOutEpisode(seed, np.concatenate([ep.frames[:n - 1], mirrored]), keys, axes, prompts, pitch)
        out.append(HeldOutEpisode(seed, ep.frames, ep.keys, ep.axes, prompts, pitch, mirror, ep.states[n - 1]))
    return out


HELD_COMMANDS = {"turn": ("mouse_dx", None), "move": ("W", "S"), "strafe": ("D", "A")}  # command, its mirror


def held_controls(kind: str, mirrored: bool, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """keys [frames + 1, 6], axes [frames + 1, 2]: ``kind``'s command (or its mirror) held from row 1 on; row 0
    (the context frame's) is empty."""
    keys, axes = np.zeros((frames + 1, len(KEYS)), np.float32), np.zeros((frames + 1, len(AXES)), np.float32)
    name = HELD_COMMANDS[kind][int(mirrored)] or HELD_COMMANDS[kind][0]
    if name in AXES:
        axes[1:, AXES.index(name)] = -1.0 if mirrored else 1.0
    else:
        keys[1:, KEYS.index(name)] = 1.0
    return keys, axes


def held_motion(span: np.ndarray, kind: str, axes: np.ndarray, pitch: float) -> float:
    """The ``kind`` cue's motion summed over a video [N, H, W, 3] (its first frame: the context's), in pixels."""
    rows = horizons(axes, pitch=pitch)
    return float(sum(getattr(estimate_motion(span[i], span[i + 1], rows[i + 1]), kind) for i in range(len(span) - 1)))


def held_summary(sums: np.ndarray, truth: np.ndarray, frames: int) -> dict:
    """Held-command results of one source from its sums [E, 2] (command, mirror) per episode, signed by the ground
    truth's [E, 2]: mean pixels per frame along the commanded direction, and the episodes reversed."""
    along = sums * np.sign(truth[:, :1])  # [E, 2]: positive = the way the world moves under the command
    return {"px_per_frame": (along[:, 0].mean() / frames, along[:, 1].mean() / frames),
            "reversed": int(((along[:, 0] > 0) & (along[:, 1] < 0)).sum()), "episodes": len(sums)}


def episode_controls(ep: HeldOutEpisode, start: int, stop: int, device) -> Controls:
    """Controls of latent frames [start, stop) as the training data builds them for a per-frame codec: frame l
    takes control row l; frame 0 has none (absent)."""
    keys = torch.from_numpy(ep.keys[start:stop]).float()[None, :, None]  # [1, F, 1, 6]
    axes = torch.from_numpy(ep.axes[start:stop]).float()[None, :, None]  # [1, F, 1, 2]
    present = (torch.arange(start, stop) > 0)[None]  # [1, F]
    return Controls(keys.to(device), axes.to(device), None, present.to(device))


def check_compatible(model: CausalWanDiT, codec: ToyCodec, name: str) -> None:
    """Refuse a model that does not take the toy world's controls per frame in this codec's latent space."""
    c = model.cfg.control
    if c is None or tuple(c.keys) != KEYS or tuple(c.axes) != AXES or c.frames_per_latent != 1:
        raise ValueError(f"{name}: the model's control schema {c} is not the toy world's (keys {list(KEYS)}, "
                         f"axes {list(AXES)}, frames_per_latent 1)")
    if model.cfg.in_dim != codec.cfg.latent_channels:
        raise ValueError(f"{name}: the model takes {model.cfg.in_dim} latent channels, the codec gives "
                         f"{codec.cfg.latent_channels}")


def to_tensor(frames: np.ndarray, device) -> torch.Tensor:
    """Frames [T, H, W, 3] uint8 -> [1, T, 3, H, W] in [0, 1] (what the codec encodes)."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float().div(255)[None].to(device)


def decoded_frames(frames: torch.Tensor) -> np.ndarray:
    """Decoded frames [B=1, T, 3, H, W] in [0, 1] -> [T, H, W, 3] uint8 (what the world metrics read)."""
    return to_uint8(frames[0]).numpy()


@torch.no_grad()
def stream_video(move, codec: ToyCodec, first: np.ndarray, keys: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """The frame ``first`` [H, W, 3] and ``move``'s frames [len(keys), H, W, 3], each moved from the last:
    ``move(latent [1, C, 1, h, w], controls of one frame)`` (a reference flow's ``move_latents`` through the codec,
    as a session moves its reference, or a warp); row 0 of ``keys`` / ``axes`` is ``first``'s own."""
    latent = codec.encode(to_tensor(first[None], "cpu"))  # [1, C, 1, h, w]
    out = [first]
    for t in range(1, len(keys)):
        controls = Controls(keys=torch.from_numpy(keys[t:t + 1])[None, :, None],
                            axes=torch.from_numpy(axes[t:t + 1])[None, :, None])
        latent = move(latent, controls)
        out.append(decoded_frames(codec.decode(latent))[0])
    return np.stack(out)


def reconstructed(codec: ToyCodec, frames: np.ndarray, device) -> np.ndarray:
    """World frames [T, H, W, 3] uint8 through the codec (encoded, decoded): what its latent space keeps of them."""
    return decoded_frames(codec.decode(codec.encode(to_tensor(frames, device))))


class Generator:
    """One model, its sampler and the shared codec and text encoder: rolls out a held-out episode."""

    def __init__(self, spec: ModelSpec, codec: ToyCodec, codec_path: Path, cfg: EvalConfig):
        """Built by the inference runtime, as served: a package brings its sampler, text encoder and codec (which
        must be the evaluation's), a checkpoint file gets ``spec.steps`` evenly spaced steps and the hashing
        prompts it was trained with."""
        self.spec, self.codec, self.cfg = spec, codec, cfg
        runtime = build_runtime(RuntimeOptions(model=str(spec.path), device=cfg.device, keys=(), axes=(),
                                               window_frames=cfg.window_frames, sink_frames=cfg.sink_frames))
        if is_package(spec.path):
            own = read_package(spec.path)
            if own.codec["kind"] != "toy" or not filecmp.cmp(own.file(own.codec["path"]), codec_path, shallow=False):
                raise ValueError(f"{spec.name}: the package's codec ({own.codec}) is not the evaluation's "
                                 f"({codec_path}); evaluate it with --codec {own.file(own.codec.get('path', '?'))}")
            self.sampler = runtime.sampler
        else:
            self.sampler = SamplerConfig(shift=cfg.shift, denoising_steps=evenly_spaced_steps(spec.steps))
        guidance = {k: v for k in SAMPLER_OVERRIDES if (v := getattr(cfg, k)) is not None}
        self.sampler = replace(self.sampler, **guidance)
        self.model, self.text, self.move_reference = runtime.model, runtime.embed_prompt, runtime.move_reference
        self.empty_prompt = runtime.empty_prompt() if self.sampler.text_guidance != 1 else None
        check_compatible(self.model, codec, spec.name)
        self.n = cfg.chunk_frames or self.model.cfg.chunk_frames

    @property
    def timesteps(self) -> list[float]:
        """The timesteps each chunk is denoised at (after the shift warp)."""
        return FlowMatchSchedule.from_config(self.sampler).sampling_timesteps(self.sampler)

    def session(self, prompt: str, latent_shape: tuple[int, int, int], seed: int) -> StreamingSession:
        """A stream of this model from ``prompt`` with the evaluation's cache and the model's sampler."""
        return StreamingSession(self.model, self.text(prompt).to(self.cfg.device), latent_shape=latent_shape, seed=seed,
                                sink_frames=self.cfg.sink_frames, window_frames=self.cfg.window_frames,
                                sampler=self.sampler, uncond_prompt=self.empty_prompt, chunk_frames=self.n,
                                move_reference=self.move_reference)

    @torch.no_grad()
    def rollout(self, ep: HeldOutEpisode, seed: int, tick=lambda: None, chunks: int | None = None
                ) -> tuple[np.ndarray, list[float]]:
        """Generated frames of chunks 1..K [K*n, H, W, 3] uint8 (K: ``chunks``, default the evaluation's), and the
        seconds each chunk's step took."""
        n, device = self.n, self.cfg.device
        latents = self.codec.encode(to_tensor(ep.frames[:n], device))  # [1, C, n, h, w]
        ch, _, h, w = latents.shape[1:]
        session = self.session(ep.prompts[0], (ch, h, w), seed)
        session.push_context(latents, episode_controls(ep, 0, n, device))
        frames, seconds = [], []
        for c in range(1, (chunks or self.cfg.chunks) + 1):
            if ep.prompts[c] != ep.prompts[c - 1]:
                session.set_prompt(self.text(ep.prompts[c]).to(device), mode="soft")
            t0 = time.perf_counter()
            chunk = session.step(episode_controls(ep, c * n, (c + 1) * n, device))
            seconds.append(time.perf_counter() - t0)
            frames.append(decoded_frames(self.codec.decode(chunk)))
            tick()
        return np.concatenate(frames), seconds

    @torch.no_grad()
    def from_prompt(self, prompt: str, frames: int, seed: int, latent_shape: tuple[int, int, int],
                    start: np.ndarray | None = None, switch: ThemeSwitch | None = None) -> np.ndarray:
        """``frames`` frames [frames, H, W, 3] uint8 streamed from ``prompt`` alone, no key or mouse held (frame 0
        takes no controls, as in training), or continuing from the frame ``start`` [H, W, 3] uint8 (as the daemon
        opens a prompt that has a package start frame; that frame is not among those returned); ``switch``: a prompt
        switch on the way."""
        n, device = self.n, self.cfg.device
        session = self.session(prompt, latent_shape, seed)
        first = 0  # the stream's frame number of the first generated frame
        if start is not None:
            session.push_context(self.codec.encode(to_tensor(start[None], device)))
            first = 1
        keys, axes = torch.zeros(1, n, 1, len(KEYS), device=device), torch.zeros(1, n, 1, len(AXES), device=device)
        out = []
        for at in range(first, first + frames, n):
            if switch is not None and at - first == switch.frame:
                to = None if switch.start is None else self.codec.encode(to_tensor(switch.start[None], device))
                session.set_prompt(self.text(switch.prompt).to(device), switch.mode, start=to)
            idle = Controls(keys, axes, None, (torch.arange(at, at + n) > 0)[None].to(device))
            out.append(decoded_frames(self.codec.decode(session.step(idle))))
        return np.concatenate(out)[:frames]


@dataclass
class ThemeSwitch:
    """A prompt switch in a probe's stream: after ``frame`` generated frames (whole chunks), to ``prompt`` with
    ``mode``; ``start`` [H, W, 3] uint8: the frame a cut continues from (a package's start frame for the prompt)."""

    frame: int
    prompt: str
    mode: str
    start: np.ndarray | None = None


@dataclass
class Tally:
    """Running sums of one video source (a model or a reference) over episodes."""

    chunks: int
    chunk_frames: int
    looks: dict[str, np.ndarray] | None = None  # each theme's colour_look, for the theme drift
    drift_window: int = 6  # frames per window of the theme drift (EvalConfig.drift_window)
    hits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    pairs: dict[str, np.ndarray] = field(  # counterfactual counts [SIGNS, OUTCOMES] per kind
        default_factory=lambda: {k: np.zeros((len(SIGNS), len(OUTCOMES)), np.int64) for k in KINDS})
    moments: list[np.ndarray] = field(default_factory=list)  # per episode [K]
    histogram: list[np.ndarray] = field(default_factory=list)
    mse: list[np.ndarray] = field(default_factory=list)
    ssim: list[np.ndarray] = field(default_factory=list)
    detail: list[np.ndarray] = field(default_factory=list)  # per episode [K, 2]: sharpness of the video, the truth
    theme_drift: list[np.ndarray] = field(default_factory=list)  # per one-theme episode [frames]
    seconds: list[float] = field(default_factory=list)

    def add(self, span: np.ndarray, mirrored: np.ndarray, ep: HeldOutEpisode, score_frames: bool = True) -> None:
        """Score a video of the span (the last context frame, then the K generated chunks' frames) under the
        controls of ``ep``, with its counterpart ``mirrored`` under the mirrored controls, against ``ep.frames``.
        ``score_frames=False`` scores the motion only: for a video whose frames were scored already (the
        ``mismatched`` reference scores each episode's video under several others' controls)."""
        first = self.chunk_frames - 1
        keys, axes = ep.keys[first:], ep.axes[first:]
        for kind, (h, r) in motion_breakdown(span, keys, axes, pitch=ep.pitch).items():
            self.hits[kind] += h
            self.rows[kind] += r
        for kind, counts in counterfactual_counts(span, mirrored, keys, axes, pitch=ep.pitch).items():
            self.pairs[kind] += counts
        if not score_frames:
            return
        video, truth = span[1:], ep.frames[first + 1:]
        drift = stat_drift(video, truth, paired=True)
        err = ((video.astype(np.float64) - truth) / 255) ** 2
        self.moments.append(self._per_chunk(drift.moments))
        self.histogram.append(self._per_chunk(drift.histogram))
        self.mse.append(self._per_chunk(err.mean(axis=(1, 2, 3))))
        self.ssim.append(self._per_chunk(ssim(video, truth)))
        self.detail.append(np.stack([self._per_chunk(sharpness(video)), self._per_chunk(sharpness(truth))], axis=1))
        themes = {theme_for_prompt(p) for p in ep.prompts}
        if self.looks is not None and len(themes) == 1:  # episodes that switch themes are left out: not drift
            self.theme_drift.append(look_distance(video, self.looks[themes.pop()]))

    def _per_chunk(self, per_frame: np.ndarray) -> np.ndarray:
        return per_frame.reshape(self.chunks, self.chunk_frames).mean(1)

    def _theme_drift(self) -> dict:
        """Colour-histogram distance to the theme's look per window of frames, averaged over the episodes that
        keep one theme (``episodes`` of them; a soft switch a model does not follow is not drift): first and
        last window, their ratio (the drift the Self Forcing paper measures: 1 when the last frames look as much
        like the world as the first; the ground truth's own ratio is the level a drift-free model reaches) with
        its bootstrap interval and the per-episode windows (:func:`episode_ratio`), and the curve."""
        windows = np.stack([self._windows(d) for d in self.theme_drift])  # [episodes, windows]
        curve = windows.mean(0)
        return {"window_frames": self.drift_window, "episodes": len(self.theme_drift), "first": float(curve[0]),
                "last": float(curve[-1]), **episode_ratio(windows[:, [0, -1]]), "per_window": curve.tolist()}

    def _windows(self, per_frame: np.ndarray) -> np.ndarray:
        """[windows] mean of per-frame values over each window of ``drift_window`` frames (the last may be shorter)."""
        return np.array([w.mean() for w in np.array_split(per_frame, range(self.drift_window, len(per_frame),
                                                                            self.drift_window))])

    def summary(self) -> dict:
        """JSON-ready metrics: motion agreement and the counterfactual pairs per kind; per-chunk curves with first
        (chunk 1), early (first two chunks: the training length) and late (last two) means."""
        motion = {k: _agreement(self.hits[k], self.rows[k]) for k in KINDS}
        motion["all"] = _agreement(sum(self.hits.values()), sum(self.rows.values()))
        mse = np.mean(self.mse, axis=0)
        psnr = [-10 * math.log10(m) if m > 0 else None for m in mse]
        out = {"motion": motion, "counterfactual": {k: counterfactual_summary(self.pairs[k]) for k in KINDS},
               "drift_moments": {**_curve(np.mean(self.moments, axis=0)),
                                 **episode_ratio(np.stack([[m[:2].mean(), m[-2:].mean()] for m in self.moments]))},
               "drift_histogram": _curve(np.mean(self.histogram, axis=0)), "mse": _curve(mse),
               "psnr": {**_curve(mse, psnr=True), "per_chunk": psnr}, "ssim": _curve(np.mean(self.ssim, axis=0)),
               "sharpness": detail_ratio(np.mean(self.detail, axis=0)),
               **({"drift_theme": self._theme_drift()} if self.theme_drift else {})}
        if self.seconds:
            out["seconds_per_chunk"] = float(np.mean(self.seconds))
        return out


BOOTSTRAP_DRAWS, BOOTSTRAP_LEVEL = 2000, 0.9


def bootstrap_interval(statistic, n: int, draws: int = BOOTSTRAP_DRAWS, level: float = BOOTSTRAP_LEVEL,
                       seed: int = 0) -> list[float] | None:
    """The central ``level`` interval of ``statistic(idx)`` over episodes resampled with replacement: idx
    [draws, n] indexes n episodes per draw, statistic returns [draws]. None with fewer than 2 episodes. The seed is
    fixed, so a result file is reproducible; statistics computed with the same ``n`` and seed see the same draws
    (what a paired comparison needs). Draws where the statistic is undefined (a ratio whose resampled denominator
    is 0) are left out."""
    if n < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, n, size=(draws, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        values = statistic(idx)
    values = values[np.isfinite(values)]
    tail = (1 - level) / 2
    return [float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))]


def drift_ratios(per_episode: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """[draws] drift ratio (mean late / mean early value) of per-episode values [E, 2] resampled by idx [draws, n]."""
    return per_episode[idx, 1].mean(1) / per_episode[idx, 0].mean(1)


def episode_ratio(per_episode: np.ndarray) -> dict:
    """A drift's late / early ratio from per-episode values [E, 2] (early, late): the ratio of the means, its
    bootstrap interval over the episodes and the values themselves (for paired comparisons)."""
    if not per_episode[:, 0].mean() > 0:  # the ground truth's paired drift: 0 from the start, no ratio
        return {"ratio": None, "ratio_interval": None, "per_episode": per_episode.tolist()}
    return {"ratio": float(per_episode[:, 1].mean() / per_episode[:, 0].mean()),
            "ratio_interval": bootstrap_interval(lambda idx: drift_ratios(per_episode, idx), len(per_episode)),
            "per_episode": per_episode.tolist()}


def drift_differences(sources: dict[str, dict], key: str = "drift_theme") -> dict:
    """Paired comparisons of one drift (``key``: drift_theme or drift_moments) between every two sources scored on
    the same episodes (in order: the later's ratio minus the earlier's; :func:`evaluate` puts the ground truth
    first, whose theme-drift ratio is not 1 when its episodes walk into other parts of the world, then the world
    elsewhere, the paired statistics drift's drift-free level), with a bootstrap interval over the episodes (both
    resampled alike). An interval that excludes 0 separates the two; the sources' own intervals overlapping does
    not say they do not (the episodes are shared, so most of their spread is common). Sources without a ratio (an
    early mean of 0: the ground truth's paired drift) are left out."""
    scored = {name: r[key] for name, r in sources.items() if key in r and r[key]["ratio"] is not None}
    names = list(scored)
    out = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            x, y = (np.asarray(scored[name]["per_episode"]) for name in (a, b))
            out[f"{b} - {a}"] = {"ratio_difference": scored[b]["ratio"] - scored[a]["ratio"], "interval":
                                 bootstrap_interval(lambda idx: drift_ratios(y, idx) - drift_ratios(x, idx), len(x))}
    return out


def _agreement(hits: int, rows: int) -> dict:
    return {"hits": hits, "rows": rows, "agreement": hits / rows if rows else None}


def detail_ratio(per_chunk: np.ndarray) -> dict:
    """Sharpness of the video over the ground truth's (1: as much detail, below: blurrier), from per-chunk means
    [K, 2] (video, truth): first chunk, early (first two) and late (last two) chunks."""
    def ratio(rows: np.ndarray) -> float:
        return float(rows[:, 0].sum() / rows[:, 1].sum()) if rows[:, 1].sum() > 0 else float("nan")

    return {"first": ratio(per_chunk[:1]), "early": ratio(per_chunk[:2]), "late": ratio(per_chunk[-2:])}


def _curve(per_chunk: np.ndarray, psnr: bool = False) -> dict:
    """First-chunk value and early / late means of a per-chunk curve (for PSNR: of the MSE, then converted)."""
    def mean(values: np.ndarray) -> float | None:
        m = float(values.mean())
        return (-10 * math.log10(m) if m > 0 else None) if psnr else m

    return {"first": mean(per_chunk[:1]), "early": mean(per_chunk[:2]), "late": mean(per_chunk[-2:]),
            "per_chunk": per_chunk.tolist()}


def strip_image(rows: list[tuple[np.ndarray, ...]], every: int) -> Image.Image:
    """One PNG strip: per episode one row per video (ground truth, generated, mirrored ground truth, generated
    under mirrored controls), every ``every``-th frame."""
    gap = 4
    blocks = []
    for videos in rows:
        lines = [np.concatenate(list(v[::every]), axis=1) for v in videos]
        blocks += [*lines, np.full((gap, lines[0].shape[1], 3), 255, np.uint8)]
    return Image.fromarray(np.concatenate(blocks[:-1]))


def evaluate(specs: list[ModelSpec], codec_path: str | Path, cfg: EvalConfig = EvalConfig(),
             out: str | Path | None = None, progress: bool = True) -> dict:
    """Score each model and the references on the same held-out episodes; returns the results (also written to
    ``out/results.json`` with a ``strip_<model>.png`` per model when ``out`` is given). The ``mismatched``
    reference needs two episodes or more; with one it is left out."""
    if not specs or len({s.name for s in specs}) != len(specs):
        raise ValueError(f"need at least one model, each with its own name; got {[s.name for s in specs]}")
    codec = ToyCodec.load(codec_path, device=cfg.device)
    generators = [Generator(s, codec, Path(codec_path), cfg) for s in specs]
    sizes = {g.n for g in generators}
    if len(sizes) > 1:
        raise ValueError(f"the models generate chunks of different sizes {sorted(sizes)}; evaluate them apart")
    n = sizes.pop()
    episodes = held_out_episodes(cfg, n)
    looks = {theme: colour_look(views) for theme, views in theme_looks(cfg).items()}
    refs = {name: Tally(cfg.chunks, n, looks, cfg.drift_window) for name in REFERENCES
            if name != "mismatched" or len(episodes) > 1}
    tallies = {g.spec.name: Tally(cfg.chunks, n, looks, cfg.drift_window) for g in generators}
    strips: dict[str, list] = {g.spec.name: [] for g in generators}
    bar = tqdm(total=2 * len(generators) * len(episodes) * cfg.chunks, unit="chunk", disable=not progress)
    for i, ep in enumerate(episodes):
        span, mirrored = ep.frames[n - 1:], ep.mirror.frames[n - 1:]
        recon, recon_mirrored = (reconstructed(codec, v, cfg.device) for v in (span, mirrored))
        frozen = np.repeat(span[:1], len(span), axis=0)
        refs["ground_truth"].add(span, mirrored, ep)
        refs["codec"].add(recon, recon_mirrored, ep)
        refs["frozen"].add(frozen, frozen, ep)
        refs["ignores_controls"].add(span, span, ep)
        for shift in range(1, min(len(episodes), MISMATCHES + 1)):
            other = episodes[(i + shift) % len(episodes)]
            refs["mismatched"].add(span, mirrored, replace(ep, keys=other.keys, axes=other.axes, pitch=other.pitch),
                                   score_frames=shift == 1)
        order = np.random.default_rng([cfg.seed, i]).permutation(len(span))
        refs["shuffled"].add(span[order], mirrored[order], ep)
        refs["elsewhere"].add(mirrored, span, ep)
        for g in generators:
            bar.set_description(g.spec.name)
            frames, seconds = g.rollout(ep, cfg.seed + i, tick=bar.update)
            frames_mirrored, _ = g.rollout(ep.mirror, cfg.seed + i, tick=bar.update)  # same context, same noise
            video, video_mirrored = (np.concatenate([recon[:1], f]) for f in (frames, frames_mirrored))
            tallies[g.spec.name].add(video, video_mirrored, ep)
            tallies[g.spec.name].seconds += seconds
            if i < cfg.strip_episodes:
                strips[g.spec.name].append((span, video, mirrored, video_mirrored))
    bar.close()
    held, held_strips = held_commands(generators, episodes, cfg, n, codec) if cfg.held_frames > 0 else (None, {})
    results = {"config": {**asdict(cfg), "chunk_frames": n, "codec": str(codec_path)},
               "episodes": [{"seed": ep.seed, "prompts": ep.prompts} for ep in episodes],
               "references": {name: t.summary() for name, t in refs.items()},
               "models": {g.spec.name: {"path": str(g.spec.path), "steps": len(g.sampler.denoising_steps),
                                        "timesteps": g.timesteps, **tallies[g.spec.name].summary()}
                          for g in generators}}
    sources = {f"({name})": results["references"][name] for name in ("ground_truth", "elsewhere")}
    sources.update(results["models"])  # each model against the world's two drift-free levels and the other models
    results["drift_differences"] = {key: drift_differences(sources, key) for key in ("drift_theme", "drift_moments")}
    if held is not None:
        results["held_commands"] = held
    probe_strips = {}
    if cfg.prompt_frames > 0:
        for key, from_frame in (("from_prompt", False), ("from_start", True)):
            results[key], probe_strips[key] = from_prompt(generators, codec, cfg, looks, from_frame)
    if cfg.switch_frames > 0:
        results["theme_switch"], probe_strips["theme_switch"] = theme_switches(generators, codec, cfg, looks)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        for name, rows in strips.items():
            strip_image(rows, cfg.strip_every).save(out / f"strip_{name}.png")
        for name, rows in held_strips.items():
            strip_image(rows, 1).save(out / f"held_{name}.png")
        for key, prefix in (("from_prompt", "prompt"), ("from_start", "start"), ("theme_switch", "switch")):
            for name, rows in probe_strips.get(key, {}).items():
                strip_image(rows, max(1, len(rows[0][0]) // 20)).save(out / f"{prefix}_{name}.png")  # ~20 columns
    return results


def held_commands(generators: list[Generator], episodes: list[HeldOutEpisode], cfg: EvalConfig, n: int,
                  codec: ToyCodec, kinds: tuple[str, ...] = KINDS
                  ) -> tuple[dict, dict[str, list[tuple[np.ndarray, ...]]]]:
    """The held-command probe (module docstring) of the ground truth, its reconstruction by ``codec`` and each
    model: {source: {kind: summary}}, and per model the first episode's videos for a strip, one row tuple per kind:
    (world under the command, model under it, world under the mirror, model under the mirror)."""
    frames = cfg.held_frames - cfg.held_frames % n or n  # whole chunks
    world = World(EpisodeConfig().world)
    sums: dict[str, dict[str, np.ndarray]] = {name: {k: np.zeros((len(episodes), 2)) for k in kinds} for name in
                                              ["ground_truth", "codec", *(g.spec.name for g in generators)]}
    strips: dict[str, list[tuple[np.ndarray, ...]]] = {g.spec.name: [] for g in generators}
    for i, ep in enumerate(episodes):
        context = ep.frames[n - 1:n]
        for kind in kinds:
            videos: dict[str, list[np.ndarray]] = {}
            for j, mirrored in enumerate((False, True)):
                keys, axes = held_controls(kind, mirrored, frames)
                truth = world.rollout(ep.state, keys[1:], axes[1:]).frames
                sums["ground_truth"][kind][i, j] = held_motion(truth, kind, axes, ep.pitch)
                sums["codec"][kind][i, j] = held_motion(reconstructed(codec, truth, cfg.device), kind, axes, ep.pitch)
                held = replace(ep, keys=np.concatenate([ep.keys[:n - 1], keys]),
                               axes=np.concatenate([ep.axes[:n - 1], axes]), prompts=[ep.prompts[0]] * (frames + 1))
                for g in generators:
                    video, _ = g.rollout(held, cfg.seed + i, chunks=frames // n)
                    video = np.concatenate([context, video])
                    sums[g.spec.name][kind][i, j] = held_motion(video, kind, axes, ep.pitch)
                    videos.setdefault(g.spec.name, []).extend([truth, video])
            if i == 0:
                for name, (t, v, tm, vm) in videos.items():
                    strips[name].append((t, v, tm, vm))
    truth = sums["ground_truth"]
    return {name: {k: held_summary(v[k], truth[k], frames) for k in kinds} for name, v in sums.items()}, strips


def theme_views(theme: str, seeds: list[int], frames: int = 48) -> np.ndarray:
    """The world of ``theme`` seen turning on the spot from each seed's start: [len(seeds) * frames, H, W, 3]."""
    world = World(EpisodeConfig().world)
    keys, axes = np.zeros((frames - 1, len(KEYS)), np.float32), np.zeros((frames - 1, len(AXES)), np.float32)
    axes[:, AXES.index("mouse_dx")] = 1.0
    return np.concatenate([world.rollout(world.start_state(s, theme), keys, axes).frames for s in seeds])


def theme_looks(cfg: EvalConfig, offset: int = 0) -> dict[str, np.ndarray]:
    """Each theme's look: its frames turning on the spot at ``THEME_PLACES`` held-out places (``offset``: the next
    places along, for the references)."""
    places = [cfg.seed + offset + i for i in range(THEME_PLACES)]
    return {t: theme_views(t, places) for t in THEMES}


def early_late(curve: np.ndarray, span: int) -> dict[str, float]:
    """A per-frame score's means over its first and last ``span`` frames."""
    return {"early": float(curve[:span].mean()), "late": float(curve[-span:].mean())}


def latent_shape_of(codec: ToyCodec, frame: np.ndarray) -> tuple[int, int, int]:
    """(C, h, w) of one latent frame of the codec for frames shaped like ``frame`` [..., H, W, 3]."""
    height, width = frame.shape[-3:-1]
    return codec.cfg.latent_channels, height // codec.spatial_stride, width // codec.spatial_stride


def theme_start(theme: str, place: int) -> np.ndarray:
    """The world's first frame of ``theme`` at the seeded place ``place``: [H, W, 3] uint8 (a stream's start frame)."""
    return World(EpisodeConfig().world).reset(place, theme)


def from_prompt(generators: list[Generator], codec: ToyCodec, cfg: EvalConfig, looks: dict[str, np.ndarray],
                from_frame: bool = False) -> tuple[dict, dict[str, list[tuple[np.ndarray]]]]:
    """The from-a-prompt probe (module docstring): {"themes": [...], "references": {name: {"mean": d}}, "models":
    {name: {"early", "late", "per_theme": {theme: {"early", "late"}}, "per_chunk", "grid": {"period", "early",
    "late", "world", "codec", "per_theme"}}}}: colour-histogram distance, and the token grid with its references at
    the model's token size; per model one strip row per theme. ``from_frame``: each stream continues from a start
    frame of its theme (:func:`theme_start` at a place of its own, none of the looks' places) instead. ``looks``:
    each theme's :func:`~worldsim.world.metrics.colour_look` (of :func:`theme_looks`)."""
    n = generators[0].n
    frames = cfg.prompt_frames - cfg.prompt_frames % n or n  # whole chunks
    span = min(PROMPT_SPAN, frames)
    elsewhere = theme_looks(cfg, THEME_PLACES)
    latent_shape = latent_shape_of(codec, elsewhere["forest"])

    def distance(video: np.ndarray, theme: str) -> np.ndarray:  # [frames] histogram distance to the theme's look
        return look_distance(video, looks[theme])

    def over_themes(per_theme: dict[str, dict[str, float]]) -> dict[str, float]:
        return {k: float(np.mean([v[k] for v in per_theme.values()])) for k in ("early", "late")}

    coded = {t: reconstructed(codec, v, cfg.device) for t, v in elsewhere.items()}
    refs = {"world": [distance(elsewhere[t], t).mean() for t in THEMES],
            "codec": [distance(coded[t], t).mean() for t in THEMES],
            "other_themes": [distance(elsewhere[u], t).mean() for t in THEMES for u in THEMES if u != t]}
    results = {"themes": list(THEMES), "frames": frames, "span": span, "streams": cfg.prompt_streams,
               "from_frame": from_frame,
               "references": {name: {"mean": float(np.mean(v))} for name, v in refs.items()}, "models": {}}
    strips: dict[str, list[tuple[np.ndarray]]] = {}
    for g in generators:
        period = g.model.cfg.patch_size[2] * codec.spatial_stride  # one token, in pixels
        curves, per_theme, grids = [], {}, {}
        for i, theme in enumerate(THEMES):
            d, grid = [], []
            for stream in range(cfg.prompt_streams):
                start = theme_start(theme, cfg.seed + 2 * THEME_PLACES + stream) if from_frame else None
                video = g.from_prompt(THEMES[theme].prompts[0], frames, cfg.seed + 1000 * stream + i, latent_shape,
                                      start)
                d.append(distance(video, theme))
                grid.append(token_grid(video, period))
                if stream == 0:
                    strips.setdefault(g.spec.name, []).append((video,))
            d, grid = np.mean(d, axis=0), np.mean(grid, axis=0)  # [frames], over the streams
            curves.append(d.reshape(-1, n).mean(1))
            per_theme[theme], grids[theme] = early_late(d, span), early_late(grid, span)
        results["models"][g.spec.name] = {
            **over_themes(per_theme), "per_theme": per_theme, "per_chunk": np.mean(curves, axis=0).tolist(),
            "grid": {"period": period, **over_themes(grids),
                     "world": float(np.mean([token_grid(elsewhere[t], period).mean() for t in THEMES])),
                     "codec": float(np.mean([token_grid(coded[t], period).mean() for t in THEMES])),
                     "per_theme": grids}}
    return results, strips


def theme_switches(generators: list[Generator], codec: ToyCodec, cfg: EvalConfig, looks: dict[str, np.ndarray]
                   ) -> tuple[dict, dict[str, list[tuple[np.ndarray]]]]:
    """The theme-switch probe (module docstring): {"pairs", "before", "after", "span", "models": {name: {mode:
    {"to": {"early", "late"}, "from": {"early", "late"}, "per_chunk"}}}}: after the switch, the colour-histogram
    distance to the new theme's look (to) and to the old one's (from), averaged over the pairs; per model one strip
    row per mode (the first pair, before and after the switch). ``looks``: as for :func:`from_prompt`."""
    n = generators[0].n
    before = max(n, SWITCH_BEFORE - SWITCH_BEFORE % n)
    after = max(n, cfg.switch_frames - cfg.switch_frames % n)
    span = min(PROMPT_SPAN, after)
    names = list(THEMES)
    pairs = [(a, names[(i + 1) % len(names)]) for i, a in enumerate(names)]
    places = [cfg.seed + 2 * THEME_PLACES + i for i in range(len(pairs))]
    starts = [(theme_start(a, p), theme_start(b, p)) for (a, b), p in zip(pairs, places)]  # each pair's two themes
    latent_shape = latent_shape_of(codec, starts[0][0])
    results = {"pairs": [list(p) for p in pairs], "before": before, "after": after, "span": span, "models": {}}
    strips: dict[str, list[tuple[np.ndarray]]] = {}
    for g in generators:
        modes = {}
        for mode in SWITCH_MODES:
            to, back = [], []
            for i, ((a, b), (start, cut_to)) in enumerate(zip(pairs, starts)):
                switch = ThemeSwitch(before, THEMES[b].prompts[0], mode, cut_to if mode == "cut" else None)
                video = g.from_prompt(THEMES[a].prompts[0], before + after, cfg.seed + i, latent_shape, start, switch)
                to.append(look_distance(video[before:], looks[b]))
                back.append(look_distance(video[before:], looks[a]))
                if i == 0:
                    strips.setdefault(g.spec.name, []).append((video,))
            to, back = np.mean(to, axis=0), np.mean(back, axis=0)
            modes[mode] = {"to": early_late(to, span), "from": early_late(back, span),
                           "per_chunk": to.reshape(-1, n).mean(1).tolist()}
        results["models"][g.spec.name] = modes
    return results, strips


def format_switches(results: dict) -> str:
    """The theme-switch table: per model and mode, the distance to the new theme's look and to the old one's."""
    r = results["theme_switch"]
    pairs = ", ".join(f"{a}->{b}" for a, b in r["pairs"])
    lines = [f"theme switches ({pairs}; {r['before']} frames from the first theme's start frame, then {r['after']} "
             f"after the switch, no controls held): colour-histogram distance to the new / the old theme, first -> "
             f"last {r['span']} frames after the switch", f"  {'model':<18} {'mode':<8} {'to new':>11}  {'to old':>11}"]
    for name, modes in r["models"].items():
        for mode, m in modes.items():
            lines.append(f"  {name:<18} {mode:<8} {m['to']['early']:.2f}->{m['to']['late']:.2f}  "
                         f"{m['from']['early']:.2f}->{m['from']['late']:.2f}")
    return "\n".join(lines)


def format_prompted(results: dict, key: str = "from_prompt") -> str:
    """The from-a-prompt tables (``key`` "from_start": from a start frame): per model the histogram distance to each
    theme's look, then the token grid (with its references), early -> late."""
    r = results[key]
    refs = ", ".join(f"{name} {v['mean']:.2f}" for name, v in r["references"].items())
    cols = f"  {'model':<18} {'all':>11}  " + "  ".join(f"{t:>11}" for t in r["themes"])

    def row(name: str, m: dict) -> str:
        cells = [f"{m['per_theme'][t]['early']:.2f}->{m['per_theme'][t]['late']:.2f}" for t in r["themes"]]
        return f"  {name:<18} {m['early']:.2f}->{m['late']:.2f}  " + "  ".join(f"{c:>11}" for c in cells)

    lines = [f"from {'a start frame of the theme' if r['from_frame'] else 'a prompt'} ({r['frames']} frames, no "
             f"controls held, {r['streams']} streams per theme): "
             f"colour-histogram distance to the theme, first / last {r['span']} frames (references: {refs})", cols]
    lines += [row(name, m) for name, m in r["models"].items()]
    lines += ["token grid (log power at the token period over its neighbours; 0 = none), first / last "
              f"{r['span']} frames", cols]
    for name, m in r["models"].items():
        g = m["grid"]
        lines.append(row(name, g) + f"   (period {g['period']} px; world {g['world']:+.2f}, codec {g['codec']:+.2f})")
    return "\n".join(lines)


def format_drift(results: dict) -> str:
    """The drift ratios with their bootstrap intervals (models, then the references whose videos are not the ground
    truth's own) and the paired differences (models against the ground truth and each other): the theme drift
    (last / first window) and the paired statistics drift (last / first two chunks)."""
    def interval(v: list[float] | None) -> str:
        return f"[{v[0]:.2f}, {v[1]:.2f}]" if v else "[-]"

    sources = [*results["models"].items(), *((f"({n})", r) for n, r in results["references"].items()
                                             if n not in ("ignores_controls", "mismatched"))]
    level = f"{100 * BOOTSTRAP_LEVEL:.0f}%"
    lines = []
    for key, what, missing in (("drift_theme", "theme drift, last / first window", "no episode keeps one theme"),
                               ("drift_moments", "paired statistics drift, last / first two chunks",
                                "no source differs from the ground truth in every episode's first chunks")):
        rows = [(name, r[key]) for name, r in sources if key in r and r[key]["ratio"] is not None]
        if not rows:
            lines.append(f"{what}: no ratio ({missing})")
            continue
        lines.append(f"{what}, over {len(rows[0][1]['per_episode'])} episodes ({level} bootstrap interval over "
                     f"the episodes; differences paired)")
        lines += [f"  {name:<18} {d['ratio']:.2f} {interval(d['ratio_interval'])}" for name, d in rows]
        lines += [f"  {pair}: {d['ratio_difference']:+.2f} {interval(d['interval'])}"
                  for pair, d in results.get("drift_differences", {}).get(key, {}).items()]
    return "\n".join(lines)


def format_held(results: dict) -> str:
    """The held-command table: per kind, pixels per frame along the command under it / under its mirror, and the
    episodes whose two videos move in opposite directions, the commanded one the world's way."""
    head = (f"held commands ({results['config']['held_frames']} frames): px/frame under the command / its mirror, "
            "episodes reversed")
    lines = [head]
    for name, kinds in results["held_commands"].items():
        cells = [f"{k} {r['px_per_frame'][0]:+5.2f}/{r['px_per_frame'][1]:+5.2f} {r['reversed']}/{r['episodes']}"
                 for k, r in kinds.items()]
        lines.append(f"  {name:<18} " + "   ".join(cells))
    return "\n".join(lines)


def format_table(results: dict) -> str:
    """A plain-text table of the models, then the references: per kind the counterfactual score with its
    detection rate, overall motion agreement, first-chunk PSNR and SSIM, sharpness against the ground truth
    (early / late chunks), paired drift (early / late chunks), theme drift (first / last window) and speed."""
    head = (f"{'model':<18} {'steps':>5}  {'turn':>9} {'move':>9} {'strafe':>9}  {'agree':>5}  {'PSNR1':>5} "
            f"{'SSIM1':>5}  {'sharp early/late':>16}  {'drift early/late':>16}  {'theme first/last':>16}  "
            f"{'PSNR early/late':>15}  {'s/chunk':>7}")
    lines = [head, "-" * len(head)]

    def fmt(v, spec: str) -> str:
        return format(v, spec) if v is not None else format("-", ">" + spec.split(".")[0])

    def kind(c: dict) -> str:
        rate = f"{100 * c['detection_rate']:.0f}%" if c["detection_rate"] is not None else "-"
        return f"{fmt(c['score'], '.2f')}/{rate:>4}"

    def row(name: str, r: dict, steps: str) -> str:
        cf = " ".join(f"{kind(r['counterfactual'][k]):>9}" for k in KINDS)
        pair = {k: f"{fmt(r[k]['early'], f)} / {fmt(r[k]['late'], f)}" for k, f in
                (("drift_moments", ".1f"), ("psnr", ".1f"), ("sharpness", ".2f"))}
        theme = r.get("drift_theme", {})
        theme = f"{fmt(theme.get('first'), '.2f')} / {fmt(theme.get('last'), '.2f')}"
        return (f"{name:<18} {steps:>5}  {cf}  {fmt(r['motion']['all']['agreement'], '5.2f')}  "
                f"{fmt(r['psnr']['first'], '5.1f')} {fmt(r['ssim']['first'], '5.3f')}  {pair['sharpness']:>16}  "
                f"{pair['drift_moments']:>16}  "
                f"{theme:>16}  {pair['psnr']:>15}  {fmt(r.get('seconds_per_chunk'), '7.3f')}")

    lines += [row(name, r, str(r["steps"])) for name, r in results["models"].items()]
    lines += [row(f"({name})", r, "") for name, r in results["references"].items()]
    lines.append("turn/move/strafe: counterfactual score (0.5 = chance: the controls make no difference) / pairs "
                 "with confident motion in both rollouts")
    lines.append("agree: motion agreement, all kinds (its chance level: mismatched)")
    return "\n".join(lines)
