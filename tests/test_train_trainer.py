"""The trainer with the codec and teacher stages: loss falls, resume is exact, checkpoints survive a kill, EMA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_helpers import write_dataset

from worldsim.checkpoints import load_model, save_worldsim
from worldsim.checkpoints.safetensors_io import read_tensors
from worldsim.model.config import load_preset
from worldsim.model.dit import CausalWanDiT
from worldsim.train import checkpoint as ckpt
from worldsim.train.config import load_recipe
from worldsim.train.ema import EMA
from worldsim.train.trainer import Trainer, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: one thread (conftest)

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "train"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A synthetic dataset and a (micro-trained) codec for the latent stages."""
    root = tmp_path_factory.mktemp("train")
    write_dataset(root / "data")
    train("codec", recipe("codec", root, "codec"))
    return root


def recipe(stage: str, root: Path, out: str, *overrides: str):
    extra = [f"data.codec={root / 'codec' / 'final' / 'codec.safetensors'}"] if stage == "teacher" else []
    return load_recipe(RECIPES / f"{stage}_micro.yaml", [f"data.path={root / 'data'}", f"out={root / out}", *extra,
                                                         *overrides])


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.parametrize("stage", ["codec", "teacher"])
def test_loss_falls_on_a_fixed_batch(workdir, stage):
    tr = Trainer(stage, recipe(stage, workdir, f"fixed-{stage}"))
    batch = tr.data.batch(0)
    key = "mse" if stage == "codec" else "loss"

    def measure() -> float:
        torch.manual_seed(123)
        with torch.no_grad():
            return tr.stage.validate(batch)[key]

    before = measure()
    for i in range(20):
        with tr.acc.accumulate(*tr.stage.models.values()):
            tr.stage.step(batch, i)
    assert measure() < 0.95 * before


@pytest.mark.parametrize("stage", ["codec", "teacher"])
def test_resume_gives_the_same_next_losses(workdir, stage):
    whole = train(stage, recipe(stage, workdir, f"whole-{stage}")).out
    part = workdir / f"part-{stage}"
    train(stage, recipe(stage, workdir, part.name, "max_steps=2"))
    train(stage, recipe(stage, workdir, part.name), resume=True)
    a, b = losses(whole), losses(part)
    assert a[3] == b[3] and a[4] == b[4]  # bit-exact on the CPU
    for name in ("model", "ema"):
        sa = read_tensors(whole / "checkpoints" / "step_0000004" / f"{name}-{stage}.safetensors")
        sb = read_tensors(part / "checkpoints" / "step_0000004" / f"{name}-{stage}.safetensors")
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_max_minutes_stops_at_a_step_boundary_and_exports_as_at_max_steps(workdir):
    # any step outlasts 6e-5 s: the run stops after its first step, long before max_steps
    result = train("codec", recipe("codec", workdir, "timed", "max_steps=1000000", "max_minutes=1e-6"))
    assert result.step == 1
    assert (result.out / "checkpoints" / "step_0000001").is_dir()
    assert (result.out / "final" / "codec.safetensors").is_file()
    assert 1 in losses(result.out)  # the last step's metrics are logged
    with pytest.raises(ValueError, match="max_minutes"):
        recipe("codec", workdir, "bad", "max_minutes=-1")


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(workdir, monkeypatch):
    out = workdir / "killed"
    real, written = ckpt.save_tensors, []

    def dying(tensors, path, metadata=None):
        if "step_0000004" in str(path) and len(written) >= 2:
            raise KeyboardInterrupt("killed")  # stands in for kill -9 between two files of one checkpoint
        if "step_0000004" in str(path):
            written.append(path)
        return real(tensors, path, metadata)

    monkeypatch.setattr(ckpt, "save_tensors", dying)
    with pytest.raises(KeyboardInterrupt):
        train("teacher", recipe("teacher", workdir, out.name))
    monkeypatch.setattr(ckpt, "save_tensors", real)
    root = out / "checkpoints"
    assert (root / "step_0000004.tmp").is_dir() and not (root / "step_0000004").exists()
    assert ckpt.latest_checkpoint(root) == root / "step_0000002"
    assert "blocks.0.self_attn.q.weight" in read_tensors(root / "step_0000002" / "model-teacher.safetensors")
    result = train("teacher", recipe("teacher", workdir, out.name), resume=True)
    assert result.step == 4 and not (root / "step_0000004.tmp").exists()
    assert losses(out)[4] == losses(train("teacher", recipe("teacher", workdir, "unkilled")).out)[4]


def test_kill_9_loses_only_the_steps_since_the_last_checkpoint(workdir):
    """A real SIGKILL of a training process at a random moment (possibly inside a checkpoint write): --resume
    starts from the newest complete checkpoint and trains on exactly as a run that was never killed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out, keys = workdir / "kill9", ["ckpt_every=3", "log_every=1", "val_every=1000000"]
    proc = subprocess.Popen([sys.executable, "-m", "worldsim", "train", "codec", "--config",
                             str(RECIPES / "codec_micro.yaml"), "--data", str(workdir / "data"), "--out", str(out),
                             "max_steps=1000000", *keys], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            found = ckpt.latest_checkpoint(out / "checkpoints") if (out / "checkpoints").is_dir() else None
            if found is not None and int(found.name.split("_")[1]) >= 6:
                break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = ckpt.latest_checkpoint(out / "checkpoints")
    assert last is not None, "the killed run wrote no complete checkpoint"
    n = int(last.name.split("_")[1])
    resumed = train("codec", recipe("codec", workdir, out.name, f"max_steps={n + 2}", *keys), resume=True)
    whole = train("codec", recipe("codec", workdir, "kill9-whole", f"max_steps={n + 2}", *keys))
    assert resumed.step == n + 2
    assert losses(out)[n + 1] == losses(whole.out)[n + 1] and losses(out)[n + 2] == losses(whole.out)[n + 2]


def test_wan_vae_and_umt5_data_path_for_control_fine_tunes(tmp_path):
    """A published model's spaces: episodes encoded by the Wan2.1 VAE (4 video frames per latent, whole episodes
    through its causal encoder) and prompts by UMT5, both read from an official folder's files, train a teacher."""
    from tiny_models import tiny_dit, write_official_folder

    from worldsim.dataset import load_dataset
    from worldsim.train.data import TrainData
    from worldsim.train.trainer import open_text_encoder

    folder = write_official_folder(tmp_path / "wan")
    data = write_dataset(tmp_path / "data", episodes=2, frames=27, frames_per_latent=4)
    dit = tiny_dit(0)
    cfg = load_recipe(RECIPES / "teacher_micro.yaml", [
        f"data.path={data}", f"out={tmp_path / 'out'}", f"data.codec={folder / 'Wan2.1_VAE.pth'}",
        f"data.text_encoder={folder / 'models_t5_umt5-xxl-enc-bf16.pth'}", "max_steps=2"])
    text = open_text_encoder(cfg.data, dit.cfg.text_len, dit.cfg.text_dim)
    td = TrainData(data, kind="latents", batch_size=2, seed=0, val_episodes=1, codec_path=cfg.data.codec,
                   text_encoder=text, chunk_frames=dit.cfg.chunk_frames, clip_chunks=2)
    frames = torch.from_numpy(load_dataset(data)[0].frames[:25]).permute(0, 3, 1, 2).float()[None] / 255
    assert torch.equal(td.tracks[0]["latents"].transpose(0, 1), td.info.codec.encode(frames)[0])  # 27 -> 25 -> 7
    batch = td.batch(0)
    assert tuple(batch.latents.shape[1:]) == (16, 2 * dit.cfg.chunk_frames, 2, 2)
    assert batch.controls.keys.shape[2] == 4  # four video frames of controls per latent frame
    assert torch.equal(td.texts["red room"], text.encode("red room")[0].float())
    result = train("teacher", cfg, init=save_worldsim(dit, tmp_path / "t2v.safetensors"))
    assert result.step == 2 and all(torch.isfinite(torch.tensor(v)) for v in losses(result.out).values())


def test_ema_follows_the_weights():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.9)
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model, step=0)
    assert torch.allclose(ema.shadow["weight"], 0.9 * w0 + 0.1 * model.weight)
    late = EMA(model, decay=0.9, start=5)
    with torch.no_grad():
        model.weight.add_(1.0)
    late.update(model, step=1)  # before ema_start: a copy of the weights
    assert torch.equal(late.shadow["weight"], model.weight)


def test_trained_ema_differs_from_weights_and_exports(workdir):
    out = train("teacher", recipe("teacher", workdir, "ema")).out
    step = out / "checkpoints" / "step_0000004"
    model, ema = read_tensors(step / "model-teacher.safetensors"), read_tensors(step / "ema-teacher.safetensors")
    assert any(not torch.equal(model[k], ema[k]) for k in model)
    served = load_model(out / "final" / "teacher.safetensors")
    assert served.cfg.control is not None and served.cfg.control.keys == ("W", "A", "S", "D")
    assert torch.equal(served.state_dict()["head.head.weight"], ema["head.head.weight"])
    for name, weights in (("ema", ema), ("model", model)):  # a checkpoint's DiT loads by itself (toy_eval, serve)
        loaded = load_model(step / f"{name}-teacher.safetensors")
        assert loaded.cfg == served.cfg
        assert torch.equal(loaded.state_dict()["head.head.weight"], weights["head.head.weight"])


def test_init_from_a_text_to_video_checkpoint_adds_zero_controls(workdir):
    torch.manual_seed(0)
    t2v = CausalWanDiT(load_preset("tiny"))  # no control module
    path = save_worldsim(t2v, workdir / "t2v.safetensors")
    tr = Trainer("teacher", recipe("teacher", workdir, "init"), init=path)
    model = tr.stage.unwrap("teacher")
    assert model.control_embedding is not None
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in t2v.state_dict().items())
    assert not model.control_embedding.mlp[2].weight.any()
    tr.run()
    assert tr.stage.unwrap("teacher").control_embedding.mlp[2].weight.any()  # controls are being learned


def test_init_header_overriding_the_recipes_model_is_named(workdir, caplog):
    """A worldsim --init file brings its architecture; settings where the recipe's preset says otherwise (here a
    chunk size, which changes no weight shape) are named in a warning instead of being dropped silently."""
    import dataclasses

    torch.manual_seed(0)
    other = CausalWanDiT(dataclasses.replace(load_preset("tiny"), chunk_frames=1))
    path = save_worldsim(other, workdir / "chunk1.safetensors")
    with caplog.at_level("WARNING", logger="worldsim.train.trainer"):
        tr = Trainer("teacher", recipe("teacher", workdir, "init_header"), init=path)
    assert tr.stage.unwrap("teacher").cfg.chunk_frames == 1
    assert "chunk_frames 1 (recipe 3)" in caplog.text


def test_bf16_gradient_checkpointing_and_accumulation_run(workdir):
    cfg = recipe("teacher", workdir, "options", "mixed_precision=bf16", "gradient_checkpointing=true", "grad_accum=2",
                 "optim.warmup_steps=2", "max_steps=2")
    tr = Trainer("teacher", cfg)
    assert tr.stage.unwrap("teacher").gradient_checkpointing
    result = tr.run()
    assert result.step == 2 and torch.isfinite(torch.tensor(result.last_metrics["loss"]))
    with pytest.raises(ValueError, match="--resume"):  # a finished run is never overwritten by accident
        Trainer("teacher", cfg)


def test_codec_decoder_alone_keeps_the_latent_space(workdir):
    """``--init CODEC stage.train_encoder=false``: the decoder trains, the encoder and latent statistics are the
    init's bit for bit, so models trained on its latents still read them."""
    from worldsim.codecs.toy_codec import ToyCodec

    init = workdir / "codec" / "final" / "codec.safetensors"
    cfg = recipe("codec", workdir, "decoder-only", "stage.train_encoder=false", "stage.channels=[4]")
    out = train("codec", cfg, init=init).out
    before, after = read_tensors(init), read_tensors(out / "final" / "codec.safetensors")
    assert before.keys() == after.keys()  # the init's architecture, not stage.channels
    kept = [k for k in before if not k.startswith("decoder.")]
    assert "latent_mean" in kept and "encoder.0.weight" in kept
    assert all(torch.equal(before[k], after[k]) for k in kept)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    frames = torch.rand(1, 2, 3, 16, 16)
    old, new = ToyCodec.load(init), ToyCodec.load(out / "final" / "codec.safetensors")
    assert torch.equal(old.encode(frames), new.encode(frames))
    with pytest.raises(ValueError, match="--init"):
        Trainer("codec", recipe("codec", workdir, "no-init", "stage.train_encoder=false"))


def test_codec_cycle_weight_trains_the_round_trip(workdir):
    """``stage.cycle_weight``: the decoder learns to decode latents that encode back to themselves. From the same
    init on the same batch, the round trip's error ends far lower with the term than without it (where better
    reconstructions alone lower it too), and is logged."""
    def trained(weight: float) -> tuple[float, dict]:
        torch.manual_seed(0)
        tr = Trainer("codec", recipe("codec", workdir, f"cycle-{weight}", "stage.train_encoder=false",
                                     f"stage.cycle_weight={weight}", "stage.edge_weight=0"),
                     init=workdir / "codec" / "final" / "codec.safetensors")
        batch = tr.data.batch(0)
        for i in range(60):
            with tr.acc.accumulate(*tr.stage.models.values()):
                metrics = tr.stage.step(batch, i)
        with torch.no_grad():
            images = batch.frames.flatten(0, 1)
            return tr.stage.cycle_error(images, tr.stage.unwrap("codec")(images)).item(), metrics

    (plain, plain_metrics), (cycled, metrics) = trained(0.0), trained(10.0)
    assert "cycle" in metrics and "cycle" not in plain_metrics
    assert cycled < 0.7 * plain


def test_cli_runs_a_stage_with_overrides_after_options(workdir, capsys):
    import subprocess
    import sys

    from worldsim.cli import main

    out = workdir / "cli"
    rc = main(["train", "codec", "--config", str(RECIPES / "codec_micro.yaml"), "--data", str(workdir / "data"),
               "--out", str(out), "max_steps=1", "optim.lr=1e-3"])
    assert rc == 0 and "trained codec to step 1" in capsys.readouterr().out
    assert (out / "final" / "codec.safetensors").is_file()
    assert main(["train", "codec", "--config", str(RECIPES / "codec_micro.yaml"), "--data", str(workdir / "nope"),
                 "--out", str(workdir / "cli2")]) == 1  # a clear error, not a traceback
    code = "import sys; from worldsim.cli import build_parser; build_parser(); sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0  # the parser stays light
