"""The streaming session: seeded sampling, context prefixes and the three prompt-switch modes."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, text
from worldsim.model.dit import CausalWanDiT
from worldsim.sampling.session import StreamingSession

SHAPE = (4, 4, 6)


def session(model, prompt=None, seed=0, sink=0, window=21, **kw):
    return StreamingSession(model, text() if prompt is None else prompt, latent_shape=SHAPE, seed=seed,
                            sink_frames=sink, window_frames=window, **kw)


@torch.no_grad()
def test_sampler_is_seeded_and_reproducible(model):
    a = [session(model, seed=3).step() for _ in range(1)]
    s1, s2, s3 = session(model, seed=3), session(model, seed=3), session(model, seed=4)
    first = [s1.step() for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(first, [s2.step() for _ in range(3)]))
    assert torch.equal(a[0], first[0])
    assert not torch.allclose(first[0], s3.step())
    assert first[0].shape == (1, 4, 3, 4, 6)


@torch.no_grad()
def test_chunk_uses_the_documented_sampler_steps(model):
    """Re-derive one chunk by hand: noise -> x0 at t=1000 -> re-noise with fresh noise to 937.5 -> ... -> 625."""
    s = session(model, seed=11)
    out = s.step()
    g = torch.Generator().manual_seed(11)
    cache = model.new_cache(batch=1, height=4, width=6, sink_frames=0, window_frames=21)
    x = torch.randn((1, 4, 3, 4, 6), generator=g)
    ts = [1000.0, 937.5, 833.3333333333334, 625.0]
    for i, t in enumerate(ts):
        flow = model.forward_chunk(x, torch.full((1, 3), t), text(), cache, 0)
        x0 = x - t / 1000 * flow
        if i < 3:
            x = (1 - ts[i + 1] / 1000) * x0 + ts[i + 1] / 1000 * torch.randn((1, 4, 3, 4, 6), generator=g)
    assert (out - x0).abs().max() < 1e-5


@torch.no_grad()
def test_context_prefix_starts_the_world(model):
    prefix = torch.randn(1, 4, 4, 4, 6)  # e.g. an engine frame sequence, already encoded
    s = session(model, context_latents=prefix)
    assert s.frame == 4 and s.cache.resident_frames == 4
    with_prefix = s.step()
    without = session(model).step()
    assert not torch.allclose(with_prefix, without)
    with pytest.raises(ValueError, match="context latents"):
        session(model, context_latents=torch.randn(1, 4, 2, 8, 8))


def _run(model, prompts_before, switch_to, mode, sink_frames=0, window=21, **kw):
    """Generate one chunk per prompt in ``prompts_before``, switch with ``mode``, generate one more chunk."""
    s = session(model, prompt=prompts_before[0], sink=sink_frames, window=window)
    for p in prompts_before:
        s.set_prompt(p, "soft")
        s.step()
    s.set_prompt(switch_to, mode, **kw)
    return s, s.step()


@torch.no_grad()
def test_soft_switch_changes_text_but_keeps_cached_history(model):
    p1, p2 = text(seed=1), text(seed=2)
    _, stay = _run(model, [p1, p1, p1], p1, "soft")
    _, soft = _run(model, [p1, p1, p1], p2, "soft")
    _, other_history = _run(model, [p2, p2, p2], p2, "soft")
    assert not torch.allclose(stay, soft)  # the new text acts on the next chunk
    assert not torch.allclose(soft, other_history)  # but old-prompt K/V still shape it


@torch.no_grad()
def test_recache_rewrites_the_window_under_the_new_prompt(model):
    """After a recache, the session equals one that had written the same clean latents under the new prompt."""
    p1, p2 = text(seed=1), text(seed=2)
    a = session(model, prompt=p1)
    for _ in range(3):
        a.step()
    clean = torch.cat([ch.latents for ch in a._history], dim=2)
    state = a.generator.get_state()
    keys_before = a.cache.k.clone()
    a.set_prompt(p2, "recache")
    out = a.step()
    assert not torch.equal(a.cache.k[:, :, : 9 * 6], keys_before[:, :, : 9 * 6])  # window keys were rewritten

    b = session(model, prompt=p2, context_latents=clean)
    b.generator.set_state(state)
    assert (b.step() - out).abs().max() < 1e-5
    soft = session(model, prompt=p1)
    for _ in range(3):
        soft.step()
    soft.set_prompt(p2, "soft")
    assert not torch.allclose(soft.step(), out)


@torch.no_grad()
def test_recache_sink_keep_versus_refresh(model):
    p1, p2 = text(seed=1), text(seed=2)
    keep, out_keep = _run(model, [p1] * 5, p2, "recache", sink_frames=3, window=6, sink="keep")
    refresh, out_refresh = _run(model, [p1] * 5, p2, "recache", sink_frames=3, window=6, sink="refresh")
    sink_tokens = 3 * 6
    assert not torch.allclose(out_keep, out_refresh)
    assert not torch.equal(keep.cache.k[:, :, :sink_tokens], refresh.cache.k[:, :, :sink_tokens])


@torch.no_grad()
def test_cut_drops_history_but_keeps_the_sink(model):
    """Two streams sharing their first chunk (the sink) but not what follows give the same chunk after a cut."""
    p1, p2, p3 = text(seed=1), text(seed=2), text(seed=3)
    a, out_a = _run(model, [p1, p1, p1], p3, "cut", sink_frames=3, window=9)
    b, out_b = _run(model, [p1, p2, p2], p3, "cut", sink_frames=3, window=9)
    assert (out_a - out_b).abs().max() < 1e-6
    assert a.cache.resident_frames == 3 + 3  # sink + the new chunk
    _, soft_a = _run(model, [p1, p1, p1], p3, "soft", sink_frames=3, window=9)
    _, soft_b = _run(model, [p1, p2, p2], p3, "soft", sink_frames=3, window=9)
    assert not torch.allclose(soft_a, soft_b)


def test_switch_and_session_errors(model):
    s = session(model)
    with pytest.raises(ValueError, match="switch mode"):
        s.set_prompt(text(), "fade")
    with pytest.raises(ValueError, match="sink policy"):
        s.set_prompt(text(), "recache", sink="maybe")
    with pytest.raises(ValueError, match="prompt embeddings"):
        s.set_prompt(torch.randn(1, 8, 7))
    with pytest.raises(ValueError, match="window_frames"):
        session(model, window=2)
    with pytest.raises(ValueError, match="channels"):
        StreamingSession(model, text(), latent_shape=(16, 4, 6))


@torch.no_grad()
def test_every_cache_write_is_renoised_to_the_context_timestep(model):
    """With context_noise > 0, pushed start frames and a recache enter the cache as generated chunks do: re-noised
    to that timestep (x = (1 - s) clean + s noise), not clean latents labelled with it."""
    from worldsim.sampling.schedule import SamplerConfig

    sampler = SamplerConfig(context_noise=250.0)
    writes = []
    forward = model.forward_chunk

    def spy(x, t, *args, **kw):
        if float(t.flatten()[0]) == sampler.context_noise:
            writes.append(x.clone())
        return forward(x, t, *args, **kw)

    clean = torch.full((1, *SHAPE[:1], 3, *SHAPE[1:]), 3.0)  # constant latents: any added noise shows as spread
    model.forward_chunk = spy
    try:
        s = session(model, context_latents=clean, sampler=sampler)
        sigma = float(s.schedule.sigma(torch.tensor([sampler.context_noise]))[0])
        s.step()
        writes.clear()
        s._history[0].latents = clean  # recache rewrites the pushed chunk from these clean latents
        s.set_prompt(text(seed=3), "recache")
        s.step()
    finally:
        del model.forward_chunk
    assert writes, "the recache wrote nothing at the context timestep"
    residual = writes[0] - (1 - sigma) * clean  # sigma * noise when re-noised, sigma * clean (constant) when not
    assert 0.7 < float(residual.std() / sigma) < 1.3 and abs(float(residual.mean())) < 0.3 * sigma


@torch.no_grad()
def test_a_frame_reference_model_sees_the_last_clean_frame_before_each_chunk():
    """Every forward of a chunk (denoising steps and the cache write) gets the stream's last clean frame as the
    reference of all its frames: zeros at the start, the pushed start frame, then the previous chunk's last frame;
    a recache re-runs each chunk with the reference it was made with."""
    from conftest import make_model

    model = make_model(frame_reference=True)
    seen = []
    forward = model.forward_chunks

    def spy(x, t, context, caches, starts, controls=None, **kw):
        seen.append((starts[0], controls.reference.clone()))
        return forward(x, t, context, caches, starts, controls, **kw)

    model.forward_chunks = spy
    try:
        start_frame = torch.randn(1, SHAPE[0], 1, *SHAPE[1:])
        s = session(model, context_latents=start_frame)
        a = s.step()
        s.set_prompt(text(seed=4), "recache")
        s.step()
    finally:
        del model.forward_chunks
    refs = {}
    for start, ref in seen:
        assert ref.shape[2] == (1 if start == 0 else 3) and torch.equal(ref, ref[:, :, :1].expand_as(ref))
        refs.setdefault(start, []).append(ref[:, :, :1])
    assert all(torch.equal(r, torch.zeros_like(r)) for r in refs[0])  # the start frame had nothing before it
    assert all(torch.equal(r, start_frame) for r in refs[1])  # chunk 1..3 (and its recache) follow the start frame
    assert all(torch.equal(r, a[:, :, -1:]) for r in refs[4])  # the next chunk follows the last generated frame


@torch.no_grad()
def test_a_cut_to_a_start_frame_continues_from_it_as_a_new_stream_would():
    """A cut with ``start`` drops the history and writes the start frame under the new prompt with nothing before it
    (zero reference, as a stream's first frame); the next chunk follows it and attends to it alone. With the same
    noise, the chunk equals a fresh stream's first chunk from that frame (attention sees relative positions only)."""
    from conftest import make_model

    model = make_model(frame_reference=True)
    start = torch.randn(1, SHAPE[0], 1, *SHAPE[1:])
    s = session(model, window=7)
    s.step(), s.step()
    with pytest.raises(ValueError, match="needs a 'cut' switch"):
        s.set_prompt(text(seed=4), "recache", start=start)
    seen = []
    forward = model.forward_chunks

    def spy(x, t, context, caches, starts, controls=None, **kw):
        seen.append((starts[0], controls.reference[:, :, :1].clone()))
        return forward(x, t, context, caches, starts, controls, **kw)

    s.set_prompt(text(seed=4), "cut", start=start)
    noise = s.generator.get_state()
    model.forward_chunks = spy
    try:
        after = s.step()
    finally:
        del model.forward_chunks
    assert seen[0][0] == 6 and torch.equal(seen[0][1], torch.zeros_like(start))  # the start frame's own write
    assert all(f == 7 and torch.equal(ref, start) for f, ref in seen[1:])  # the chunk after it follows it
    assert [ch.start for ch in s._history] == [6, 7]  # the frames before the cut are gone
    fresh = session(model, text(seed=4), window=7, context_latents=start)
    fresh.generator.set_state(noise)
    torch.testing.assert_close(after, fresh.step(), atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_hold_idle_reference_keeps_the_frame_an_idle_stretch_began_with():
    """With ``hold_idle_reference`` a chunk whose first frame holds nothing reads the reference its idle stretch
    began with (the pushed start frame here), a chunk with a key held the last generated frame, and the next idle
    stretch holds the frame it began from; without the option every chunk reads the last frame."""

    from conftest import CONTROL
    from worldsim.model.control import Controls
    from worldsim.sampling.schedule import SamplerConfig
    from worldsim.sampling.session import holds_still

    model = make_model(control=CONTROL, frame_reference=True)
    k, keys = CONTROL.frames_per_latent, len(CONTROL.keys)
    idle, walk = torch.zeros(1, 3, k, keys), torch.zeros(1, 3, k, keys)
    walk[..., 0] = 1
    assert holds_still(None) and holds_still(Controls(keys=idle)) and not holds_still(Controls(keys=walk))
    assert holds_still(Controls(keys=walk, present=torch.zeros(1, 3, dtype=torch.bool)))
    start = torch.randn(1, SHAPE[0], 1, *SHAPE[1:])
    seen = []
    forward = model.forward_chunks

    def spy(x, t, context, caches, starts, controls=None, **kw):
        if kw.get("history") is None and float(t.flatten()[0]) > 0:  # a denoising step of the new chunk
            seen.append((starts[0], controls.reference[:, :, :1].clone()))
        return forward(x, t, context, caches, starts, controls, **kw)

    def references(hold: bool) -> tuple[dict, list]:
        s = session(model, context_latents=start, sampler=SamplerConfig(hold_idle_reference=hold))
        seen.clear()
        model.forward_chunks = spy
        try:
            out = [s.step(Controls(keys=c)) for c in (idle, idle, walk, idle, idle)]
        finally:
            del model.forward_chunks
        return {f: r for f, r in seen}, out

    refs, out = references(hold=True)
    assert [torch.equal(refs[f], start) for f in (1, 4)] == [True, True]  # idle from the start frame: held
    assert torch.equal(refs[7], out[1][:, :, -1:])  # a key held: the last frame
    assert torch.equal(refs[10], out[2][:, :, -1:]) and torch.equal(refs[13], out[2][:, :, -1:])  # held again
    refs, out = references(hold=False)
    assert torch.equal(refs[4], out[0][:, :, -1:]) and torch.equal(refs[13], out[3][:, :, -1:])


@torch.no_grad()
def test_a_fresh_reference_module_changes_nothing():
    """The reference embedding starts at zero: a frame_reference model made from a checkpoint without one streams
    exactly what the checkpoint did."""
    import dataclasses

    from conftest import make_model

    plain = make_model()
    ref = CausalWanDiT(dataclasses.replace(plain.cfg, frame_reference=True)).eval()
    missing, unexpected = ref.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == {"reference_embedding.weight", "reference_embedding.bias"} and not unexpected
    assert torch.equal(session(plain, seed=3).step(), session(ref, seed=3).step())


@torch.no_grad()
def test_control_guidance_extrapolates_from_the_controls_absent_branch():
    """control_guidance s: each step's flow is uncond + s (cond - uncond), uncond the same chunk with its controls
    marked absent. With one denoising step x0 is linear in the flow, so the guided chunk is exactly that mix."""
    import dataclasses

    from conftest import CONTROL, make_model
    from worldsim.model.control import Controls
    from worldsim.sampling.schedule import SamplerConfig

    model = make_model(control=CONTROL)
    with torch.no_grad():  # random control weights too (make_model leaves them at their zero init)
        g = torch.Generator().manual_seed(2)
        for p in model.control_embedding.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    keys = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(1)).round()  # [B, F, k, K]
    one_step = SamplerConfig(denoising_steps=(1000,))

    def first_chunk(scale: float, controls):
        return session(model, seed=5, sampler=dataclasses.replace(one_step, control_guidance=scale)).step(controls)

    cond = first_chunk(1, Controls(keys=keys))
    absent = first_chunk(1, Controls(keys=keys, present=torch.zeros(1, 3, dtype=torch.bool)))
    assert not torch.allclose(cond, absent)
    assert torch.allclose(first_chunk(3, Controls(keys=keys)), absent + 3 * (cond - absent), atol=1e-4)
    assert torch.equal(first_chunk(3, None), first_chunk(1, None))  # no controls: nothing to guide
    with pytest.raises(ValueError, match="control_guidance"):
        SamplerConfig(control_guidance=-1)


@torch.no_grad()
def test_text_guidance_extrapolates_from_the_empty_prompt_and_adds_to_control_guidance():
    """text_guidance s: each step's flow is uncond + s (cond - uncond), uncond the same chunk under the empty prompt
    (controls kept); with control guidance too, each adds its own direction. One denoising step: x0 is linear in the
    flow, so the guided chunk is exactly that mix."""
    import dataclasses

    from conftest import CONTROL
    from worldsim.model.control import Controls
    from worldsim.sampling.schedule import SamplerConfig

    model = make_model(control=CONTROL)
    g = torch.Generator().manual_seed(2)
    for p in model.control_embedding.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    keys = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(1)).round()
    empty = text(seed=7)
    one_step = SamplerConfig(denoising_steps=(1000,))

    def first_chunk(controls, prompt=None, **guidance):
        sampler = dataclasses.replace(one_step, **guidance)
        return session(model, prompt, seed=5, sampler=sampler, uncond_prompt=empty).step(controls)

    absent = Controls(keys=keys, present=torch.zeros(1, 3, dtype=torch.bool))
    cond, no_text, no_controls = first_chunk(Controls(keys=keys)), first_chunk(Controls(keys=keys), empty), \
        first_chunk(absent)
    assert not torch.allclose(cond, no_text)
    assert torch.allclose(first_chunk(Controls(keys=keys), text_guidance=2.5), no_text + 2.5 * (cond - no_text),
                          atol=1e-4)
    both = first_chunk(Controls(keys=keys), text_guidance=2.5, control_guidance=1.5)
    assert torch.allclose(both, cond + 1.5 * (cond - no_text) + 0.5 * (cond - no_controls), atol=1e-4)
    assert torch.allclose(first_chunk(None, text_guidance=2.5),  # no controls: the text is still guided
                          first_chunk(None, empty) + 2.5 * (first_chunk(None) - first_chunk(None, empty)), atol=1e-4)
    with pytest.raises(ValueError, match="uncond_prompt"):
        session(model, sampler=dataclasses.replace(one_step, text_guidance=2.0))
    with pytest.raises(ValueError, match="text_guidance"):
        SamplerConfig(text_guidance=-1)


@torch.no_grad()
def test_guided_steps_limit_guidance_to_some_denoising_steps():
    """guided_steps: only those denoising steps run the guidance branches. None of them is the plain sampler, all of
    them is full guidance; a deferred cache write still rides along with an unguided first step."""
    import dataclasses

    from worldsim.sampling.schedule import SamplerConfig

    model = make_model()
    empty = text(seed=7)
    plain = SamplerConfig(denoising_steps=(1000, 500))

    def chunks(sampler, defer=False):
        s = session(model, seed=5, sampler=sampler, uncond_prompt=empty, defer_cache_write=defer)
        return torch.cat([s.step() for _ in range(3)], dim=2)

    guided = dataclasses.replace(plain, text_guidance=2.0)
    assert torch.equal(chunks(dataclasses.replace(guided, guided_steps=())), chunks(plain))
    assert torch.equal(chunks(dataclasses.replace(guided, guided_steps=(0, 1))), chunks(guided))
    last_only = dataclasses.replace(guided, guided_steps=(1,))
    assert not torch.allclose(chunks(last_only), chunks(plain))
    calls, forward = [], model.forward_chunks
    model.forward_chunks = lambda *a, **kw: calls.append(kw.get("history", 0)) or forward(*a, **kw)
    try:
        chunks(last_only, defer=True)
    finally:
        del model.forward_chunks
    n = model.cfg.chunk_frames  # 2 forwards per chunk, the 2nd and 3rd chunks' first with the write merged
    assert calls == [0, 0, n, 0, n, 0]
    with pytest.raises(ValueError, match="guided_steps"):
        dataclasses.replace(plain, guided_steps=(2,))


@torch.no_grad()
@pytest.mark.parametrize("sink, window, guidance, text_guidance, start",
                         [(0, 6, 1.0, 1.0, 0), (2, 6, 1.0, 1.0, 0), (0, 3, 1.0, 1.0, 0), (1, 9, 2.0, 1.0, 0),
                          (0, 6, 1.0, 2.0, 0), (0, 6, 1.0, 1.0, 3), (1, 9, 2.0, 1.0, 2)])
def test_a_deferred_cache_write_streams_the_same_chunks(sink, window, guidance, text_guidance, start):
    """defer_cache_write runs each finished chunk's cache write in one forward with the next chunk's first step:
    the chunks match the immediate write up to float rounding while the window rolls (a window of one chunk
    included), through soft, recache and cut switches, pushed context, controls that come and go, control or text
    guidance (which write the deferred chunk first, also when the first step a chunk runs is a later one: a chunk
    that starts from its reference), and two streams stepped as one batch."""
    import dataclasses

    from conftest import CONTROL
    from worldsim.model.control import Controls
    from worldsim.sampling.schedule import SamplerConfig
    from worldsim.sampling.session import step_sessions

    model = make_model(control=CONTROL, frame_reference=True)
    g = torch.Generator().manual_seed(2)
    for p in [*model.control_embedding.parameters(), *model.reference_embedding.parameters()]:
        p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    sampler = SamplerConfig(control_guidance=guidance, text_guidance=text_guidance, reference_start=start,
                            guided_steps=(start,) if start else None)  # guided: the first step a warm chunk runs

    def controls(i: int) -> Controls | None:
        if i % 3 == 2:
            return None
        keys = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(i)).round()
        return Controls(keys=keys)

    def stream(defer: bool) -> torch.Tensor:
        pair = [session(model, seed=s, sink=sink, window=window, sampler=sampler, defer_cache_write=defer,
                        uncond_prompt=text(seed=6)) for s in (1, 2)]
        out = []
        for i in range(9):
            if i == 3:
                pair[0].set_prompt(text(seed=3), "soft")
            if i == 5:
                pair[1].set_prompt(text(seed=4), "recache")
            if i == 7:
                pair[0].set_prompt(text(seed=5), "cut")
                g = torch.Generator().manual_seed(9)
                pair[1].push_context(torch.randn(1, *SHAPE[:1], 2, *SHAPE[1:], generator=g))
            c = controls(i)
            parts = [None, None] if c is None else [dataclasses.replace(c, keys=c.keys[j:j + 1]) for j in (0, 1)]
            out += step_sessions(pair, parts) if i % 2 else [s.step(p) for s, p in zip(pair, parts)]
        return torch.cat(out, dim=2)

    calls, forward = [], model.forward_chunks
    model.forward_chunks = lambda *a, **kw: calls.append(1) or forward(*a, **kw)
    try:
        immediate, n_immediate = stream(False), len(calls)
        deferred, n_deferred = stream(True), len(calls) - n_immediate
    finally:
        del model.forward_chunks
    assert (deferred - immediate).abs().max() < 1e-4 * immediate.abs().max()
    # one forward fewer per step (single or batched) but after a switch or pushed context; none under control
    # guidance, which writes the deferred chunk on its own first
    guided = guidance != 1 or text_guidance != 1
    assert n_deferred <= n_immediate if guided else n_deferred < n_immediate - 5


@torch.no_grad()
def test_reference_start_begins_a_chunk_from_its_reference_noised_to_a_later_step():
    """``reference_start`` k: a chunk with a reference frame skips the first k denoising steps and starts from its
    reference noised to step k (x = (1 - sigma) reference + sigma noise, the stream's first draw); a chunk without
    one (a stream's first, no start frame) runs every step. k = 0 is the plain sampler."""
    from worldsim.sampling.schedule import SamplerConfig

    model = make_model(frame_reference=True)
    seen = []
    forward = model.forward_chunks

    def spy(x, t, context, caches, starts, controls=None, **kw):
        seen.append((starts[0], float(t.flatten()[0]), x.clone(), controls.reference.clone()))
        return forward(x, t, context, caches, starts, controls, **kw)

    start = torch.randn(1, SHAPE[0], 1, *SHAPE[1:])
    sampler = SamplerConfig(reference_start=2)
    ts = session(model, sampler=sampler).timesteps
    model.forward_chunks = spy
    try:
        s = session(model, seed=4, sampler=sampler)
        s.step(), s.step()
        first, second = ([t for f, t, *_ in seen if f == k] for k in (0, 3))
        seen.clear()
        warm = session(model, seed=4, sampler=sampler, context_latents=start)
        warm.step()
    finally:
        del model.forward_chunks
    assert first == pytest.approx([*ts, 0.0]) and second == pytest.approx([*ts[2:], 0.0])  # steps, cache write
    steps = [(x, ref) for f, t, x, ref in seen if f == 1 and t > 0]
    assert [t for f, t, *_ in seen if f == 1 and t > 0] == pytest.approx(ts[2:])
    sigma = float(warm.schedule.sigma(torch.tensor([ts[2]]))[0])
    noise = torch.randn((1, SHAPE[0], 3, *SHAPE[1:]), generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(steps[0][0], (1 - sigma) * start.expand(-1, -1, 3, -1, -1) + sigma * noise)
    assert torch.equal(steps[0][1], start.expand_as(steps[0][1]))
    plain = session(model, seed=4, context_latents=start).step()
    assert torch.equal(plain, session(model, seed=4, context_latents=start,
                                      sampler=SamplerConfig(reference_start=0)).step())
    assert not torch.allclose(plain, session(model, seed=4, sampler=sampler, context_latents=start).step())
    with pytest.raises(ValueError, match="reference_start"):
        SamplerConfig(reference_start=4)
