"""A live node refuses every bad message with a reason, and keeps serving.

The test is a raw Lattica peer of its own, outside the node process: first a stranger, then a
member of the swarm (it joins as a client-only node)."""

import json
import queue
import struct
import threading
import uuid

import pytest

from engine.swarm import wire
from engine.swarm.transport import METHOD, PeerError, Transport
from engine.swarm.wire import Message, Tensor
from tests.swarm_processes import NodeProcess, all_ready
from tests.test_swarm_transport import free_port

pytestmark = [pytest.mark.network, pytest.mark.slow]


@pytest.fixture(scope="module")
def host(tmp_path_factory, make_checkpoint):
    node = NodeProcess(tmp_path_factory.mktemp("host"), "--host", "--model", str(make_checkpoint("llama")))
    node.wait_for(lambda s: all_ready(s, 1), "the host serving every layer")
    yield node
    node.stop()


@pytest.fixture(scope="module")
def outsider(tmp_path_factory, host):
    inbox = queue.Queue()
    peer = Transport(tmp_path_factory.mktemp("outsider"), ("127.0.0.1", free_port()), "main",
                     lambda m: inbox.put(m), bootstrap=[host.multiaddr])
    peer.inbox = inbox
    yield peer
    peer.close()


def forward(peer, host, route, hop=0, tokens=None, tensors=None, kind="prefill", step=0, request_id=None,
            message_id=None, max_tokens=4):
    body = {"request_id": request_id or uuid.uuid4().hex, "origin": peer.peer_id, "route": route, "hop": hop,
            "kind": kind, "step": step,
            "sampling": {"max_tokens": max_tokens, "temperature": 0.0, "top_p": 1.0, "stop_token_ids": []}}
    if tokens is not None:
        body["tokens"] = tokens
    return peer.send(host.peer_id, "stage.forward", body, tensors, message_id=message_id)


def raw(peer, host, frame):
    return json.loads(peer.node.get_client(host.peer_id).call(METHOD, frame).result(10))


def test_refusals_of_a_stranger_then_of_a_member(host, outsider):
    whole = [[host.peer_id, 0, 8]]
    # a stranger may not push work into the swarm
    with pytest.raises(PeerError, match="not a member of this swarm"):
        forward(outsider, host, whole, tokens=[1, 2, 3])

    outsider.send(host.peer_id, "sched.join", {"serves": False, "memory_bytes": 0, "profile": {}})
    stop_heartbeats = threading.Event()  # a member sends heartbeats, or the host evicts it

    def heartbeats():
        while not stop_heartbeats.wait(0.5):
            outsider.send(host.peer_id, "sched.heartbeat", {"resident": 0, "kv_free_bytes": 0, "served_tokens": 0,
                                                            "utilization": 0.0, "step_ms": 0.0, "known_version": -1})

    threading.Thread(target=heartbeats, daemon=True).start()
    try:
        _refusals_of_a_member(host, outsider)
    finally:
        stop_heartbeats.set()


def _refusals_of_a_member(host, outsider):
    whole = [[host.peer_id, 0, 8]]
    split = [[outsider.peer_id, 0, 4], [host.peer_id, 4, 8]]  # we pretend to run layers 0-3 ourselves

    refusals = {
        "garbage": (lambda: raw(outsider, host, b"\x00garbage" * 20), "not a Potluck frame"),
        "unknown version": (lambda: raw(outsider, host, _with_version(outsider, 9)), "unsupported protocol version 9"),
        "oversized": (lambda: raw(outsider, host, b"PLK\x01" + struct.pack("<I", 10) + b"\0" * (5 << 20)),
                      "exceeds the limit"),
    }
    for name, (call, reason) in refusals.items():
        reply = call()
        assert reply["ok"] is False and reason in reply["error"], name

    bad_tensors = {
        "wrong dtype": (Tensor("float16", (3, 64), b"\0" * 3 * 64 * 2), "hidden states must be float32"),
        "wrong shape": (Tensor("float32", (3, 65), b"\0" * 3 * 65 * 4), "must have shape [T, 64]"),
    }
    for name, (tensor, reason) in bad_tensors.items():
        with pytest.raises(PeerError, match=reason.replace("[", r"\[").replace("]", r"\]")):
            forward(outsider, host, split, hop=1, tensors={"hidden": tensor})
    with pytest.raises(PeerError, match=r"token ids must be integers in \[0, 384\)"):
        forward(outsider, host, whole, tokens=[1, 99999])
    with pytest.raises(PeerError, match="route hops must cover contiguous layer ranges"):
        forward(outsider, host, [[host.peer_id, 0, 5], [host.peer_id, 6, 8]], tokens=[1])
    with pytest.raises(PeerError, match="unknown request"):
        forward(outsider, host, whole, tokens=[1], kind="decode", step=3)

    # a duplicate delivery is answered from memory and runs once: exactly one token comes back
    rid = uuid.uuid4().hex
    first = forward(outsider, host, whole, tokens=[5, 6, 7], request_id=rid, message_id="dup", max_tokens=1)
    again = forward(outsider, host, whole, tokens=[5, 6, 7], request_id=rid, message_id="dup", max_tokens=1)
    assert first == again == {"ok": True}
    marker = uuid.uuid4().hex
    forward(outsider, host, whole, tokens=[8], request_id=marker, max_tokens=1)
    seen = []
    while not any(m.body["request_id"] == marker for m in seen):
        seen.append(outsider.inbox.get(timeout=60))
    assert [m.body["request_id"] for m in seen].count(rid) == 1

    # still serving, and it counted what it refused
    snapshot = host.swarm()
    assert sum(snapshot["refused_messages"].values()) >= 9  # the refusals above, each counted
    reply = host.http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}],
                                                          "max_tokens": 4, "temperature": 0})
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] >= 1


def _with_version(peer, version):
    frame = bytearray(wire.encode(Message("ping", "v", peer.peer_id, {}), peer.identity.sign))
    frame[3] = version
    return bytes(frame)
