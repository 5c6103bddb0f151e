"""The Lattica transport on loopback: signed delivery, refusals, duplicates, and staying up.

tests/run.sh runs this inside a private network namespace (Lattica probes STUN servers at start)."""

import json
import socket
import threading

import pytest

from engine.swarm import wire
from engine.swarm.transport import METHOD, PeerError, Transport
from engine.swarm.wire import Tensor, WireError

pytestmark = pytest.mark.network

wire.schema("test.push", request_id=(str, True), n=(int, False))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    def __init__(self):
        self.messages, self.lock = [], threading.Lock()

    def __call__(self, message):
        if message.body.get("n") == -1:
            raise WireError("n must not be negative")
        with self.lock:
            self.messages.append(message)
        return {"seen": len(self.messages)}


@pytest.fixture
def pair(tmp_path):
    inbox = Inbox()
    b = Transport(tmp_path / "b", ("127.0.0.1", free_port()), "test", inbox)
    a = Transport(tmp_path / "a", ("127.0.0.1", free_port()), "test", lambda m: None, bootstrap=[b.multiaddr])
    yield a, b, inbox
    a.close()
    b.close()


def test_signed_delivery_with_a_tensor(pair):
    a, b, inbox = pair
    reply = a.send(b.peer_id, "test.push", {"request_id": "r1", "n": 2},
                   {"hidden": Tensor("bfloat16", (1, 3), b"\1\2\3\4\5\6")})
    assert reply == {"ok": True, "seen": 1}
    (got,) = inbox.messages
    assert got.sender == a.peer_id and got.tensors["hidden"].data == b"\1\2\3\4\5\6"


def test_duplicate_delivery_is_handled_once(pair):
    a, b, inbox = pair
    first = a.send(b.peer_id, "test.push", {"request_id": "r1"}, message_id="same")
    again = a.send(b.peer_id, "test.push", {"request_id": "r1"}, message_id="same")
    assert first == again and len(inbox.messages) == 1


def test_garbage_and_refusals_get_a_reason_and_the_node_stays_up(pair):
    a, b, inbox = pair
    client = a.node.get_client(b.peer_id)
    raw = client.call(METHOD, b"\0" * 100).result(10)
    assert json.loads(raw) == {"ok": False, "error": "not a Potluck frame"}
    unknown = wire.encode(wire.Message("test.unknown", "u1", a.peer_id, {}), a.identity.sign)
    assert json.loads(client.call(METHOD, unknown).result(10)) == {
        "ok": False, "error": "unknown message type 'test.unknown'"}
    with pytest.raises(PeerError, match="n must not be negative"):
        a.send(b.peer_id, "test.push", {"request_id": "r", "n": -1})
    assert sum(b.refused.values()) == 3
    assert a.send(b.peer_id, "test.push", {"request_id": "after"})["ok"]
    assert [m.body["request_id"] for m in inbox.messages] == ["after"]


def test_peer_id_is_stable_across_restarts(tmp_path):
    port = free_port()
    first = Transport(tmp_path / "n", ("127.0.0.1", port), "test", lambda m: None)
    peer = first.peer_id
    first.close()
    again = Transport(tmp_path / "n", ("127.0.0.1", free_port()), "test", lambda m: None)
    assert again.peer_id == peer
    again.close()
