"""Replaying one hop: a stage keeps the hidden states it sent on, keeps a request whose next stage
is gone, and on `stage.repair` resends them to the replacement, which prefills them and passes on
only the last position. Real torch shards on a random checkpoint, driven through accept / repair as
Lattica would, with what they send recorded (and sends to a dead peer refused) instead of delivered.
The whole path over real Lattica is in test_swarm_pipeline.py."""

import threading

import numpy as np
import pytest

from engine.backends.torch_runner import TorchShardRunner
from engine.swarm.stage import StageWorker
from engine.swarm.transport import PeerError
from engine.swarm.wire import Message, Tensor, WireError

PROMPT = [(7 * i + 3) % 250 + 1 for i in range(70)]
NEXT_TOKEN = 5  # the first answer token the chain fed back, as a decode step


class Outbox:
    def __init__(self):
        self.sent, self.dead = [], set()
        self.changed = threading.Condition()

    def __call__(self, peer, kind, body, tensors):
        with self.changed:
            self.sent.append((peer, kind, body, tensors))
            self.changed.notify_all()
        if peer in self.dead:
            raise PeerError(f"peer {peer} did not take {kind}: gone")

    def to(self, peer, kind="stage.forward"):
        return [(body, tensors) for p, k, body, tensors in self.sent if p == peer and k == kind]

    def wait_for(self, peer, kind, count):
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.to(peer, kind)) >= count, timeout=60)


def hidden(tensors) -> np.ndarray:
    t = tensors["hidden"]
    return np.frombuffer(t.data, dtype=np.float32).reshape(t.shape)


def runner(path, start, end):
    return TorchShardRunner(path, start, end, device="cpu", dtype="float32")


def parts(sender, route, hop, rows, step, resume_step, size=16):
    """A history of hidden states as prompt parts, as a replaying stage sends them."""
    for offset in range(0, len(rows), size):
        part = np.ascontiguousarray(rows[offset:offset + size])
        body = {"request_id": "r", "kind": "prefill", "step": step, "origin": "o", "hop": hop, "route": route,
                "offset": offset, "prompt_tokens": len(rows), "resume_step": resume_step,
                **({"sampling": {"max_tokens": 8}} if offset == 0 else {})}
        yield Message("stage.forward", f"m{offset}", sender, body,
                      {"hidden": Tensor("float32", part.shape, part.tobytes())})


def repair(sender, route, hop, step):
    return Message("stage.repair", "fix", sender, {"request_id": "r", "route": route, "hop": hop, "step": step}, {})


def test_a_stage_whose_next_hop_dies_keeps_the_request_and_replays_what_it_sent(make_checkpoint):
    path = make_checkpoint("llama")
    outbox = Outbox()
    stage = StageWorker(runner(path, 0, 3), outbox, "a", "float32", prefill_chunk_tokens=16)
    route = [["a", 0, 3], ["b", 3, 8]]
    body = {"request_id": "r", "kind": "prefill", "step": 0, "origin": "o", "hop": 0, "route": route,
            "tokens": PROMPT, "sampling": {"max_tokens": 8}}
    stage.accept(Message("stage.forward", "1", "o", body, {}))
    outbox.wait_for("b", "stage.forward", 5)  # the prompt, in five parts

    outbox.dead.add("b")
    decode = {"request_id": "r", "kind": "decode", "step": 1, "origin": "o", "hop": 0, "route": route,
              "tokens": [NEXT_TOKEN]}
    stage.accept(Message("stage.forward", "2", "b", decode, {}))
    outbox.wait_for("o", "stage.error", 1)
    (error, _), = outbox.to("o", "stage.error")
    assert error["suspect"] == "b" and error["kept"] == len(PROMPT) + 1
    assert "r" in stage.requests and stage.runner.cache.length["r"] == len(PROMPT) + 1  # kept, cache and all
    assert stage.kept_bytes() == (len(PROMPT) + 1) * stage.spec.hidden_size * 4  # float32 on the wire
    sent_to_b = np.concatenate([hidden(t) for _, t in outbox.to("b")])

    def status(sender):  # what the origin asks a stage that went silent on it
        return stage.status(Message("stage.status", "s", sender, {"request_id": "r"}, {}))

    assert status("o") == {"kept": len(PROMPT) + 1, "step": 0}
    with pytest.raises(WireError, match="no request"):
        status("c")

    with pytest.raises(WireError, match="only the request's origin"):
        stage.repair(repair("c", [["a", 0, 3], ["c", 3, 8]], 1, 1))
    with pytest.raises(WireError, match="exactly one other hop"):
        stage.repair(repair("o", [["a", 0, 4], ["c", 4, 8]], 1, 1))  # this stage's own layers changed
    with pytest.raises(WireError, match="step must be"):
        stage.repair(repair("o", [["a", 0, 3], ["c", 3, 8]], 1, 9))  # past max_tokens

    stage.repair(repair("o", [["a", 0, 3], ["c", 3, 8]], 1, 1))
    outbox.wait_for("c", "stage.forward", 5)  # 71 positions in parts of one chunk
    stage.close()
    replayed = outbox.to("c")
    assert [b["offset"] for b, _ in replayed] == [0, 16, 32, 48, 64]
    assert {(b["prompt_tokens"], b["resume_step"], b["step"], b["hop"]) for b, _ in replayed} == {(71, 1, 1, 1)}
    assert "sampling" in replayed[0][0] and all("sampling" not in b for b, _ in replayed[1:])
    np.testing.assert_array_equal(np.concatenate([hidden(t) for _, t in replayed]), sent_to_b)


def test_a_replacement_prefills_the_history_and_passes_on_only_its_last_position(make_checkpoint):
    path = make_checkpoint("llama")
    history = PROMPT + [NEXT_TOKEN]
    first = runner(path, 0, 3)
    rows = first.to_numpy(first.prefill(["h"], np.array([history])))[0]  # what stage a kept
    middle = runner(path, 3, 5)
    expected = middle.to_numpy(middle.prefill(["h"], rows[None]))[0][-1]

    outbox = Outbox()
    stage = StageWorker(runner(path, 3, 5), outbox, "c", "float32", prefill_chunk_tokens=16)
    route = [["a", 0, 3], ["c", 3, 5], ["d", 5, 8]]
    for message in parts("a", route, 1, rows, step=1, resume_step=1):
        stage.accept(message)
    outbox.wait_for("d", "stage.forward", 1)
    stage.close()
    (body, tensors), = outbox.to("d")
    assert (body["kind"], body["step"], body["hop"]) == ("decode", 1, 2) and "offset" not in body
    np.testing.assert_allclose(hidden(tensors)[0], expected, rtol=1e-4, atol=1e-4)
    state = stage.requests["r"]
    assert state.next_step == 2 and state.sent_rows == len(history)  # ready for step 2, and to replay
    assert stage.runner.cache.length["r"] == len(history)


def test_a_replacing_last_stage_samples_the_next_token_under_the_next_step(make_checkpoint):
    path = make_checkpoint("llama")
    history = PROMPT + [NEXT_TOKEN]
    whole = runner(path, 0, 8)
    logits = whole.to_numpy(whole.prefill(["h"], np.array([history])))[0]  # the last position's
    first = runner(path, 0, 3)
    rows = first.to_numpy(first.prefill(["h"], np.array([history])))[0]

    outbox = Outbox()
    stage = StageWorker(runner(path, 3, 8), outbox, "d", "float32", prefill_chunk_tokens=16)
    route = [["a", 0, 3], ["d", 3, 8]]
    for message in parts("a", route, 1, rows, step=1, resume_step=1):
        stage.accept(message)
    outbox.wait_for("o", "stage.token", 1)
    stage.close()
    (token, _), = outbox.to("o", "stage.token")
    assert token["step"] == 2 and token["token"] == int(np.argmax(logits))
    (decode, _), = outbox.to("a")  # and the ring goes on
    assert (decode["kind"], decode["step"], decode["tokens"]) == ("decode", 2, [token["token"]])
