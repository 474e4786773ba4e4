"""Prompt-switch latency with a UMT5 text encoder, in process and through the daemon.

    python benchmarks/prompt_switch.py --t5 xxl --dtype bf16          # UMT5-XXL shape, random weights (~11 GiB)
    python benchmarks/prompt_switch.py --text-encoder wan_models/Wan2.1-T2V-1.3B/models_t5_umt5-xxl-enc-bf16.pth \\
        --tokenizer wan_models/Wan2.1-T2V-1.3B/google/umt5-xxl          # the published encoder
    python benchmarks/prompt_switch.py --t5 small --switches 3          # a quick check

Measured:

1. **encode**: seconds to encode one new prompt (padded to the DiT's 512 tokens as Wan does), cold, per prompt,
   and a repeated prompt (served from the encoder's cache);
2. **through the daemon** (`worldsim.serve`, in this process): two paced sessions of a small DiT whose text width is
   the encoder's (chunks of one latent frame, so a switch can apply every 4 frames); session A switches prompt ``--switches`` times. Per switch: the time from sending the switch to
   the first frame of A made under it (``prompt_seq``), and the largest gap between session B's chunks while the
   encoder runs, next to B's median gap between chunks: the daemon encodes on its own thread, so a switch must not stall other
   streams, but on a CPU the encoder competes with the model for the same cores.

Without ``--text-encoder`` the encoder has the UMT5 shape of ``--t5`` and random weights, and prompts are tokenised
by a stand-in (word hashes; the real tokenizer costs well under a millisecond): the timing depends on the shape,
not on the weights' values. Conditions and results are printed and written to ``--json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

T5_SHAPES = {  # d_model, layers, heads, d_ff, vocab (xxl: Wan2.1's models_t5_umt5-xxl-enc-bf16.pth)
    "xxl": (4096, 24, 64, 10240, 256384),
    "small": (512, 8, 8, 1024, 32128),
}
TEXT_LEN = 512


class HashTokenizer:
    """Stand-in for the T5 tokenizer: a word's id is a hash, padded/truncated to ``max_length`` like the real call."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __call__(self, texts, *, max_length: int, **_kw):
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, text in enumerate(texts):
            words = [int.from_bytes(hashlib.blake2b(w.encode(), digest_size=4).digest(), "little") % (self.vocab - 2)
                     + 2 for w in text.split()][: max_length - 1] + [1]  # </s> = 1
            ids[i, :len(words)] = torch.tensor(words)
            mask[i, :len(words)] = 1
        return argparse.Namespace(input_ids=ids, attention_mask=mask)


def random_umt5(shape: str, dtype: torch.dtype):
    """A UMT5 encoder of the named shape with random weights (initialised cheaply: values do not change the timing)."""
    from transformers import UMT5Config, UMT5EncoderModel

    d_model, layers, heads, d_ff, vocab = T5_SHAPES[shape]
    cfg = UMT5Config(vocab_size=vocab, d_model=d_model, d_kv=d_model // heads, d_ff=d_ff, num_layers=layers,
                     num_heads=heads, feed_forward_proj="gated-gelu", dropout_rate=0.0, tie_word_embeddings=False)
    with torch.device("meta"):
        model = UMT5EncoderModel(cfg)
    model = model.to_empty(device="cpu").to(dtype)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.empty(p.shape, dtype=torch.float32).uniform_(-0.02, 0.02, generator=g).to(dtype)
                    if p.dim() < 2 or p.numel() < 2**24 else (torch.rand(p.shape[1], generator=g) * 0.04 - 0.02)
                    .to(dtype).expand_as(p))  # big matrices: one random row repeated (GBs of RNG otherwise)
    return model.eval(), HashTokenizer(vocab)


def build_encoder(args, device: torch.device):
    from worldsim.text.umt5 import UMT5TextEncoder, load_tokenizer, load_umt5_encoder

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    if args.text_encoder:
        model = load_umt5_encoder(args.text_encoder, dtype=dtype, device=device)
        tokenizer = load_tokenizer(args.tokenizer)
    else:
        model, tokenizer = random_umt5(args.t5, dtype)
    return UMT5TextEncoder(model, tokenizer, text_len=TEXT_LEN, device=device)


def encode_latency(encoder, prompts: list[str]) -> dict:
    cold = []
    for p in prompts:
        t = time.perf_counter()
        encoder(p)
        cold.append(time.perf_counter() - t)
    t = time.perf_counter()
    encoder(prompts[0])
    return {"cold_s": cold, "cold_median_s": statistics.median(cold), "cached_s": time.perf_counter() - t}


def daemon_latency(args, encoder, prompts: list[str]) -> dict:
    """Two paced sessions; A switches prompt, B only streams. Per switch: A's switch latency, B's largest gap."""
    from worldsim.client import Client
    from worldsim.runtime import RuntimeOptions, build_runtime
    from worldsim.serve.daemon import Daemon, DaemonConfig

    preset = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "model" / f"{args.dit}.yaml")
                            .read_text())
    preset.update(text_dim=encoder.dim, text_len=TEXT_LEN)
    preset.pop("description", None)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dit.yaml"
        path.write_text(yaml.safe_dump(preset))
        runtime = build_runtime(RuntimeOptions(preset=str(path), height=args.size, width=args.size,
                                               device=args.device, fps=args.fps, chunk_latents=1))
    runtime.embed_prompt, runtime.text_encoder_name = encoder, "umt5"  # encoded off the model loop, as for a folder
    daemon = Daemon(runtime, DaemonConfig(bind="tcp://127.0.0.1:*", stats_interval_s=0)).start()
    results = []
    try:
        with Client(daemon.endpoint, timeout=600) as c:
            a, b = c.open(prompts[0]), c.open(prompts[0])
            arrivals = {a: [], b: []}

            def next_frame():
                f = c.frame(0.5)
                if f is not None and f.chunk not in {k for k, _ in arrivals[f.session]}:
                    arrivals[f.session].append((f.chunk, f.received))  # a chunk's frames arrive together
                return f

            def chunk_gaps(since: float = float("-inf")) -> list[float]:
                times = [t for _, t in arrivals[b]]
                return [y - x for x, y in zip(times, times[1:]) if x >= since]

            while len(arrivals[b]) < 8:  # warm-up: eight chunks of B
                next_frame()
            for text in prompts[1:args.switches + 1]:
                t0 = time.monotonic()
                seq = c.send(a, prompt=text, mode="recache")
                while (f := next_frame()) is None or f.session != a or f.header["prompt_seq"] != seq:
                    pass
                gaps = chunk_gaps(since=t0 - 1e-3)
                results.append({"switch_s": f.received - t0, "b_max_gap_s": max(gaps) if gaps else None})
            median_gap = statistics.median(chunk_gaps())
    finally:
        daemon.stop()
    return {"switches": results, "b_median_gap_s": median_gap,
            "switch_median_s": statistics.median(r["switch_s"] for r in results)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="prompt_switch", description=__doc__.split("\n\n")[0])
    p.add_argument("--t5", default="xxl", choices=tuple(T5_SHAPES), help="encoder shape with random weights")
    p.add_argument("--text-encoder", help="a real UMT5 file or folder (Wan's .pth or text_encoder/) instead")
    p.add_argument("--tokenizer", help="its tokenizer folder (with --text-encoder)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"), help="encoder precision (default bf16)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    p.add_argument("--dit", default="tiny", help="DiT preset streaming the two sessions (text width set to the "
                                                 "encoder's; default tiny)")
    p.add_argument("--size", type=int, default=64, help="video side in pixels (default 64)")
    p.add_argument("--fps", type=float, default=16.0, help="pacing of both sessions (default 16; chunks of one "
                                                            "latent frame = 4 video frames)")
    p.add_argument("--switches", type=int, default=4, help="prompt switches through the daemon (default 4)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads")
    p.add_argument("--json", type=Path, help="write conditions and results here")
    args = p.parse_args(argv)
    if args.text_encoder and not args.tokenizer:
        p.error("--text-encoder needs --tokenizer")
    if args.threads:
        torch.set_num_threads(args.threads)
    from worldsim.pipeline.devices import resolve_device

    device = resolve_device(args.device)
    t = time.perf_counter()
    encoder = build_encoder(args, device)
    load_s = time.perf_counter() - t
    params = sum(p.numel() for p in encoder.model.parameters())
    prompts = [f"scene {i}: a quiet forest path at dawn with mist between the pines, seen while walking slowly"
               for i in range(args.switches + 4)]
    cond = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(), "encoder": args.text_encoder or f"random {args.t5}",
            "params": f"{params:,}", "dtype": args.dtype, "text_len": TEXT_LEN, "dit": args.dit,
            "video": f"{args.size}x{args.size}", "fps": args.fps, "torch": torch.__version__,
            "load_s": round(load_s, 1)}
    print("conditions: " + ", ".join(f"{k}={v}" for k, v in cond.items()), flush=True)
    enc = encode_latency(encoder, prompts[-3:])
    print(f"encode: cold median {enc['cold_median_s']:.3f} s ({', '.join(f'{s:.3f}' for s in enc['cold_s'])}), "
          f"cached {1e3 * enc['cached_s']:.2f} ms", flush=True)
    served = daemon_latency(args, encoder, prompts)
    for i, r in enumerate(served["switches"]):
        gap = f"{r['b_max_gap_s']:.3f}" if r["b_max_gap_s"] is not None else "-"
        print(f"switch {i}: applied after {r['switch_s']:.3f} s; other session's largest gap between chunks {gap} s")
    print(f"through the daemon: switch median {served['switch_median_s']:.3f} s; other session's median gap between chunks "
          f"{served['b_median_gap_s']:.3f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"conditions": cond, "encode": enc, "daemon": served}, indent=1))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
