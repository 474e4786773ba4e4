"""Streaming session: the few-step Self Forcing sampler driving the causal DiT one chunk at a time.

Per chunk of N latent frames: :func:`~worldsim.sampling.denoise.denoise_chunk` from seeded noise (the same code
the training rollout runs), then the finished chunk, re-noised to ``context_noise``, runs once more so its K/V
enter the cache. Prompt switches and controls apply at chunk boundaries only.

``defer_cache_write``: that re-run waits for the next step and runs in the same forward as the next chunk's first
denoising step (block-causal between the two chunks). Same numbers up to float rounding, one forward fewer per
chunk: on a CPU with few tokens per frame a forward costs mostly its fixed overhead, so 2N frames cost little more
than N (the toy model: 5 forwards per frame -> about 4.2). Anything else that touches the cache (a prompt switch,
pushed context, guidance on the first denoising step) writes the deferred chunk first.

Control guidance (``SamplerConfig.control_guidance`` = s != 1): each denoising step also runs the chunk with its
controls marked absent (the presence gate closed: the model trained with control dropout predicts the controls'
average effect), prompt, history and reference frame unchanged, and takes ``uncond + s * (cond - uncond)``:
classifier-free guidance on the controls alone, which strengthens how far the frames follow them. Text guidance
(``text_guidance``, the session's ``uncond_prompt``: the empty prompt's embedding, what a model trained with text
dropout sees in its place) does the same with the prompt alone, controls kept: the frames hold the prompt's look.
With both, each adds its own direction: ``cond + (s_c - 1)(cond - no_controls) + (s_t - 1)(cond - no_text)``. All
branches run as one batch: the conditional rows write the cache as an unguided step does, the branches attend to it
with their own chunk in its place (their text K/V kept per session), so on a CPU with few tokens per frame guidance
costs far less than a second forward. ``guided_steps`` limits guidance to some
denoising steps; an unguided first step keeps the deferred cache write in its forward.

Reference start (``SamplerConfig.reference_start`` = k > 0, ``frame_reference`` models): a chunk whose rows all have
a reference frame (the stream's last frame, moved by the controls when the package has a reference flow) skips the
first k denoising steps and starts from that reference noised to step k, ``(1 - sigma_k) ref + sigma_k noise``,
instead of pure noise: k fewer forwards per chunk, and frames that keep what the reference shows where the model
would otherwise re-invent it (docs/EXPERIMENTS.md, "Starting from the reference"). A chunk without a reference (a
stream's first, opened from a prompt alone) runs every step. The training rollout always runs every step: this is a
serving choice.

    session = StreamingSession(model, prompt_embeds, latent_shape=(16, 60, 104), seed=0, window_frames=21)
    latents = session.step()                         # [B, C, N, H, W]
    session.set_prompt(new_embeds, mode="recache")   # applies before the next step
    latents = session.step(controls=...)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..model.control import Controls
from ..model.dit import CausalWanDiT
from .denoise import MoveReference, context_input, denoise_chunk, with_reference
from .schedule import FlowMatchSchedule, SamplerConfig

SWITCH_MODES = ("soft", "recache", "cut")
SINK_POLICIES = ("keep", "refresh")


@dataclass
class _Chunk:
    """A chunk written into the cache: where it starts, its clean latents and the controls it was made with."""

    start: int
    latents: torch.Tensor  # [B, C, n, H, W]
    controls: Controls | None

    @property
    def end(self) -> int:
        return self.start + self.latents.shape[2]

    def frames(self, lo: int, hi: int) -> "_Chunk | None":
        """The part of this chunk inside [lo, hi), or None."""
        a, b = max(lo, self.start), min(hi, self.end)
        if a >= b:
            return None
        i, j = a - self.start, b - self.start
        c = None if self.controls is None else self.controls.slice_frames(i, j)
        return _Chunk(a, self.latents[:, :, i:j], c)


class StreamingSession:
    """One unbounded stream of latent chunks from a causal DiT, with a rolling KV cache.

    prompt_embeds: [B, L, text_dim] text context (B streams generated in lockstep).
    latent_shape: (C, H, W) of one latent frame. window_frames / sink_frames: cache sizes in latent frames
    (see :class:`~worldsim.model.kv_cache.KVCache`). context_latents: optional clean prefix [B, C, F0, H, W]
    (an image or video from the engine) pushed through the cache before the first step. chunk_frames: latent
    frames per step (default: the model's training chunk size; smaller chunks trade quality for latency).
    uncond_prompt: [1 or B, L, text_dim] the empty prompt's embedding, needed by text guidance.
    move_reference: for a ``frame_reference`` model, ``(last [B, C, 1, H, W], controls of the chunk's first frame)
    -> the reference``: e.g. a package's reference flow (:meth:`ReferenceFlow.move_latents`) moves the last frame
    as the controls move the view before the DiT reads it; None: the last frame as it is.
    """

    def __init__(self, model: CausalWanDiT, prompt_embeds: torch.Tensor, *, latent_shape: tuple[int, int, int],
                 seed: int = 0, sink_frames: int = 0, window_frames: int = 21, sampler: SamplerConfig | None = None,
                 context_latents: torch.Tensor | None = None, context_controls: Controls | None = None,
                 chunk_frames: int | None = None, defer_cache_write: bool = False,
                 uncond_prompt: torch.Tensor | None = None,
                 move_reference: MoveReference | None = None):
        self.model = model
        self.move_reference = move_reference
        self.sampler = sampler or SamplerConfig()
        self.schedule = FlowMatchSchedule.from_config(self.sampler)
        self.timesteps = self.schedule.sampling_timesteps(self.sampler)
        self.chunk_frames = chunk_frames or model.cfg.chunk_frames  # other sizes than trained work at inference
        if window_frames < self.chunk_frames:
            raise ValueError(f"window_frames ({window_frames}) must hold at least one chunk "
                             f"({self.chunk_frames} frames)")
        c, h, w = latent_shape
        if c != model.cfg.in_dim:
            raise ValueError(f"latent_shape has {c} channels but the model takes {model.cfg.in_dim}")
        self.latent_shape = (c, h, w)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.prompt = self._check_prompt(prompt_embeds)
        self.batch = self.prompt.shape[0]
        self.uncond_prompt = None
        if self.sampler.text_guidance != 1:
            if uncond_prompt is None:
                raise ValueError("text_guidance needs the empty prompt's embedding (uncond_prompt)")
            self.uncond_prompt = self._check_prompt(uncond_prompt.expand(self.batch, -1, -1))
            if self.uncond_prompt.shape[1] != self.prompt.shape[1]:
                raise ValueError(f"uncond_prompt has {self.uncond_prompt.shape[1]} text tokens, the prompt "
                                 f"{self.prompt.shape[1]}")
        self.cache = model.new_cache(batch=self.batch, height=h, width=w, sink_frames=sink_frames,
                                     window_frames=window_frames)
        self.generator = torch.Generator(self.device).manual_seed(seed)
        self.frame = 0  # absolute index of the next latent frame
        self._history: list[_Chunk] = []  # clean latents of every resident frame (for recache)
        self._last: torch.Tensor | None = None  # [B, C, 1, H, W] the last clean frame (a frame_reference model's input)
        self._held: torch.Tensor | None = None  # the reference of an idle stretch (SamplerConfig.hold_idle_reference)
        self._pending: tuple[torch.Tensor, str, str, torch.Tensor | None] | None = None
        self.defer_cache_write = defer_cache_write
        self._unwritten: _Chunk | None = None  # the last chunk as the cache will see it, its write deferred
        if context_latents is not None:
            self.push_context(context_latents, context_controls)

    # ---- inputs --------------------------------------------------------------------------------------------
    def _check_prompt(self, embeds: torch.Tensor) -> torch.Tensor:
        cfg = self.model.cfg
        if embeds.dim() != 3 or embeds.shape[2] != cfg.text_dim:
            raise ValueError(f"prompt embeddings must be [B, L, {cfg.text_dim}], got {list(embeds.shape)}")
        if hasattr(self, "batch") and embeds.shape[0] != self.batch:
            raise ValueError(f"prompt batch {embeds.shape[0]} does not match the session batch {self.batch}")
        return embeds.to(self.device, self.dtype)

    def set_prompt(self, prompt_embeds: torch.Tensor, mode: str = "soft", sink: str = "keep",
                   start: torch.Tensor | None = None) -> None:
        """Switch the prompt at the next chunk boundary.

        soft: the next chunk attends to the new text; cached frames keep the K/V they were made with.
        recache: the resident frames' K/V are recomputed from their clean latents under the new prompt (sink
        kept, or rewritten too with ``sink="refresh"``) — one extra forward over the window.
        cut: history is dropped (the sink stays); the next chunk sees only the sink and the new text, or, with
        ``start`` (clean latents [B, C, F, H, W], e.g. a frame of the new scene), continues from those frames as a
        new stream continues from its context (they are written under the new prompt, the first as a stream's first).
        """
        if mode not in SWITCH_MODES:
            raise ValueError(f"unknown prompt switch mode {mode!r}; choose one of {SWITCH_MODES}")
        if sink not in SINK_POLICIES:
            raise ValueError(f"unknown sink policy {sink!r}; choose one of {SINK_POLICIES}")
        if start is not None and mode != "cut":
            raise ValueError(f"a start frame needs a 'cut' switch (a {mode!r} switch keeps the history)")
        self._pending = (self._check_prompt(prompt_embeds), mode, sink, start)

    def _apply_pending_prompt(self) -> None:
        if self._pending is None:
            return
        write_deferred([self])  # under the prompt it was made with
        embeds, mode, sink, start = self._pending
        self._pending = None
        self.prompt = embeds
        self.cache.invalidate_text()
        if mode == "cut":
            self.cache.restart_window(self.frame)
            self._prune_history()
            self._held = None
            if start is not None:
                self._last = None  # the start frame has no frame before it, as at a stream's first frame
                self.push_context(start)
        elif mode == "recache":
            self._recache(refresh_sink=sink == "refresh")

    def _recache(self, refresh_sink: bool) -> None:
        cache = self.cache
        first_window = max(cache.origin, self.frame - cache.window)
        sink_end = min(cache.sink, self.frame)
        groups = []
        if refresh_sink:
            groups += [p for ch in self._history if (p := ch.frames(0, sink_end))]
            cache.restart_window(0)
            self._write_clean(groups)
        window = [p for ch in self._history if (p := ch.frames(max(first_window, cache.sink), self.frame))]
        cache.restart_window(window[0].start if window else self.frame)
        self._write_clean(window)

    def _write_clean(self, chunks: list[_Chunk]) -> None:
        for ch in chunks:
            self._write_context(ch)

    def _write_context(self, chunk: _Chunk) -> None:
        """Write a finished chunk's K/V as a generated one enters the cache: re-noised to ``context_noise`` and run
        at that timestep (start frames, pushed context and recache alike)."""
        cn, n = self.sampler.context_noise, chunk.latents.shape[2]
        x = context_input(chunk.latents, lambda: self._noise(n), self.schedule, cn)
        self._forward(x, cn, chunk.start, chunk.controls)

    # ---- generation ----------------------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor, t: float, start: int, controls: Controls | None) -> torch.Tensor:
        return self.model.forward_chunk(x, _timesteps(x, t), self.prompt, self.cache, start, controls)

    def _noise(self, n: int) -> torch.Tensor:
        c, h, w = self.latent_shape
        return torch.randn((self.batch, c, n, h, w), generator=self.generator, device=self.device, dtype=self.dtype)

    def step(self, controls: Controls | None = None) -> torch.Tensor:
        """Generate the next chunk; returns its clean latents [B, C, N, H, W]."""
        return step_sessions([self], [controls])[0]

    def batch_key(self, controls: Controls | None) -> tuple:
        """Sessions whose keys are equal can take their next step together in :func:`step_sessions`."""
        return (id(self.model), self.chunk_frames, self.latent_shape, self.prompt.shape[1], self.batch, self.sampler,
                None if controls is None else controls.signature(), self.defer_cache_write)

    @torch.no_grad()
    def push_context(self, latents: torch.Tensor, controls: Controls | None = None) -> None:
        """Write clean latents [B, C, F, H, W] (an image or video prefix) into the cache, chunk by chunk."""
        c, h, w = self.latent_shape
        if latents.dim() != 5 or tuple(latents.shape[:2]) != (self.batch, c) or tuple(latents.shape[3:]) != (h, w):
            raise ValueError(f"context latents must be [{self.batch}, {c}, F, {h}, {w}], got {list(latents.shape)}")
        latents = latents.to(self.device, self.dtype)
        write_deferred([self])
        self._held = None  # an idle stretch from here holds the pushed frames' last
        for a in range(0, latents.shape[2], self.chunk_frames):
            b = min(a + self.chunk_frames, latents.shape[2])
            ctrl = self._chunk_controls(None if controls is None else controls.slice_frames(a, b), b - a)
            self._commit(_Chunk(self.frame, latents[:, :, a:b], ctrl))
            self._last = latents[:, :, b - 1:b]

    def _chunk_controls(self, controls: Controls | None, n: int, last: torch.Tensor | None = None
                        ) -> Controls | None:
        """The next chunk's controls, with its reference frame when the model takes one: ``last`` (default the
        stream's last frame), moved by the controls."""
        if not self.model.cfg.frame_reference:
            return controls
        last = self._last if last is None else last
        return with_reference(controls, last, (self.batch, self.latent_shape[0], n, *self.latent_shape[1:]),
                              device=self.device, dtype=self.dtype, move=self.move_reference)

    def _step_controls(self, controls: Controls | None) -> Controls | None:
        """A generated chunk's controls. With ``SamplerConfig.hold_idle_reference``, a chunk whose first frame
        holds nothing takes the reference its idle stretch began with (the stream's first frame after it), not the
        last generated frame: in a world that does not move by itself, holding nothing leaves the view as it was,
        and re-reading the model's own re-generations of a still view only compounds their errors. It freezes
        whatever a world does on its own while idle, so it is for such worlds only (the toy world)."""
        if self.sampler.hold_idle_reference and self.model.cfg.frame_reference:
            if holds_still(controls):
                self._held = self._last if self._held is None else self._held
                return self._chunk_controls(controls, self.chunk_frames, self._held)
            self._held = None
        return self._chunk_controls(controls, self.chunk_frames)

    def _commit(self, chunk: _Chunk) -> None:
        """Write a finished chunk's K/V into the cache and remember its latents."""
        self._write_context(chunk)
        self._history.append(chunk)
        self.frame = chunk.end
        self._prune_history()

    def _prune_history(self) -> None:
        """Forget chunks that have left the cache (a deferred chunk, not written yet, stays)."""
        cache = self.cache
        self._history = [ch for ch in self._history
                         if any(cache.is_resident(f) or f >= cache.end for f in range(ch.start, ch.end))]


@torch.no_grad()
def step_sessions(sessions: list[StreamingSession], controls: list[Controls | None]) -> list[torch.Tensor]:
    """Generate the next chunk of every session, batched: one model forward per denoising step for all of them
    (see :meth:`CausalWanDiT.forward_chunks`). The sessions must share a :meth:`StreamingSession.batch_key`; each
    keeps its own cache, position, prompt, noise generator and controls. Returns each one's clean latents. With
    ``defer_cache_write`` the sessions' previous chunks are written by this step's first forward.
    """
    first = sessions[0]
    if len({s.batch_key(c) for s, c in zip(sessions, controls)}) > 1:
        raise ValueError("sessions stepped together must share model, chunk size, latent shape, text length, "
                         "sampler and control sources")
    if any(s._pending is not None for s in sessions):
        write_deferred(sessions)  # all in one forward, each under the prompt it was made with, before any switch
    for s in sessions:
        s._apply_pending_prompt()
    controls = [s._step_controls(c) for s, c in zip(sessions, controls)]  # after a cut's start
    n, model, schedule = first.chunk_frames, first.model, first.schedule
    caches, starts = [s.cache for s in sessions], [s.frame for s in sessions]
    prompt = torch.cat([s.prompt for s in sessions]) if len(sessions) > 1 else first.prompt
    ctrl = Controls.cat(controls)

    guided = unconditional_branches(sessions, prompt, ctrl)
    guided_steps = range(len(first.timesteps)) if first.sampler.guided_steps is None else first.sampler.guided_steps
    skip = reference_start(sessions)  # the first denoising step this chunk runs
    deferred = [s._unwritten for s in sessions]
    merge = not (guided and skip in guided_steps) and all(d is not None for d in deferred)
    if merge:
        try:
            joined = _join_frames(Controls.cat([d.controls for d in deferred]), ctrl)
        except ValueError:  # the chunks carry different kinds of controls: write the deferred ones on their own
            merge = False
    if not merge:
        write_deferred(sessions)
    if guided:  # every branch in one batch: the conditional rows, then each unconditional branch's
        k = 1 + len(guided)
        branch_prompt = torch.cat([prompt] + [p for _, p, _ in guided])
        branch_controls = Controls.cat([ctrl] + [c for _, _, c in guided])
    step = [skip - 1]

    def forward(x: torch.Tensor, t: float) -> torch.Tensor:
        step[0] += 1
        if merge and step[0] == skip:  # the deferred chunks' cache write rides along with this first step
            prev = torch.cat([d.latents for d in deferred])
            tt = torch.cat([_timesteps(prev, cn), _timesteps(x, t)], dim=1)
            out = model.forward_chunks(torch.cat([prev, x], dim=2), tt, prompt, caches, [d.start for d in deferred],
                                       joined, history=n)
            return out[:, :, n:]
        if not guided or step[0] not in guided_steps:
            return model.forward_chunks(x, _timesteps(x, t), prompt, caches, starts, ctrl)
        # guidance: the conditional rows write as any step does (later steps and the re-run overwrite it); each
        # branch attends to the same cache with its own chunk in their place
        xx = torch.cat([x] * k)
        cond, *uncond = model.forward_chunks(xx, _timesteps(xx, t), branch_prompt, caches * k, starts * k,
                                             branch_controls).chunk(k)
        return cond + sum((scale - 1) * (cond - u) for (scale, _, _), u in zip(guided, uncond))

    def noise() -> torch.Tensor:
        parts = [s._noise(n) for s in sessions]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    cn = first.sampler.context_noise
    x0 = denoise_chunk(lambda x, t, _exit: forward(x, t), noise, schedule, first.timesteps[skip:],
                       start=ctrl.reference if skip else None)
    x_ctx = context_input(x0, noise, schedule, cn)  # the chunk as the cache will see it
    for s in sessions:  # only now: a step that failed leaves them to be written by the next one
        s._unwritten = None
    if first.defer_cache_write:
        rows = [s.batch for s in sessions]
        for s, x, c in zip(sessions, x_ctx.split(rows), controls):
            s._unwritten = _Chunk(s.frame, x, c)
    else:
        model.forward_chunks(x_ctx, _timesteps(x_ctx, cn), prompt, caches, starts, ctrl)  # the re-run writes the K/V
    out = list(x0.split([s.batch for s in sessions]))
    for s, latents, c in zip(sessions, out, controls):
        s._history.append(_Chunk(s.frame, latents, c))
        s._last = latents[:, :, -1:]
        s.frame += n
        s._prune_history()
    return out


def reference_start(sessions: list[StreamingSession]) -> int:
    """Denoising steps the sessions' next chunk skips (``SamplerConfig.reference_start``): only for a
    ``frame_reference`` model when every session has a last frame to start from (a stream's first chunk without a
    start frame has none and runs every step). Read from the sessions, not the reference tensor: no device sync."""
    first = sessions[0]
    if not first.model.cfg.frame_reference or any(s._last is None for s in sessions):
        return 0
    return first.sampler.reference_start


def holds_still(controls: Controls | None) -> bool:
    """True when the first frame of ``controls`` holds nothing: no controls, marked absent, or every key, axis and
    embedding value zero (in every row of the batch)."""
    if controls is None or not controls.sources():
        return True
    if controls.present is not None and not bool(controls.present[:, :1].any()):
        return True
    return all(not bool(t[:, :1].any()) for t in controls.sources())


def unconditional_branches(sessions: list[StreamingSession], prompt: torch.Tensor, controls: Controls | None
                           ) -> list[tuple[float, torch.Tensor, Controls | None]]:
    """The guidance branches of a step, as (scale, prompt, controls): the controls marked absent (control guidance,
    when there are controls to guide), the empty prompt (text guidance). Empty without guidance."""
    sampler, out = sessions[0].sampler, []
    absent = without_controls(controls)
    if sampler.control_guidance != 1 and absent is not None:
        out.append((sampler.control_guidance, prompt, absent))
    if sampler.text_guidance != 1:
        uncond = [s.uncond_prompt for s in sessions]
        out.append((sampler.text_guidance, torch.cat(uncond) if len(uncond) > 1 else uncond[0], controls))
    return out


def write_deferred(sessions: list[StreamingSession]) -> None:
    """Write the deferred chunks of these sessions now, on their own (see ``defer_cache_write``): one batched
    forward for all that have one, or each alone when they were made under different kinds of controls."""
    pending = [s for s in sessions if s._unwritten is not None]
    if not pending:
        return
    chunks = [s._unwritten for s in pending]
    try:
        ctrl = Controls.cat([c.controls for c in chunks])
    except ValueError:
        for s in pending:
            write_deferred([s])
        return
    x, cn = torch.cat([c.latents for c in chunks]), pending[0].sampler.context_noise
    pending[0].model.forward_chunks(x, _timesteps(x, cn), torch.cat([s.prompt for s in pending]),
                                    [s.cache for s in pending], [c.start for c in chunks], ctrl)
    for s in pending:
        s._unwritten = None


def _timesteps(x: torch.Tensor, t: float) -> torch.Tensor:
    """Timestep t for every frame of latents x [B, C, F, H, W] -> [B, F] float32."""
    return torch.full((x.shape[0], x.shape[2]), t, device=x.device, dtype=torch.float32)


def _join_frames(a: Controls | None, b: Controls | None) -> Controls | None:
    """The controls of two consecutive chunks of equal length as one. A chunk without control sources takes the
    other's, marked absent (zeros behind a closed presence gate: exactly no offset, as with none). Raises
    ValueError when both carry sources of different kinds."""
    def absent_like(c: Controls | None, like: Controls) -> Controls:
        if c is not None and c.sources():
            return c
        zeros = [None if t is None else torch.zeros_like(t) for t in (like.keys, like.axes, like.embedding)]
        present = torch.zeros(like.sources()[0].shape[:2], dtype=torch.bool, device=like.sources()[0].device)
        return Controls(*zeros, present, None if c is None else c.reference)

    if a is not None and a.sources():
        b = absent_like(b, a)
    elif b is not None and b.sources():
        a = absent_like(a, b)
    return Controls.cat([a, b], frames=True)


def without_controls(controls: Controls | None) -> Controls | None:
    """The same controls marked absent in every frame (the reference frame kept), or None when none are given."""
    if controls is None or not controls.sources():
        return None
    b, f = controls.sources()[0].shape[:2]
    absent = torch.zeros(b, f, dtype=torch.bool, device=controls.sources()[0].device)
    return dataclasses.replace(controls, present=absent)
