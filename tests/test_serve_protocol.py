"""Protocol v1 without sockets: versions, decoding limits, field validation, control buffering, payloads."""

from __future__ import annotations

import math

import msgpack
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worldsim.serve import frame_format
from worldsim.serve.controls import ControlBuffer
from worldsim.text.hashing import HashingPromptEmbedder
from worldsim.serve.protocol import (ERROR_CODES, PROTOCOL_VERSION, ControlRows, ControlSchema, Input, Limits, Open,
                                     ProtocolError, check_compatible, decode, pack, parse)

SCHEMA = ControlSchema(keys=("W", "A", "S", "D"), axes=("mouse_dx", "mouse_dy"), embedding_dim=3, frames_per_latent=4)
LIMITS = Limits(max_message_bytes=64 << 10, max_samples=32)


def check(msg) -> object:
    return parse(decode(pack(msg), LIMITS, SCHEMA), SCHEMA, LIMITS)


def code_of(msg) -> str:
    with pytest.raises(ProtocolError) as e:
        check(msg) if isinstance(msg, dict) else parse(decode(msg, LIMITS, SCHEMA), SCHEMA, LIMITS)
    assert e.value.code in ERROR_CODES
    return e.value.code


def test_versions():
    check_compatible(PROTOCOL_VERSION)
    check_compatible("1.7.3")
    with pytest.raises(ProtocolError, match="major versions must match") as e:
        check_compatible("2.0.0")
    assert e.value.code == "version_mismatch"
    assert code_of({"type": "hello", "seq": 1, "protocol": "v1"}) == "bad_field"


def test_decode_rejects_non_maps_and_garbage():
    assert code_of(b"\xc1") == "bad_message"  # never-used msgpack byte
    assert code_of(msgpack.packb([1, 2])) == "bad_message"
    assert code_of(msgpack.packb({"seq": 1})) == "missing_field"
    assert code_of(msgpack.packb({"type": 5, "seq": 1})) == "bad_field"
    assert code_of(msgpack.packb({"type": "launch", "seq": 1})) == "unknown_type"
    assert code_of(b"\x91" * 5000 + b"\xc0") == "bad_message"  # deep nesting / over limits
    assert code_of(b"\x00" * (LIMITS.max_message_bytes + 1)) == "bad_message"
    assert code_of(msgpack.packb({"type": "ping", "seq": 1}) + b"x") == "bad_message"  # trailing bytes
    assert code_of(msgpack.packb({"type": "ping", "seq": 1, "x": list(range(100))})) == "bad_message"  # long array


def test_field_checks():
    assert code_of({"type": "open"}) == "missing_field"  # no seq
    assert code_of({"type": "open", "seq": -1}) == "bad_field"
    assert code_of({"type": "open", "seq": True}) == "bad_field"  # bool is not an int
    assert code_of({"type": "open", "seq": 1, "format": "webp"}) == "bad_field"
    assert code_of({"type": "open", "seq": 1, "fps": float("nan")}) == "bad_field"
    assert code_of({"type": "open", "seq": 1, "prompt": "x" * (LIMITS.max_prompt_chars + 1)}) == "bad_field"
    assert code_of({"type": "input", "seq": 1}) == "missing_field"  # no session
    assert code_of({"type": "input", "seq": 1, "session": 1}) == "missing_field"  # carries nothing
    assert code_of({"type": "input", "seq": 1, "session": 1, "prompt": {"text": "a", "mode": "hard"}}) == "bad_field"
    assert code_of({"type": "close", "seq": 1, "session": "one"}) == "bad_field"
    assert code_of({"type": "open", "seq": 1, "lookahead": 6}) == "bad_field"  # at most 5 s
    assert code_of({"type": "open", "seq": 1, "seed": 3.0}) == "bad_field"  # integral floats are not integers
    o = check({"type": "open", "seq": 3, "prompt": "a forest", "seed": 7, "format": "jpeg", "fps": 0,
               "lookahead": 0.25, "jpeg_quality": None})  # nil is absent
    assert isinstance(o, Open) and (o.seed, o.format, o.fps, o.lookahead, o.jpeg_quality) == (7, "jpeg", 0, 0.25, 85)


def test_start_frame_checks():
    good = {"format": "rgb24", "shape": [2, 3, 3], "data": bytes(18)}
    assert check({"type": "open", "seq": 1, "start_frame": good}).start_frame.shape == (2, 3, 3)
    assert code_of({"type": "open", "seq": 1, "start_frame": good | {"data": bytes(17)}}) == "bad_field"
    assert code_of({"type": "open", "seq": 1, "start_frame": good | {"shape": [2, 3, 4]}}) == "bad_field"
    assert code_of({"type": "open", "seq": 1, "start_frame": {"format": "bmp", "data": b""}}) == "bad_field"
    assert check({"type": "open", "seq": 1}).package_start is True  # a package's start frame unless opted out
    assert check({"type": "open", "seq": 1, "package_start": False}).package_start is False
    assert code_of({"type": "open", "seq": 1, "package_start": "no"}) == "bad_field"


def test_controls_checked_against_schema():
    base = {"type": "input", "seq": 1, "session": 1}
    ok = check(base | {"controls": {"keys": [[1, 0, 0, 0], [0, 1, 0, 0]], "axes": [[0.5, -9.0], [0, 0]],
                                    "embedding": np.ones((2, 3), "<f4").tobytes()}})
    assert isinstance(ok, Input) and ok.controls.keys.shape == (2, 4) and ok.controls.embedding.shape == (2, 3)
    assert ok.controls.axes[0, 1] == -4.0  # clipped to AXIS_CLIP
    hold = check(base | {"hold": {"keys": [1, 1, 0, 0]}}).hold
    assert hold.keys.shape == (1, 4)
    for bad in ({"keys": [[1, 0, 0]]},  # wrong width
                {"keys": [[1, 0, 0, 2]]},  # not 0/1
                {"keys": [[1, 0, 0, 0]], "axes": [[0, 0], [0, 0]]},  # row counts differ
                {"axes": [[float("inf"), 0]]},
                {"embedding": bytes(10)},  # not whole float32 rows of 3
                {"embedding": [[1, 2]]},
                {"mouse": [[1]]},  # unknown source
                {"keys": "WASD"},
                {"keys": [[1, 0, 0, 0]] * (LIMITS.max_samples + 1)},
                {}):
        assert code_of(base | {"controls": bad}) in ("bad_controls", "bad_message"), bad
    assert code_of(base | {"hold": {"keys": [[1, 0, 0, 0], [1, 0, 0, 0]]}}) == "bad_controls"
    no_controls = ControlSchema(frames_per_latent=4)
    with pytest.raises(ProtocolError, match="takes no controls"):
        parse(base | {"controls": {"keys": [[1]]}}, no_controls, LIMITS)


# ---- property-based: any msgpack value is either a typed message or a ProtocolError ------------------------------

leaves = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.floats(), st.text(max_size=20),
                   st.binary(max_size=40))
values = st.one_of(leaves, st.lists(leaves, max_size=5), st.dictionaries(st.text(max_size=8), leaves, max_size=5),
                   st.lists(st.lists(leaves, max_size=6), max_size=3))
field_names = st.sampled_from(["type", "seq", "session", "prompt", "seed", "format", "fps", "controls", "hold", "keys",
                               "axes", "embedding", "text", "mode", "start_frame", "protocol", "jpeg_quality", "t"])
types = st.sampled_from(["hello", "open", "input", "pause", "resume", "reset", "close", "stats", "ping", "bye", "x"])
messages = st.fixed_dictionaries({"type": types, "seq": st.integers(-5, 2**64 - 1)},
                                 optional={"session": st.integers(-1, 5), "controls": values, "hold": values,
                                           "prompt": st.one_of(values, st.fixed_dictionaries({"text": st.text()}))}
                                 ).flatmap(lambda m: st.dictionaries(field_names, values, max_size=4)
                                           .map(lambda x: m | x))


@settings(max_examples=1500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), values.map(pack), messages.map(pack)))
def test_fuzz_parse_never_crashes(raw):
    try:
        parse(decode(raw, LIMITS, SCHEMA), SCHEMA, LIMITS)
    except ProtocolError as e:
        assert e.code in ERROR_CODES and e.message


# ---- control buffering ---------------------------------------------------------------------------------------


def rows(keys=None, axes=None, emb=None) -> ControlRows:
    f = (lambda a: None if a is None else np.asarray(a, np.float32))
    return ControlRows(f(keys), f(axes), f(emb))


def test_buffer_pads_with_held_state():
    b = ControlBuffer(SCHEMA, max_queued=64)
    b.push(rows(keys=[[1, 0, 0, 0]], axes=[[0.5, 0.25]]))
    out = b.take(3)
    assert out["keys"].tolist() == [[1, 0, 0, 0]] * 3  # keys stay held
    assert out["axes"].tolist() == [[0.5, 0.25], [0, 0], [0, 0]]  # deltas do not repeat
    b.hold(rows(axes=[[0.1, 0.0]]))  # a stick held at 0.1
    assert np.allclose(b.take(2)["axes"], [[0.1, 0.0]] * 2)


def test_buffer_resamples_when_ahead():
    b = ControlBuffer(SCHEMA, max_queued=64)
    b.push(rows(keys=[[1, 0, 0, 0]] * 3 + [[0, 1, 0, 0]] * 5, axes=[[1, 0]] * 8, emb=np.arange(24).reshape(8, 3)))
    out = b.take(2)  # 8 rows -> 2 bins of 4
    assert out["keys"].tolist() == [[1, 0, 0, 0], [0, 1, 0, 0]]  # held >= half the interval
    assert out["axes"].tolist() == [[4, 0], [4, 0]]  # deltas summed
    assert out["embedding"].tolist() == [[9, 10, 11], [21, 22, 23]]  # last value
    assert b.queued == 0


def test_buffer_drops_oldest_past_cap():
    b = ControlBuffer(SCHEMA, max_queued=5)
    b.push(rows(axes=[[i, 0] for i in range(8)]))
    assert b.dropped == 3 and b.queued == 5
    assert b.take(5)["axes"][:, 0].tolist() == [3, 4, 5, 6, 7]


def test_chunk_controls_shapes_and_neutral_first_latent():
    b = ControlBuffer(SCHEMA, max_queued=64)
    assert b.for_chunk(3, True, torch.device("cpu"), torch.float32).controls is None  # nothing sent yet
    b.push(rows(keys=[[1, 0, 0, 0]] * 8))
    cc = b.for_chunk(3, starts_stream=True, device=torch.device("cpu"), dtype=torch.float32)
    c = cc.controls
    assert c.keys.shape == (1, 3, 4, 4) and c.axes is None and c.embedding is None  # only sources sent
    assert c.present.tolist() == [[False, True, True]] and len(cc.rows) == 8
    assert c.keys[0, 0].abs().sum() == 0 and c.keys[0, 1:, :, 0].eq(1).all()
    assert len(b.for_chunk(3, False, torch.device("cpu"), torch.float32).rows) == 12


def test_one_latent_chunk_starting_the_stream_is_neutral_and_leaves_the_queue():
    """Chunks of one latent frame (the toy model): controls sent before the first chunk wait for the second."""
    b = ControlBuffer(SCHEMA, max_queued=64)
    b.push(rows(keys=[[1, 0, 0, 0]] * 4))
    first = b.for_chunk(1, starts_stream=True, device=torch.device("cpu"), dtype=torch.float32)
    assert first.controls.present.tolist() == [[False]] and first.controls.keys.abs().sum() == 0
    assert len(first.rows) == 0 and b.queued == 4
    second = b.for_chunk(1, starts_stream=False, device=torch.device("cpu"), dtype=torch.float32)
    assert second.controls.present.tolist() == [[True]] and second.controls.keys[0, 0, :, 0].eq(1).all()
    assert b.queued == 0


def test_hashing_prompt_embedder_is_deterministic():
    e = HashingPromptEmbedder(text_len=8, text_dim=16)
    a, b = e("A red fox"), HashingPromptEmbedder(8, 16)("a red fox!")
    assert a.shape == (1, 8, 16) and torch.equal(a, b)  # same words, same vectors (case and punctuation ignored)
    c = e("a blue fox")
    assert torch.equal(a[0, 2], c[0, 2]) and not torch.equal(a[0, 1], c[0, 1])
    assert e("").abs().sum() == 0 and math.isclose(float(a[0, :3].pow(2).mean()), 1.0, rel_tol=0.3)


def test_frame_payloads_round_trip():
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    raw = frame_format.encode(img, "rgb24")
    assert np.array_equal(frame_format.decode(raw, "rgb24", img.shape), img)
    smooth = np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], 48, 0).repeat(3, 2)
    jpg = frame_format.encode(smooth, "jpeg", 90)
    back = frame_format.decode(jpg, "jpeg")
    assert back.shape == smooth.shape and np.abs(back.astype(int) - smooth).mean() < 3
    assert frame_format.fit(img, 24, 32).shape == (24, 32, 3)


def test_client_drops_frames_of_reset_epochs_and_closed_sessions():
    """Replies overtake queued frames (daemon and gateway), so a client can get a frame of the old epoch after the
    reset reply, or of a session after its close reply: both are stale."""
    from worldsim.client.core import ClientCore, Frame

    def frame(session: int, epoch: int) -> Frame:
        return Frame({"type": "frame", "session": session, "epoch": epoch}, b"", 0.0)

    core = ClientCore("t")
    assert not core.stale(frame(1, 0))
    core.restarted(1, 2)
    assert core.stale(frame(1, 1)) and not core.stale(frame(1, 2)) and not core.stale(frame(2, 0))
    core.closed(2)
    assert core.stale(frame(2, 5)) and not core.stale(frame(1, 3))
