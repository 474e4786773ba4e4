"""Two CPU processes (gloo) through accelerate: `ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from train_helpers import write_dataset

from worldsim.codecs.toy_codec import ToyCodec, ToyCodecConfig
from worldsim.train.checkpoint import latest_checkpoint

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_run_trains_and_saves_a_checkpoint(tmp_path):
    data = write_dataset(tmp_path / "data", episodes=3)
    torch.manual_seed(0)
    codec = ToyCodec(ToyCodecConfig(latent_channels=4, channels=(8, 8))).save(tmp_path / "codec.safetensors")
    out = tmp_path / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "worldsim", "train", "teacher",
           "--config", str(REPO / "configs" / "train" / "teacher_micro.yaml"), "--data", str(data), "--out", str(out),
           f"data.codec={codec}", "max_steps=2", "ckpt_every=2", "val_every=2"]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = latest_checkpoint(out / "checkpoints")
    assert ckpt is not None and ckpt.name == "step_0000002"
    assert {p.name for p in ckpt.iterdir()} >= {"model-teacher.safetensors", "ema-teacher.safetensors",
                                               "optim-teacher.safetensors", "rng-rank0.safetensors",
                                               "rng-rank1.safetensors", "state.safetensors"}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]  # written once (by the main process), not twice
    assert (out / "final" / "teacher.safetensors").is_file()
