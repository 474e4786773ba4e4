"""Invariants of the two forward paths: KV-cache streaming equals the block-causal full-clip forward, rolling keeps
memory constant and matches a fresh forward over the retained frames, and streams run past Wan's 1024-frame table."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, text
from worldsim.model.dit import block_causal_mask
from worldsim.model.rope import apply_rope, axis_split, rope_table
from worldsim.sampling.schedule import SamplerConfig
from worldsim.sampling.session import StreamingSession

H, W = 4, 6  # latent grid -> 2x3 = 6 tokens per frame


def clip(frames: int, batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, frames, H, W, generator=g)
    t = (torch.rand(batch, frames // 3, generator=g) * 1000).repeat_interleave(3, dim=1)  # one timestep per chunk
    return x, t


def stream(model, x, t, ctx, sink=0, window=None, chunk=3):
    """Feed x chunk by chunk through a fresh cache; returns the concatenated per-chunk outputs."""
    cache = model.new_cache(batch=x.shape[0], height=H, width=W, sink_frames=sink,
                            window_frames=window or x.shape[2])
    outs = [model.forward_chunk(x[:, :, s:s + chunk], t[:, s:s + chunk], ctx, cache, s)
            for s in range(0, x.shape[2], chunk)]
    return torch.cat(outs, dim=2), cache


@torch.no_grad()
def test_streaming_equals_block_causal_full_clip():
    model, ctx = make_model(), text(2)
    x, t = clip(15, batch=2)  # 5 chunks of 3 latent frames
    full = model(x, t, ctx)
    streamed, _ = stream(model, x, t, ctx)
    assert (streamed - full).abs().max() < 1e-5
    # the mask matters: a bidirectional forward over the same clip differs
    assert (model(x, t, ctx, chunk_frames=15) - full).abs().max() > 1e-3


@torch.no_grad()
def test_rolling_window_with_sink_equals_local_block_causal_mask():
    """54 chunks through a ring of sink 2 + window 7 frames equal the full clip under the local-window mask."""
    model, ctx = make_model(num_layers=3), text()
    x, t = clip(162)
    full = model(x, t, ctx, sink_frames=2, window_frames=7)
    streamed, cache = stream(model, x, t, ctx, sink=2, window=7)
    assert cache.resident_frames == 9
    assert (streamed - full).abs().max() < 1e-5


@torch.no_grad()
def test_rolling_keeps_memory_constant_and_matches_fresh_forward_over_retained_frames():
    """With one layer, each frame's K/V depend only on that frame, so after 50+ chunks the newest chunk equals a
    fresh forward over just the retained sink + window frames at their original positions."""
    model, ctx = make_model(num_layers=1), text()
    sink, window, chunks = 3, 9, 55
    x, t = clip(3 * chunks)
    cache = model.new_cache(batch=1, height=H, width=W, sink_frames=sink, window_frames=window)
    storage = None
    for s in range(0, 3 * chunks, 3):
        last = model.forward_chunk(x[:, :, s:s + 3], t[:, s:s + 3], ctx, cache, s)
        now = (cache.k.data_ptr(), cache.v.data_ptr(), cache.cross_k.data_ptr(), cache.nbytes())
        assert now == (storage or now)  # allocated once (text K/V on the first chunk), never grown or moved
        storage = now
    end = 3 * chunks
    kept = torch.cat([torch.arange(sink), torch.arange(end - window, end)])
    fresh = model(x[:, :, kept], t[:, kept], ctx, frame_positions=kept, chunk_frames=len(kept))
    assert (fresh[:, :, -3:] - last).abs().max() < 1e-5


@torch.no_grad()
def test_a_cache_listed_twice_gives_its_branch_the_first_listings_keys_and_writes_only_the_first():
    """Guidance runs a chunk's branches in one forward over one cache listed per branch: the first listing writes as
    forward_chunk does, a later one attends to the same keys with its own chunk's K/V (what write=False gives) and
    stores nothing; the branch's text K/V are computed once for repeated contexts."""
    import copy

    model, ctx = make_model(), text()
    empty = torch.zeros_like(ctx)
    x, t = clip(18)  # 5 chunks of history, in a ring that has rolled over (window 9), then the branched chunk
    _, cache = stream(model, x[:, :, :15], t[:, :15], ctx, sink=2, window=9)
    writer, reader = copy.deepcopy(cache), copy.deepcopy(cache)
    chunk, tc = x[:, :, 15:], t[:, 15:]
    cond = model.forward_chunk(chunk, tc, ctx, writer, 15)
    uncond = model.forward_chunk(chunk, tc, empty, reader, 15, write=False)
    calls, text_kv = [], model._text_kv

    def counted(c):
        calls.append(c.shape[0])
        return text_kv(c)

    model._text_kv = counted
    for _ in range(2):
        both = model.forward_chunks(torch.cat([chunk, chunk]), torch.cat([tc, tc]), torch.cat([ctx, empty]),
                                    [cache, cache], [15, 15])
        assert torch.allclose(both[:1], cond, atol=1e-5) and torch.allclose(both[1:], uncond, atol=1e-5)
        # the cache holds the first listing's K/V (the branch's differ from layer 1 on, where the text has acted)
        assert torch.allclose(cache.k, writer.k, atol=1e-5) and torch.allclose(cache.v, writer.v, atol=1e-5)
        assert cache.end == writer.end
    assert calls == [1]  # the empty prompt's K/V, once; the prompt's were already in the cache
    with pytest.raises(ValueError, match="listed twice"):
        model.forward_chunks(torch.cat([x[:, :, 12:18]] * 2), torch.cat([t[:, 12:18]] * 2), torch.cat([ctx, empty]),
                             [cache, cache], [12, 12], history=3)


def test_rope_tables_first_made_while_serving_also_serve_training():
    """The daemon steps under inference mode; the RoPE tables it caches must not be inference tensors, which
    autograd refuses to save (a grid size no other test uses, so the tables are made here first)."""
    model, ctx = make_model(), text()
    x = torch.randn(1, 4, 3, 6, 10)
    t = torch.full((1, 3), 500.0)
    with torch.inference_mode():
        cache = model.new_cache(batch=1, height=6, width=10, sink_frames=0, window_frames=3)
        model.forward_chunk(x, t, ctx, cache, 0)
    model(x, t, ctx).square().mean().backward()  # the clip path: rope_table's height/width part
    cache = model.new_cache(batch=1, height=6, width=10, sink_frames=0, window_frames=3)
    model.forward_chunk(x, t, ctx, cache, 0, write=False).square().mean().backward()  # the cached chunk table
    assert all(p.grad is not None for p in model.blocks[0].self_attn.q.parameters())


@torch.no_grad()
def test_session_runs_past_1024_latent_frames():
    model = make_model(num_layers=1)
    session = StreamingSession(model, text(), latent_shape=(4, 2, 2), seed=0, sink_frames=3, window_frames=6,
                               sampler=SamplerConfig(denoising_steps=(1000,)))
    session.step()
    nbytes = session.cache.nbytes()
    while session.frame < 1040:
        out = session.step()
    assert session.frame >= 1040 and torch.isfinite(out).all()
    assert session.cache.nbytes() == nbytes


def test_rope_matches_wan_complex_table_and_extends_past_it():
    """Wan builds polar(1, pos * theta^(-2i/D)) tables of 1024 rows per axis and multiplies interleaved complex pairs."""
    head_dim, h, w = 24, 3, 4
    dt, dh, dw = axis_split(head_dim)

    def table(n, d):
        return torch.polar(torch.ones(n, d // 2, dtype=torch.float64),
                           torch.outer(torch.arange(n, dtype=torch.float64),
                                       1.0 / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)))

    ft, fh, fw = table(1024, dt), table(1024, dh), table(1024, dw)
    positions = torch.tensor([0, 5, 1023])
    freqs = torch.cat([ft[positions][:, None, None].expand(3, h, w, -1), fh[:h][None, :, None].expand(3, h, w, -1),
                       fw[:w][None, None, :].expand(3, h, w, -1)], dim=-1).reshape(3 * h * w, -1)
    x = torch.randn(2, 3 * h * w, 2, head_dim)
    ref = torch.view_as_real(torch.view_as_complex(x.double().reshape(2, -1, 2, head_dim // 2, 2)) * freqs[None, :, None]).flatten(3)
    ours = apply_rope(x, rope_table(head_dim, positions, h, w))
    assert (ours - ref.float()).abs().max() < 1e-5
    # beyond the table: still a rotation (norm-preserving), and attention depends only on position differences
    far = rope_table(head_dim, torch.tensor([5000, 5001]), 1, 1)
    near = rope_table(head_dim, torch.tensor([10, 11]), 1, 1)
    q, k = torch.randn(1, 1, 1, head_dim), torch.randn(1, 1, 1, head_dim)
    dot = lambda table: (apply_rope(q, table[1:]) * apply_rope(k, table[:1])).sum()
    assert torch.allclose(dot(far), dot(near), atol=1e-4)


def test_block_causal_mask_rules():
    m = block_causal_mask(9, 3, sink_frames=1, window_frames=4, tokens_per_frame=1, device="cpu").allowed
    # chunk 0 (frames 0-2) sees frames 0-2; chunk 2 (frames 6-8, ends at 9) sees sink frame 0 and frames 5-8
    assert m[0].tolist() == [True] * 3 + [False] * 6
    assert m[7].tolist() == [True, False, False, False, False, True, True, True, True]
