"""The causal Wan2.1 DiT (Self Forcing's student), with Wan's original parameter names.

One model, two forward paths that give the same numbers:
- ``forward``: a whole clip under a block-causal frame mask (training; chunks of ``chunk_frames`` latent frames,
  optional sink + local window).
- ``forward_chunk``: one chunk against a preallocated :class:`KVCache` (streaming inference).

Shapes: latents [B, C, F, H, W]; per-frame timesteps t [B, F]; text context [B, L_text, text_dim];
tokens per latent frame T = (H/2)(W/2). The network predicts the flow v = noise - x0.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import FrameMask, attention
from .config import DiTConfig
from .control import ControlEmbedding, Controls
from .kv_cache import KVCache
from .reference_warp import ReferenceWarp
from .rope import apply_rope, rope_table


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Wan's timestep embedding in float64: [cos(t w_k) | sin(t w_k)], w_k = 10000^(-k/(dim/2)). t: [N] -> [N, dim]."""
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = t.to(torch.float64)[:, None] * freqs
    return torch.cat([args.cos(), args.sin()], dim=1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalised in float32 (one fused kernel), then scaled in the input dtype, as Wan does
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


class Attention(nn.Module):
    """Wan self/cross-attention projections: q, k, v, o (with bias) and RMSNorm over the full width of q and k."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.dim
        self.num_heads = cfg.num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.norm_q = RMSNorm(d, cfg.eps) if cfg.qk_norm else nn.Identity()
        self.norm_k = RMSNorm(d, cfg.eps) if cfg.qk_norm else nn.Identity()

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, -1))  # [B, L, dim] -> [B, L, H, D]


class Block(nn.Module):
    """Self-attention (adaLN-modulated, gated) -> text cross-attention (affine LayerNorm, no gate) -> FFN (modulated, gated)."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.self_attn = Attention(cfg)
        self.norm3 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=True) if cfg.cross_attn_norm else nn.Identity()
        self.cross_attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)

    def text_kv(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys and values of the embedded text ctx [B, L, dim] -> two [B, L, H, D]."""
        ca = self.cross_attn
        return ca.heads(ca.norm_k(ca.k(ctx))), ca.heads(ca.v(ctx))

    def forward(self, x, e0, frames, rope, self_attend, text_k, text_v, backend):
        """x: [B, F*T, dim]; e0: [B, F, 6, dim] float32; self_attend(q, k, v) -> self-attention output over this
        chunk's (or clip's) k, v and whatever cache or mask applies; text_k, text_v: [B, L, H, D]."""
        b, n, d = x.shape
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = (self.modulation[:, None] + e0).chunk(6, dim=2)

        def modulate(h, shift, scale):  # per-frame adaLN: h [B, F*T, dim], shift/scale [B, F, 1, dim]
            return (h.float().view(b, frames, -1, d) * (1 + scale) + shift).view(b, n, d).type_as(x)

        def gated(y, gate):
            return (y.float().view(b, frames, -1, d) * gate).view(b, n, d)

        sa = self.self_attn
        h = modulate(self.norm1(x), shift_sa, scale_sa)
        q = apply_rope(sa.heads(sa.norm_q(sa.q(h))), rope)
        k = apply_rope(sa.heads(sa.norm_k(sa.k(h))), rope)
        y = sa.o(self_attend(q, k, sa.heads(sa.v(h))).flatten(2))
        x = (x.float() + gated(y, gate_sa)).type_as(x)

        ca = self.cross_attn
        q = ca.heads(ca.norm_q(ca.q(self.norm3(x))))
        x = x + ca.o(attention(q, text_k, text_v, None, backend).flatten(2))

        y = self.ffn(modulate(self.norm2(x), shift_ff, scale_ff))
        return (x.float() + gated(y, gate_ff)).type_as(x)


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        out = math.prod(cfg.patch_size) * cfg.out_dim
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, out)
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor, frames: int) -> torch.Tensor:
        """x: [B, F*T, dim]; e: [B, F, dim] float32 (time_embedding output, not the projection)."""
        b, n, d = x.shape
        shift, scale = (self.modulation[:, None] + e[:, :, None]).chunk(2, dim=2)  # [B, F, 1, dim] each
        h = (self.norm(x).float().view(b, frames, -1, d) * (1 + scale) + shift).view(b, n, d).type_as(x)
        return self.head(h)


class CausalWanDiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        self.control_embedding = ControlEmbedding(cfg.control, d) if cfg.control is not None else None
        # the reference frame in its own patch embedding, zero-initialised: added to the tokens, it starts as a no-op
        self.reference_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size) \
            if cfg.frame_reference else None
        self.reference_warp = None
        if cfg.reference_warp:
            if cfg.control is None:
                raise ValueError("reference_warp moves the reference by the controls: the model needs a control module")
            self.reference_warp = ReferenceWarp(cfg.in_dim, cfg.control.frames_per_latent * cfg.control.frame_dim,
                                                cfg.reference_warp)
        self.attn_backend = "auto"
        self.gradient_checkpointing = False
        self.init_weights()

    # ---- setup ---------------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Wan's initialisation (for training from scratch); the control path stays zero-initialised."""
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and not name.startswith("control_embedding"):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for seq in (self.text_embedding, self.time_embedding):
            for m in seq:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        if self.reference_embedding is not None:
            nn.init.zeros_(self.reference_embedding.weight)
            nn.init.zeros_(self.reference_embedding.bias)
        if self.reference_warp is not None:
            self.reference_warp.zero_output()

    def tokens_per_frame(self, height: int, width: int) -> int:
        _, ph, pw = self.cfg.patch_size
        if height % ph or width % pw:
            raise ValueError(f"latent size {height}x{width} is not divisible by the patch size {ph}x{pw}")
        return (height // ph) * (width // pw)

    def new_cache(self, *, batch: int, height: int, width: int, sink_frames: int, window_frames: int,
                  device=None, dtype=None) -> KVCache:
        p = next(self.parameters())
        return KVCache(num_layers=self.cfg.num_layers, batch=batch, num_heads=self.cfg.num_heads,
                       head_dim=self.cfg.head_dim, tokens_per_frame=self.tokens_per_frame(height, width),
                       sink_frames=sink_frames, window_frames=window_frames,
                       device=device or p.device, dtype=dtype or p.dtype)

    # ---- shared pieces -------------------------------------------------------------------------------------
    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> None:
        cfg = self.cfg
        if x.dim() != 5 or x.shape[1] != cfg.in_dim:
            raise ValueError(f"latents must be [B, {cfg.in_dim}, F, H, W], got {list(x.shape)}")
        if tuple(t.shape) != (x.shape[0], x.shape[2]):
            raise ValueError(f"timesteps must be [B, F] = {[x.shape[0], x.shape[2]]}, got {list(t.shape)}")
        if context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[2] != cfg.text_dim:
            raise ValueError(f"text context must be [B, L, {cfg.text_dim}] with B={x.shape[0]}, got {list(context.shape)}")

    def _embed(self, x, t, controls):
        """Patchify and build per-frame modulation. Returns tokens [B, F*T, dim], e [B, F, dim], e0 [B, F, 6, dim]."""
        b, _, f, _, _ = x.shape
        patches = self.patch_embedding(x)  # [B, dim, F, H/2, W/2]
        features = None  # the control MLP's input [B, F, D] and presence gate [B, F, 1]
        if controls is not None and not controls.is_empty():
            if self.control_embedding is None:
                raise ValueError("controls were given but this model has no control module (config.control is None)")
            features = self.control_embedding.features(controls, b, f)
        reference = None if controls is None else controls.reference
        if self.reference_embedding is not None and reference is not None:
            if reference.shape != x.shape:
                raise ValueError(f"controls.reference must have the latents' shape {list(x.shape)}, "
                                 f"got {list(reference.shape)}")
            reference = reference.to(x.dtype)
            if self.reference_warp is not None and features is not None:
                reference = self.reference_warp(reference, *features)
            patches = patches + self.reference_embedding(reference)
        tokens = patches.flatten(2).transpose(1, 2)  # [B, F*T, dim], frame-major then h, w
        w = self.time_embedding[0].weight
        e = self.time_embedding(sinusoidal_embedding(t.flatten(), self.cfg.freq_dim).to(w.dtype)).float().view(b, f, -1)
        if features is not None:
            e = e + self.control_embedding(*features).float()
        e0 = self.time_projection(e.to(w.dtype)).float().unflatten(-1, (6, -1))  # [B, F, 6, dim]
        return tokens, e, e0

    def _unpatchify(self, out: torch.Tensor, f: int, h: int, w: int) -> torch.Tensor:
        """[B, F*h'*w', pt*ph*pw*C] -> [B, C, F, H, W]."""
        pt, ph, pw = self.cfg.patch_size
        b, c = out.shape[0], self.cfg.out_dim
        out = out.view(b, f, h // ph, w // pw, pt, ph, pw, c)
        return torch.einsum("bfhwpqrc->bcfphqwr", out).reshape(b, c, f * pt, h, w)

    def _run_blocks(self, x, e0, frames, rope, self_attend, text_kv):
        """self_attend(i) -> layer i's self-attention function; text_kv: per-layer (k, v) of the text."""
        for i, block in enumerate(self.blocks):
            args = (x, e0, frames, rope, self_attend(i), *text_kv[i], self.attn_backend)
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)
        return x

    def _text_kv(self, context: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        ctx = self.text_embedding(context)
        return [block.text_kv(ctx) for block in self.blocks]

    # ---- training path: whole clip, block-causal ------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *, start_frame: int = 0,
                frame_positions: torch.Tensor | None = None, chunk_frames: int | None = None, sink_frames: int = 0,
                window_frames: int | None = None, controls: Controls | None = None, cache: KVCache | None = None,
                write: bool = True) -> torch.Tensor:
        """Flow prediction for a whole clip; frame i attends to frames of its own and earlier chunks.

        chunk_frames: chunk size in latent frames (default cfg.chunk_frames; F gives full attention).
        window_frames / sink_frames: optional local window, as in :class:`KVCache`.
        frame_positions: [F] RoPE time positions (default start_frame + arange(F)).
        cache: run :meth:`forward_chunk` instead (x is one chunk at ``start_frame``), so that training wrappers
        (DDP, FSDP), which only see calls of the module itself, also see streaming forwards.
        """
        if cache is not None:
            if frame_positions is not None or chunk_frames is not None or sink_frames or window_frames is not None:
                raise ValueError("with a cache, positions and the attention window come from the cache")
            return self.forward_chunk(x, t, context, cache, start_frame, controls, write=write)
        self._check_inputs(x, t, context)
        b, _, f, h, w = x.shape
        tpf = self.tokens_per_frame(h, w)
        if frame_positions is None:
            frame_positions = torch.arange(start_frame, start_frame + f, device=x.device)
        mask = block_causal_mask(f, chunk_frames or self.cfg.chunk_frames, sink_frames, window_frames, tpf, x.device)
        rope = rope_table(self.cfg.head_dim, frame_positions.to(x.device), h // self.cfg.patch_size[1],
                          w // self.cfg.patch_size[2])
        tokens, e, e0 = self._embed(x, t, controls)
        mask = None if mask.allowed.all() else mask
        backend = self.attn_backend
        out = self._run_blocks(tokens, e0, f, rope, lambda i: (lambda q, k, v: attention(q, k, v, mask, backend)),
                               self._text_kv(context))
        return self._unpatchify(self.head(out, e, f), f, h, w)

    # ---- inference path: one chunk against the KV cache ----------------------------------------------------
    def forward_chunk(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, cache: KVCache, start_frame: int,
                      controls: Controls | None = None, *, write: bool = True) -> torch.Tensor:
        """Flow prediction for frames [start_frame, start_frame + F); writes their K/V into ``cache``.

        Re-running the same chunk (next denoising step, or the clean re-run) overwrites its own slots.
        write=False attends to the same keys without touching the cache (text K/V are computed from ``context``):
        a forward that carries gradient (Self Forcing's exit step) must not store into the shared buffers.
        """
        return self.forward_chunks(x, t, context, [cache], [start_frame], controls, write=write)

    def forward_chunks(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, caches: list[KVCache],
                       starts: list[int], controls: Controls | None = None, *, write: bool = True,
                       history: int = 0) -> torch.Tensor:
        """:meth:`forward_chunk` for several independent streams in one batch (the daemon batches sessions).

        The batch rows are split over ``caches`` in order (cache j holds its own batch of rows), each stream at its
        own ``starts[j]``. Every layer's projections and MLPs run once over the whole batch; self-attention runs per
        cache, over that cache's resident frames. With one cache this is exactly :meth:`forward_chunk`.
        A cache listed again (a guidance branch of the same stream: other text or controls) attends to what the
        first listing's rows attend to, with its own chunk's K/V in place of theirs, and writes nothing; its text
        K/V are kept in the cache by context (:meth:`KVCache.branch_text_kv`).
        history: the first ``history`` frames of x are a finished chunk whose K/V are stored, the rest the next
        chunk's first denoising step, attended to but not stored; each part sees what it would in a forward of its
        own (:meth:`KVCache.begin_with_next`).
        """
        self._check_inputs(x, t, context)
        b, _, f, h, w = x.shape
        rows = [c.k.shape[1] for c in caches]
        tpf = self.tokens_per_frame(h, w)
        if sum(rows) != b or any(c.tokens_per_frame != tpf for c in caches) or len(starts) != len(caches):
            built = " + ".join(str(r) for r in rows)
            raise ValueError(f"cache was built for batch {built} and {[c.tokens_per_frame for c in caches]} tokens per "
                             f"frame ({len(starts)} starts); got batch {b} and latents {h}x{w}")
        bounds = [(sum(rows[:j]), sum(rows[:j + 1])) for j in range(len(caches))]
        masks = [None] * len(caches)
        if history and not write:
            raise ValueError("a forward with history frames writes them: write=False does not apply")
        if write:
            reads, texts, listed = [], [], set()
            for j, (c, start, (lo, hi)) in enumerate(zip(caches, starts, bounds)):
                if id(c) in listed:
                    if history:
                        raise ValueError("a cache listed twice (a guidance branch) cannot take history frames")
                    reads.append(c.overlay(start, f))
                    texts.append(c.branch_text_kv(context[lo:hi], self._text_kv))
                    continue
                listed.add(id(c))
                if history:
                    read, masks[j] = c.begin_with_next(start, history, f - history)
                else:
                    c.begin(start, f)
                    read = c.write_read
                if not c.cross_valid:
                    c.set_text(self._text_kv(context[lo:hi]))
                reads.append(read)
                texts.append(c.text_kv())
            text_kv = texts[0] if len(texts) == 1 else [(torch.cat([kv[i][0] for kv in texts]),
                                                         torch.cat([kv[i][1] for kv in texts]))
                                                        for i in range(len(self.blocks))]
        else:
            reads, text_kv = [c.overlay(start, f) for c, start in zip(caches, starts)], self._text_kv(context)
        rope = self._chunk_rope(starts, rows, f, h, w, x.device)
        backend = self.attn_backend

        def self_attend(i: int):
            def attend(q, k, v):
                return torch.cat([attention(q[lo:hi], *read(i, k[lo:hi], v[lo:hi]), mask, backend)
                                  for read, mask, (lo, hi) in zip(reads, masks, bounds)])

            return attend

        tokens, e, e0 = self._embed(x, t, controls)
        out = self._run_blocks(tokens, e0, f, rope, self_attend, text_kv)
        return self._unpatchify(self.head(out, e, f), f, h, w)

    def _chunk_rope(self, starts: list[int], rows: list[int], f: int, h: int, w: int, device) -> torch.Tensor:
        """Rotations for a chunk of f frames per stream: [L, D/2] when every stream starts at the same frame, else
        [B, L, D/2] (each stream's rows at its own positions)."""
        ph, pw = self.cfg.patch_size[1], self.cfg.patch_size[2]
        tables = {s: chunk_rope_table(self.cfg.head_dim, s, f, h // ph, w // pw, device) for s in set(starts)}
        if len(tables) == 1:
            return tables[starts[0]]
        return torch.cat([tables[s][None].expand(r, -1, -1) for s, r in zip(starts, rows)])


@functools.lru_cache(maxsize=16)
@torch.inference_mode(False)  # kept across calls: a normal tensor, also when first asked for while serving
def chunk_rope_table(head_dim: int, start: int, frames: int, height: int, width: int, device) -> torch.Tensor:
    """:func:`rope_table` of frames [start, start + frames), kept for the next calls: every denoising step of a
    chunk and its cache re-run sit at the same positions (a few streams' worth are kept)."""
    return rope_table(head_dim, torch.arange(start, start + frames, device=device), height, width)


def block_causal_mask(frames: int, chunk_frames: int, sink_frames: int, window_frames: int | None,
                      tokens_per_frame: int, device) -> FrameMask:
    """Frame mask: query frame i (chunk c, ending at frame e_c) sees key frame j iff j < e_c and
    (no window, or j >= e_c - window, or j < sink)."""
    idx = torch.arange(frames, device=device)
    chunk_end = torch.clamp((idx // chunk_frames + 1) * chunk_frames, max=frames)  # [F]
    allowed = idx[None, :] < chunk_end[:, None]
    if window_frames is not None:
        allowed &= (idx[None, :] >= chunk_end[:, None] - window_frames) | (idx[None, :] < sink_frames)
    return FrameMask(allowed, tokens_per_frame)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
