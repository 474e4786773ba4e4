"""Numerical parity with diffusers' ``WanTransformer3DModel``: the same random weights in worldsim's DiT and in
diffusers give the same flow prediction on one chunk with full attention, and the folders each side writes load
on the other side."""

from __future__ import annotations

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from diffusers.models.embeddings import get_timestep_embedding

from worldsim.checkpoints import load_model, save_diffusers_folder
from worldsim.model.config import load_preset
from worldsim.model.dit import CausalWanDiT, sinusoidal_embedding

torch.set_num_threads(2)

# tiny: head_dim 12, which diffusers' RoPE splits 4/4/4 channels exactly as worldsim does.
CFG = load_preset("tiny")
B, F, H, W = 2, 3, 4, 6


def random_model(seed: int = 0) -> CausalWanDiT:
    model = CausalWanDiT(CFG)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.05, generator=g)
    return model.eval()


def diffusers_twin(model: CausalWanDiT) -> WanTransformer3DModel:
    """diffusers' transformer of the same shape, loaded strictly with ``model``'s weights via diffusers' converter."""
    cfg = model.cfg
    twin = WanTransformer3DModel(num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
                                 in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim,
                                 freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
                                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=cfg.eps,
                                 patch_size=cfg.patch_size)
    twin.load_state_dict(convert_wan_transformer_to_diffusers(dict(model.state_dict())), strict=True)
    return twin.eval()


def public_config(model: WanTransformer3DModel) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in model.config.items() if not k.startswith("_")}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@torch.no_grad()
def both_outputs(model: CausalWanDiT, twin: WanTransformer3DModel, timestep: float):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, CFG.in_dim, F, H, W, generator=g)
    ctx = torch.randn(B, CFG.text_len, CFG.text_dim, generator=g)
    ours = model(x, torch.full((B, F), timestep), ctx, chunk_frames=F)  # one chunk: full attention within it
    theirs = twin(hidden_states=x, timestep=torch.full((B,), timestep), encoder_hidden_states=ctx).sample
    return ours, theirs


@pytest.fixture(scope="module")
def pair():
    model = random_model()
    return model, diffusers_twin(model)


# Both sides compute sin/cos of t * 10000^(-k/half): worldsim in float64 (as Wan does), diffusers in float32, whose
# argument rounding is about t * 6e-8 rad. At small t that is far below 1e-5; at t = 937.5 (the second of Self
# Forcing's four steps) the sinusoid differs by ~1e-5 (test below) and the time MLP and adaLN carry that into the
# output, by an amount that grows with the weights' scale, so that case gets a looser bound. Measured relative errors
# on this tiny model: ~8e-8 at t=1 and t=25, ~3e-7 at t=937.5.
@pytest.mark.parametrize("timestep, bound", [(1.0, 1e-5), (25.0, 1e-5), (937.5, 1e-4)])
def test_flow_prediction_matches_diffusers(pair, timestep, bound):
    ours, theirs = both_outputs(*pair, timestep)
    assert ours.shape == theirs.shape == (B, CFG.out_dim, F, H, W)
    assert rel_err(ours, theirs) < bound


def test_time_embedding_difference_is_diffusers_float32_rounding():
    """worldsim's sinusoid equals the float64 Wan formula; diffusers' float32 one drifts from it as t grows."""
    half = CFG.freq_dim // 2
    for t, drift in ((1.0, 1e-6), (937.5, 1e-4)):
        tt = torch.tensor([t])
        args = t * 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
        exact = torch.cat([args.cos(), args.sin()])[None]
        ours = sinusoidal_embedding(tt, CFG.freq_dim)
        theirs = get_timestep_embedding(tt, CFG.freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0).double()
        assert (ours - exact).abs().max() < 1e-12
        assert (theirs - exact).abs().max() < drift
    assert (theirs - exact).abs().max() > 1e-6  # at t = 937.5 the float32 rounding is visible


def test_parity_is_not_vacuous(pair):
    """A different timestep changes the output far beyond the tolerances above."""
    a, _ = both_outputs(*pair, 1.0)
    b, _ = both_outputs(*pair, 25.0)
    assert rel_err(a, b) > 1e-2


def test_our_diffusers_folder_loads_in_diffusers(pair, tmp_path):
    model, twin = pair
    save_diffusers_folder(model, model.cfg, tmp_path)
    loaded = WanTransformer3DModel.from_pretrained(tmp_path)
    assert public_config(loaded) == public_config(twin)
    theirs, want = loaded.state_dict(), twin.state_dict()
    assert theirs.keys() == want.keys() and all(torch.equal(theirs[k], want[k]) for k in want)


def test_diffusers_save_pretrained_loads_in_worldsim(pair, tmp_path):
    model, twin = pair
    twin.save_pretrained(tmp_path, max_shard_size="100KB")  # sharded, as diffusers writes large models
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    loaded = load_model(tmp_path, config=CFG)
    ours, want = loaded.state_dict(), model.state_dict()
    assert ours.keys() == want.keys() and all(torch.equal(ours[k], want[k]) for k in want)
