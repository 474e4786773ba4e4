"""Checkpoint formats: every format round-trips (same tensors, same outputs), format detection, the Self-Forcing
container and key conventions, a T2V checkpoint loading into a model with controls, the full 1.3B key set and the
diffusers name map, and a CheckpointError naming the file and key for every kind of bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

from worldsim.atomic_files import NEW_FILE_MODE, atomic_write
from worldsim.checkpoints import (CheckpointError, detect_format, diffusers_to_wan, load_model, load_state_dict,
                                  save_diffusers_folder, save_self_forcing_pt, save_wan_folder, save_worldsim)
from worldsim.checkpoints.self_forcing import wan_key
from worldsim.model.config import ControlConfig, load_preset
from worldsim.model.control import Controls
from worldsim.model.dit import CausalWanDiT, count_parameters

torch.set_num_threads(2)

CONTROL = ControlConfig(keys=("W", "A", "S", "D"), axes=("mouse_dx",), embedding_dim=0, frames_per_latent=4)
WEIGHTS = "diffusion_pytorch_model.safetensors"


def random_model(cfg=None, seed: int = 0) -> CausalWanDiT:
    """A tiny model with every parameter random (the head and control output layer are zero-initialised otherwise)."""
    model = CausalWanDiT(cfg or load_preset("tiny"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.05, generator=g)
    return model.eval()


def inputs(cfg, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, cfg.in_dim, 3, 4, 6, generator=g)
    t = torch.tensor([[937.5, 937.5, 937.5]])
    ctx = torch.randn(1, cfg.text_len, cfg.text_dim, generator=g)
    return x, t, ctx


def some_controls(seed: int = 0) -> Controls:
    g = torch.Generator().manual_seed(seed)
    return Controls(keys=(torch.rand(1, 3, 4, 4, generator=g) > 0.5).float(), axes=torch.randn(1, 3, 4, 1, generator=g))


@torch.no_grad()
def assert_same_model(a: CausalWanDiT, b: CausalWanDiT, controls: Controls | None = None) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x, t, ctx = inputs(a.cfg)
    assert torch.equal(a(x, t, ctx, controls=controls), b(x, t, ctx, controls=controls))


# Each writer, as (save(model, dir) -> path, format detect_format reports, whether load_model needs config=).
SAVERS = {
    "wan": (lambda m, d: save_wan_folder(m, m.cfg, d / "wan"), "wan"),
    "wan_sharded": (lambda m, d: save_wan_folder(m, m.cfg, d / "wan", shards=3), "wan"),
    "diffusers": (lambda m, d: save_diffusers_folder(m, m.cfg, d / "transformer"), "diffusers"),
    "diffusers_sharded": (lambda m, d: save_diffusers_folder(m, m.cfg, d / "transformer", shards=4), "diffusers"),
    "self_forcing": (lambda m, d: save_self_forcing_pt(m.state_dict(), d / "model.pt"), "self_forcing"),
    "self_forcing_fsdp": (lambda m, d: save_self_forcing_pt(m.state_dict(), d / "model.pt", fsdp_infix=True),
                          "self_forcing"),
    "worldsim": (lambda m, d: save_worldsim(m, d / "model.safetensors"), "worldsim"),
}


def config_for(fmt: str, model: CausalWanDiT):
    """A Self-Forcing .pt holds no config: the caller passes one."""
    return model.cfg if fmt == "self_forcing" else None


@pytest.mark.parametrize("layout", SAVERS)
def test_every_format_round_trips(layout, tmp_path):
    model = random_model()
    save, fmt = SAVERS[layout]
    path = save(model, tmp_path)
    assert detect_format(path) == fmt
    assert_same_model(model, load_model(path, config=config_for(fmt, model)))
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporaries behind


@pytest.mark.parametrize("layout, names", [("wan_sharded", "blocks.0.self_attn.q.weight"),
                                           ("diffusers_sharded", "blocks.0.attn1.to_q.weight")])
def test_sharded_folders_have_an_index_naming_every_key(layout, names, tmp_path):
    model = random_model()
    folder = SAVERS[layout][0](model, tmp_path)
    index = json.loads((folder / f"{WEIGHTS}.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) == (3 if layout == "wan_sharded" else 4)
    assert sorted(p.name for p in folder.glob("*.safetensors")) == shards
    assert len(index["weight_map"]) == len(model.state_dict()) and names in index["weight_map"]
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in model.state_dict().values())


def test_rewriting_a_folder_replaces_the_old_layout(tmp_path):
    model = random_model()
    save_wan_folder(model, model.cfg, tmp_path, shards=2)
    save_wan_folder(model, model.cfg, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", WEIGHTS]


def test_wan_folder_writes_the_published_config(tmp_path):
    """config.json has exactly Wan's keys; text_dim and patch size, which it never stores, come from the weights."""
    model = random_model()
    save_wan_folder(model, model.cfg, tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert sorted(written) == ["_class_name", "_diffusers_version", "dim", "eps", "ffn_dim", "freq_dim", "in_dim",
                               "model_type", "num_heads", "num_layers", "out_dim", "text_len"]
    assert load_state_dict(tmp_path)[1] == model.cfg


def test_detect_format_finds_folders_from_their_files_and_pipeline_root(tmp_path):
    model = random_model()
    save_diffusers_folder(model, model.cfg, tmp_path / "pipeline" / "transformer")
    save_wan_folder(model, model.cfg, tmp_path / "wan")
    assert detect_format(tmp_path / "pipeline") == "diffusers"
    assert detect_format(tmp_path / "wan" / WEIGHTS) == "wan"
    assert detect_format(tmp_path / "wan" / "config.json") == "wan"


def test_self_forcing_takes_ema_by_default_and_generator_on_request(tmp_path):
    raw, ema = random_model(seed=1), random_model(seed=2)
    path = save_self_forcing_pt(raw.state_dict(), tmp_path / "model.pt", ema=ema.state_dict())
    cfg = raw.cfg
    assert_same_model(ema, load_model(path, config=cfg))
    assert_same_model(raw, load_model(path, config=cfg, use_ema=False))
    # no EMA yet (early training checkpoint): the default falls back to generator
    only_raw = save_self_forcing_pt(raw.state_dict(), tmp_path / "early.pt", ema=False)
    assert set(torch.load(only_raw, weights_only=True)) == {"generator"}
    assert_same_model(raw, load_model(only_raw, config=cfg))


def test_self_forcing_model_container_and_wrapper_infixes(tmp_path):
    model = random_model()
    names = {"model._fsdp_wrapped_module.blocks.0._fsdp_wrapped_module._checkpoint_wrapped_module.ffn.0.weight":
             "blocks.0.ffn.0.weight",
             "model._orig_mod.head.head.bias": "head.head.bias",
             "model.patch_embedding.weight": "patch_embedding.weight"}
    assert {wan_key(k) for k in names} == set(names.values())
    # ode_init.pt style: a bare "model" container, keys compiled (_orig_mod.)
    torch.save({"model": {f"model._orig_mod.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "ode.pt")
    sd, cfg, fmt = load_state_dict(tmp_path / "ode.pt")
    assert (cfg, fmt) == (None, "self_forcing") and sd.keys() == model.state_dict().keys()
    fsdp = save_self_forcing_pt(model.state_dict(), tmp_path / "fsdp.pt", fsdp_infix=True)
    stored = torch.load(fsdp, weights_only=True)["generator_ema"]
    assert "model._fsdp_wrapped_module.blocks.1._fsdp_wrapped_module.ffn.2.bias" in stored
    assert load_state_dict(fsdp)[0].keys() == model.state_dict().keys()


def test_worldsim_format_keeps_config_and_control_weights(tmp_path):
    model = random_model(load_preset("tiny").with_control(CONTROL))
    path = save_worldsim(model, tmp_path / "model.safetensors")
    sd, cfg, fmt = load_state_dict(path)
    assert (cfg, fmt) == (model.cfg, "worldsim") and cfg.control == CONTROL
    assert "control_embedding.mlp.2.weight" in sd
    assert_same_model(model, load_model(path), controls=some_controls())


@pytest.mark.parametrize("layout", ["wan", "self_forcing"])
def test_t2v_checkpoint_loads_into_a_model_with_controls(layout, tmp_path):
    """Control weights are absent from published checkpoints: they keep their init, whose zero output layer leaves
    the text-to-video behaviour bit-identical, with or without controls sent."""
    t2v = random_model()
    path = SAVERS[layout][0](t2v, tmp_path)
    model = load_model(path, config=t2v.cfg.with_control(CONTROL))
    assert model.control_embedding is not None
    assert not model.control_embedding.mlp[2].weight.any() and model.control_embedding.mlp[0].weight.any()
    x, t, ctx = inputs(t2v.cfg)
    with torch.no_grad():
        want = t2v(x, t, ctx)
        assert torch.equal(model(x, t, ctx), want)
        assert torch.equal(model(x, t, ctx, controls=some_controls()), want)


def test_load_model_casts_to_the_requested_dtype(tmp_path):
    model = random_model()
    path = save_worldsim(model, tmp_path / "model.safetensors")
    loaded = load_model(path, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    assert not loaded.training


def test_published_layouts_refuse_control_weights(tmp_path):
    model = random_model(load_preset("tiny").with_control(CONTROL))
    with pytest.raises(ValueError, match="save_worldsim"):
        save_wan_folder(model, model.cfg, tmp_path)


# ---- the full-size key space and the diffusers name map --------------------------------------------------------

def test_full_1_3b_key_set_and_diffusers_inverse_map():
    """diffusers' own converter, then our inverse table, gives back exactly the 825 Wan keys with their shapes."""
    with torch.device("meta"):
        model = CausalWanDiT(load_preset("wan2.1-t2v-1.3b"))
    wan = model.state_dict()
    assert len(wan) == 825 and count_parameters(model) == 1_418_996_800
    converted = convert_wan_transformer_to_diffusers(dict(wan))
    assert len(converted) == 825 and "blocks.0.attn1.to_out.0.weight" in converted
    back = diffusers_to_wan(converted)
    assert back.keys() == wan.keys()
    assert all(back[k].shape == wan[k].shape for k in wan)


def test_diffusers_inverse_map_is_exact_on_tensors():
    wan = random_model().state_dict()
    back = diffusers_to_wan(convert_wan_transformer_to_diffusers(dict(wan)))
    assert back.keys() == wan.keys() and all(torch.equal(back[k], wan[k]) for k in wan)


# ---- errors: CheckpointError names the file and the key ---------------------------------------------------------

def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def error_of(path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        load_model(path, **kwargs)
    return str(info.value)


def test_truncated_and_garbage_files(tmp_path):
    model = random_model()
    wan = save_wan_folder(model, model.cfg, tmp_path / "wan")
    cut_in_half(wan / WEIGHTS)
    assert str(wan / WEIGHTS) in error_of(wan)
    own = save_worldsim(model, tmp_path / "model.safetensors")
    cut_in_half(own)
    assert "model.safetensors" in error_of(own) and "truncated" in error_of(own)
    pt = save_self_forcing_pt(model.state_dict(), tmp_path / "model.pt")
    cut_in_half(pt)
    assert "model.pt" in error_of(pt, config=model.cfg)
    for name in ("garbage.safetensors", "garbage.pt"):
        (tmp_path / name).write_bytes(os.urandom(4096))
        assert name in error_of(tmp_path / name, config=model.cfg)


def save_wan_with(tmp_path: Path, edit) -> Path:
    """A Wan folder whose state dict went through ``edit(sd)`` first."""
    model = random_model()
    sd = dict(model.state_dict())
    edit(sd)
    return save_wan_folder(sd, model.cfg, tmp_path / "wan")


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path):
    msg = error_of(save_wan_with(tmp_path, lambda sd: sd.pop("blocks.1.ffn.2.bias")))
    assert WEIGHTS in msg and "blocks.1.ffn.2.bias" in msg and "1 missing" in msg
    msg = error_of(save_wan_with(tmp_path, lambda sd: sd.update({"blocks.0.lora_A.weight": torch.zeros(2)})))
    assert WEIGHTS in msg and "blocks.0.lora_A.weight" in msg and "1 unexpected" in msg
    msg = error_of(save_wan_with(tmp_path, lambda sd: sd.update({"head.head.bias": torch.zeros(7)})))
    assert WEIGHTS in msg and "head.head.bias" in msg and "(16,)" in msg and "(7,)" in msg


def test_diffusers_errors_name_the_stored_key_and_shard(tmp_path):
    model = random_model()
    folder = save_diffusers_folder(model, model.cfg, tmp_path / "transformer", shards=2)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "ffn_dim": 64}))
    msg = error_of(folder)
    assert "blocks.0.ffn.net.0.proj.weight" in msg and "blocks.0.ffn.0.weight" in msg and "-of-00002.safetensors" in msg


def test_index_naming_a_missing_shard(tmp_path):
    model = random_model()
    folder = save_wan_folder(model, model.cfg, tmp_path / "wan", shards=3)
    gone = folder / "diffusion_pytorch_model-00002-of-00003.safetensors"
    gone.unlink()
    msg = error_of(folder)
    assert gone.name in msg and f"{WEIGHTS}.index.json" in msg


def test_paths_that_are_not_checkpoints(tmp_path):
    (tmp_path / "empty").mkdir()
    msg = error_of(tmp_path / "empty")
    assert "empty" in msg and "Self-Forcing" in msg and "diffusers" in msg
    assert "no such file" in error_of(tmp_path / "absent")
    (tmp_path / "notes.txt").write_text("hello")
    assert "notes.txt" in error_of(tmp_path / "notes.txt")


def test_self_forcing_without_containers_or_config(tmp_path):
    model = random_model()
    torch.save({"critic": {}, "step": torch.tensor(3)}, tmp_path / "critic.pt")
    msg = error_of(tmp_path / "critic.pt", config=model.cfg)
    assert "critic.pt" in msg and "'critic'" in msg and "'step'" in msg and "generator_ema" in msg
    path = save_self_forcing_pt(model.state_dict(), tmp_path / "model.pt")
    assert "config=" in error_of(path)


def test_config_for_another_architecture_is_refused(tmp_path):
    model = random_model()
    folder = save_wan_folder(model, model.cfg, tmp_path / "wan")
    msg = error_of(folder, config="small")
    assert "dim=48 in the checkpoint, 256 given" in msg


def test_atomic_writes_give_new_files_the_usual_mode_and_keep_a_replaced_files(tmp_path):
    """A temporary file is created 0600: the written file gets what open() would give (0666 less the umask), or
    the mode of the file it replaces, so others can read a shared install's files as before."""
    fresh = atomic_write(tmp_path / "new.json", lambda p: p.write_text("{}"))
    assert fresh.stat().st_mode & 0o777 == NEW_FILE_MODE == 0o666 & ~_process_umask()
    kept = tmp_path / "kept.json"
    kept.write_text("old")
    kept.chmod(0o640)
    atomic_write(kept, lambda p: p.write_text("new"))
    assert kept.read_text() == "new" and kept.stat().st_mode & 0o777 == 0o640


def _process_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
