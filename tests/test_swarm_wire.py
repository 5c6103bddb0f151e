"""Wire format: round trips, and every malformed frame refused with a reason."""

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.swarm import wire
from engine.swarm.identity import Identity, b58decode, b58encode, verify
from engine.swarm.wire import Message, Tensor, WireError

wire.schema("test.step", request_id=(str, True), tokens=(list, False), step=(int, True))


@pytest.fixture(scope="module")
def alice(tmp_path_factory):
    return Identity.load_or_create(tmp_path_factory.mktemp("alice"))


@pytest.fixture(scope="module")
def mallory(tmp_path_factory):
    return Identity.load_or_create(tmp_path_factory.mktemp("mallory"))


def message(sender, **tensors):
    return Message("test.step", "m1", sender, {"request_id": "r1", "step": 3, "tokens": [1, 2]}, tensors, 1.5)


def test_round_trip_with_tensors(alice):
    hidden = Tensor("bfloat16", (2, 4), bytes(range(16)))
    frame = wire.encode(message(alice.peer_id, hidden=hidden), alice.sign)
    got = wire.decode(frame, verify)
    assert got == message(alice.peer_id, hidden=hidden)


def test_identity_is_stable_across_restarts(tmp_path):
    first = Identity.load_or_create(tmp_path)
    assert Identity.load_or_create(tmp_path).peer_id == first.peer_id
    assert first.peer_id.startswith("12D3KooW")
    assert (tmp_path / "p2p.key").stat().st_mode & 0o777 == 0o600


@given(st.binary(min_size=1, max_size=40))
def test_base58_round_trip(data):
    assert b58decode(b58encode(data)) == data


def test_a_message_cannot_claim_another_sender(alice, mallory):
    forged = wire.encode(message(alice.peer_id), mallory.sign)
    with pytest.raises(WireError, match="bad signature"):
        wire.decode(forged, verify)


def test_tampered_payload_is_refused(alice):
    frame = bytearray(wire.encode(message(alice.peer_id, h=Tensor("float32", (2,), b"\0" * 8)), alice.sign))
    frame[-70] ^= 1
    with pytest.raises(WireError, match="bad signature"):
        wire.decode(bytes(frame), verify)


def raw_frame(header: dict, payload=b"", version=wire.VERSION, signer=None):
    head = json.dumps(header).encode()
    unsigned = wire.MAGIC + bytes([version]) + struct.pack("<I", len(head)) + head + payload
    return unsigned + (signer.sign(unsigned) if signer else b"\0" * 64)


def header(peer_id, **overrides):
    base = {"type": "test.step", "id": "m1", "sender": peer_id, "sent_at": 0.0,
            "body": {"request_id": "r", "step": 1}, "tensors": []}
    base.update(overrides)
    return base


@pytest.mark.parametrize("change,reason", [
    (dict(type="nope"), "unknown message type 'nope'"),
    (dict(body={"request_id": "r"}), "missing field 'step'"),
    (dict(body={"request_id": "r", "step": "1"}), "field 'step' has the wrong type"),
    (dict(body={"request_id": "r", "step": True}), "field 'step' has the wrong type"),
    (dict(body={"request_id": "r", "step": 1, "evil": 1}), r"unknown field\(s\) \['evil'\]"),
    (dict(tensors=[{"name": "h", "dtype": "complex128", "shape": [1]}]), "unsupported dtype"),
    (dict(tensors=[{"name": "h", "dtype": "float32", "shape": [-1]}]), "bad shape"),
    (dict(tensors=[{"name": "h", "dtype": "float32", "shape": [4]}]), "runs past the end"),
    (dict(id=""), "out of bounds"),
    (dict(sender=5), "'sender' missing or of the wrong type"),
])
def test_malformed_headers_are_refused(alice, change, reason):
    with pytest.raises(WireError, match=reason):
        wire.decode(raw_frame(header(alice.peer_id, **change), signer=alice), verify)


def test_unknown_version_is_refused(alice):
    with pytest.raises(WireError, match="unsupported protocol version 9"):
        wire.decode(raw_frame(header(alice.peer_id), version=9, signer=alice), verify)


def test_stray_bytes_and_oversize_are_refused(alice):
    with pytest.raises(WireError, match="stray bytes"):
        wire.decode(raw_frame(header(alice.peer_id), payload=b"xx", signer=alice), verify)
    big = wire.encode(message(alice.peer_id, h=Tensor("float32", (1000,), b"\0" * 4000)), alice.sign)
    with pytest.raises(WireError, match="exceeds the limit"):
        wire.decode(big, verify, max_frame_bytes=1000)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_decoder(data):
    with pytest.raises(WireError):
        wire.decode(data, verify)
