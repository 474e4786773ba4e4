"""UMT5 text encoder: Wan's ``models_t5_umt5-xxl-enc-bf16.pth`` maps key for key onto transformers'
``UMT5EncoderModel``, gives the same embeddings as a diffusers ``text_encoder/`` folder with the same weights,
and prompts are cleaned, padded to text_len, zeroed past their tokens and cached."""

from __future__ import annotations

import pytest
import torch

from tiny_models import tiny_umt5, umt5_wan_state_dict, write_tokenizer
from worldsim.checkpoints import CheckpointError
from worldsim.text.cleaning import clean_prompt
from worldsim.text.umt5 import TIED_EMBEDDING, UMT5TextEncoder, load_tokenizer, load_umt5_encoder, wan_to_hf_key

PROMPTS = ["a red fox runs in the snow", "the city at night", "a cat"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The same tiny encoder as Wan's .pth (Wan names, bf16) and as a diffusers folder, plus a tokenizer."""
    root = tmp_path_factory.mktemp("umt5")
    model = tiny_umt5()
    torch.save(umt5_wan_state_dict(model), root / "models_t5_umt5-xxl-enc-bf16.pth")
    model.save_pretrained(root / "text_encoder")
    write_tokenizer(root / "google" / "umt5-xxl")
    return root, model


def test_every_wan_key_maps_onto_transformers(files):
    root, model = files
    wan = torch.load(root / "models_t5_umt5-xxl-enc-bf16.pth", weights_only=True)
    assert len(wan) == 1 + 10 * 2 + 1  # as Wan's 242 = 1 + 10 x 24 + 1
    mapped = {wan_to_hf_key(k) for k in wan}
    assert len(mapped) == len(wan)
    assert mapped | {TIED_EMBEDDING} == set(model.state_dict())  # nothing missing, nothing unexpected
    loaded = load_umt5_encoder(root / "models_t5_umt5-xxl-enc-bf16.pth")
    assert loaded.config.num_layers == 2 and loaded.config.d_model == 32 and loaded.config.num_heads == 4
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in loaded.state_dict().items())


def test_wan_gate_is_the_activated_branch(files):
    """Wan's FFN is fc2(fc1(x) * gelu_tanh(gate.0(x))): check it against the mapped transformers layer."""
    root, _ = files
    wan = {k: v.float() for k, v in torch.load(root / "models_t5_umt5-xxl-enc-bf16.pth", weights_only=True).items()}
    layer = load_umt5_encoder(root / "models_t5_umt5-xxl-enc-bf16.pth").encoder.block[0].layer[1].DenseReluDense
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    gelu = torch.nn.functional.gelu(x @ wan["blocks.0.ffn.gate.0.weight"].T, approximate="tanh")
    wan_out = (x @ wan["blocks.0.ffn.fc1.weight"].T * gelu) @ wan["blocks.0.ffn.fc2.weight"].T
    torch.testing.assert_close(layer(x), wan_out)


def test_wan_file_and_diffusers_folder_give_the_same_embeddings(files):
    root, _ = files
    tok = load_tokenizer(root / "google" / "umt5-xxl")
    a = UMT5TextEncoder(load_umt5_encoder(root / "models_t5_umt5-xxl-enc-bf16.pth"), tok, text_len=16).encode(PROMPTS)
    b = UMT5TextEncoder(load_umt5_encoder(root / "text_encoder"), tok, text_len=16).encode(PROMPTS)
    assert a.shape == (3, 16, 32)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_padding_is_zeroed_and_embeddings_are_cached(files):
    root, _ = files
    model = load_umt5_encoder(root / "text_encoder")
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    enc = UMT5TextEncoder(model, load_tokenizer(root / "google" / "umt5-xxl"), text_len=12, batch_size=2)
    out = enc.encode(PROMPTS)
    lengths = [len(enc.tokenizer(p).input_ids) for p in PROMPTS]  # words + </s>
    assert lengths == [8, 5, 3]
    for emb, n in zip(out, lengths):
        assert emb[:n].abs().sum(-1).min() > 0 and emb[n:].abs().max() == 0
    assert len(calls) == 2  # 3 prompts in batches of 2
    again = enc.encode(["  a   cat ", "the city at night"])  # same prompts after cleaning: no new forward
    assert len(calls) == 2
    torch.testing.assert_close(again, out[[2, 1]])
    long = enc.encode("a cat " * 20)  # truncated to text_len, ends without padding
    assert long.shape == (1, 12, 32) and long[0].abs().sum(-1).min() > 0
    # offloading: the encoder rests on the CPU and gives the same numbers
    off = UMT5TextEncoder(load_umt5_encoder(root / "text_encoder"), enc.tokenizer, text_len=12, offload=True)
    torch.testing.assert_close(off.encode(PROMPTS), out)
    assert next(off.model.parameters()).device.type == "cpu"


def test_prompt_cleaning():
    assert clean_prompt("  a &amp;amp; b\n\n\tc  ") == "a & b c"
    assert clean_prompt("caf\u00c3\u00a9 at night") == "café at night"  # mojibake repaired by ftfy


def test_bad_encoder_file_names_the_key(files, tmp_path):
    root, _ = files
    wan = torch.load(root / "models_t5_umt5-xxl-enc-bf16.pth", weights_only=True)
    wan["blocks.1.ffn.extra.weight"] = wan.pop("blocks.1.ffn.fc2.weight")
    torch.save(wan, tmp_path / "t5.pth")
    expected = r"missing: 'encoder\.block\.1\.layer\.1\.DenseReluDense\.wo\.weight'; 1 unexpected: 'blocks\.1"
    with pytest.raises(CheckpointError, match=expected):
        load_umt5_encoder(tmp_path / "t5.pth")
