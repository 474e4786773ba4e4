"""Small units: the KV cache ring, the flow-matching schedule, the attention seam, configs and input checks."""

from __future__ import annotations

import pytest
import torch

from conftest import make_model, text
from worldsim.model.attention import FrameMask, attention, select_backend
from worldsim.model.config import ControlConfig, DiTConfig, from_wan_config, load_preset, to_wan_config
from worldsim.model.kv_cache import KVCache
from worldsim.sampling.schedule import FlowMatchSchedule, SamplerConfig


def cache(sink=2, window=4):
    return KVCache(num_layers=1, batch=1, num_heads=1, head_dim=2, tokens_per_frame=1, sink_frames=sink,
                   window_frames=window, device="cpu", dtype=torch.float32)


def write(c: KVCache, start: int, n: int) -> list[float]:
    """Write frames tagged with their own index; return the resident frame tags in slot order."""
    c.begin(start, n)
    tags = torch.arange(start, start + n, dtype=torch.float32).view(1, n, 1, 1).expand(1, n, 1, 2)
    k, _ = c.write_read(0, tags, tags)
    return k[0, :, 0, 0].tolist()


def test_ring_keeps_sink_and_newest_frames_in_place():
    c = cache(sink=2, window=4)
    assert write(c, 0, 3) == [0, 1, 2]
    assert write(c, 3, 3) == [0, 1, 2, 3, 4, 5]
    assert sorted(write(c, 6, 3)) == [0, 1, 5, 6, 7, 8]  # frames 2-4 evicted, sink 0-1 kept
    assert sorted(write(c, 6, 3)) == [0, 1, 5, 6, 7, 8]  # re-running a chunk overwrites its own slots
    ptr = c.k.data_ptr()
    for s in range(9, 300, 3):
        write(c, s, 3)
    assert c.k.data_ptr() == ptr and sorted(write(c, 300, 3)) == [0, 1, 299, 300, 301, 302]


def test_ring_rejects_impossible_writes():
    c = cache(sink=0, window=4)
    write(c, 0, 3)
    with pytest.raises(ValueError, match="never written"):
        c.begin(5, 3)
    with pytest.raises(ValueError, match="does not fit"):
        c.begin(3, 5)
    write(c, 3, 3)
    with pytest.raises(ValueError, match="left the cache"):
        c.begin(0, 3)
    c.restart_window(c.end)  # cut
    assert c.resident_frames == 0
    with pytest.raises(ValueError, match="left the cache"):
        c.begin(4, 2)
    assert write(c, 6, 3) == [6, 7, 8]


def test_schedule_matches_self_forcing():
    s = FlowMatchSchedule(shift=5.0)
    assert s.sampling_timesteps(SamplerConfig()) == pytest.approx([1000.0, 937.5, 833.3333, 625.0])
    assert s.sampling_timesteps(SamplerConfig(warp=False)) == [1000.0, 750.0, 500.0, 250.0]
    assert float(s.timesteps[-1]) == pytest.approx(4.98008, abs=1e-4)
    assert float(s.sigma(937.5)) == 0.9375 and float(s.sigma(937.55)) == 0.9375  # nearest table entry
    x0, noise = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    xt = s.add_noise(x0, noise, 625.0)
    assert torch.allclose(s.x0_from_flow(s.flow_target(x0, noise), xt, 625.0), x0, atol=1e-6)
    per_frame = s.add_noise(x0, noise, torch.tensor([[1000.0, 625.0, 625.0]] * 2))
    assert torch.allclose(per_frame[:, :, 0], noise[:, :, 0]) and torch.allclose(per_frame[:, :, 1:], xt[:, :, 1:])
    with pytest.raises(ValueError, match="decrease"):
        SamplerConfig(denoising_steps=(250, 500))


def test_attention_seam_on_cpu():
    dev = torch.device("cpu")
    assert select_backend("auto", dev, torch.float32, masked=False) == "sdpa"
    assert select_backend("auto", dev, torch.bfloat16, masked=True) == "sdpa"
    with pytest.raises(RuntimeError, match="not available"):
        select_backend("fa2", dev, torch.bfloat16, masked=False)
    with pytest.raises(ValueError, match="unknown attention backend"):
        select_backend("xformers", dev, torch.float32, masked=False)
    q, k, v = torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8)
    mask = FrameMask(torch.tensor([[True, False], [True, True]]), tokens_per_frame=2)
    out = attention(q, k, v, mask)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / 8**0.5
    scores = scores.masked_fill(~mask.dense(), float("-inf"))
    ref = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    assert torch.allclose(out, ref, atol=1e-6)


def test_presets_and_wan_config():
    big = load_preset("wan2.1-t2v-1.3b")
    assert (big.dim, big.num_layers, big.num_heads, big.head_dim, big.text_dim) == (1536, 30, 12, 128, 4096)
    wan = to_wan_config(big)
    assert set(wan) == {"_class_name", "_diffusers_version", "dim", "eps", "ffn_dim", "freq_dim", "in_dim",
                        "model_type", "num_heads", "num_layers", "out_dim", "text_len"}
    assert from_wan_config(wan) == big
    with pytest.raises(ValueError, match="unknown DiT config keys"):
        DiTConfig.from_dict({"dim": 64, "num_head": 4})
    with pytest.raises(FileNotFoundError, match="available"):
        load_preset("no-such-preset")
    with pytest.raises(ValueError, match="no keys"):
        ControlConfig()
    round_trip = DiTConfig.from_dict(big.with_control(ControlConfig(keys=("W",), axes=("dx",))).to_dict())
    assert round_trip.control.keys == ("W",)


@torch.no_grad()
def test_bad_model_inputs_name_the_problem():
    model = make_model()
    x, t = torch.randn(1, 4, 3, 4, 6), torch.zeros(1, 3)
    with pytest.raises(ValueError, match=r"latents must be \[B, 4, F, H, W\]"):
        model(torch.randn(1, 3, 3, 4, 6), t, text())
    with pytest.raises(ValueError, match="timesteps must be"):
        model(x, torch.zeros(1), text())
    with pytest.raises(ValueError, match="text context"):
        model(x, t, torch.randn(1, 8, 5))
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        model(torch.randn(1, 4, 3, 5, 6), t, text())
    c = model.new_cache(batch=2, height=4, width=6, sink_frames=0, window_frames=6)
    with pytest.raises(ValueError, match="cache was built for batch 2"):
        model.forward_chunk(x, t, text(), c, 0)


def test_configs_found_in_a_checkout_or_an_installed_copy(tmp_path, monkeypatch):
    import worldsim.resources as resources

    assert (resources.configs_dir() / "model" / "small.yaml").is_file()  # this checkout
    monkeypatch.setattr(resources, "__file__", str(tmp_path / "site-packages" / "worldsim" / "resources.py"))
    monkeypatch.setattr(resources.sys, "prefix", str(tmp_path / "venv"))
    assert resources.configs_dir() == tmp_path / "venv" / "share" / "worldsim" / "configs"  # a wheel install
