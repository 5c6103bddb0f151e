"""Chunked prefill in a node's stage: a real torch shard on a random checkpoint, driven through
StageWorker.accept as Lattica would, with the messages it sends recorded instead of delivered."""

import threading

import numpy as np
import pytest

from engine import profile
from engine.backends.torch_runner import TorchShardRunner
from engine.scheduler.model import ModelShape
from engine.scheduler.perf import MAX_CHUNK_TOKENS, MIN_CHUNK_TOKENS, prefill_chunk_tokens
from engine.swarm.stage import StageWorker
from engine.swarm.wire import Message, Tensor, WireError

PROMPT = [(7 * i + 3) % 250 + 1 for i in range(70)]


class Outbox:
    def __init__(self):
        self.sent, self.lock = [], threading.Lock()
        self.token = threading.Event()

    def __call__(self, peer, kind, body, tensors):
        with self.lock:
            self.sent.append((peer, kind, body, tensors))
        if kind == "stage.token":
            self.token.set()


def prefill_message(rid, route, tokens, max_tokens=1):
    body = {"request_id": rid, "kind": "prefill", "step": 0, "origin": "o", "hop": 0, "route": route,
            "tokens": tokens, "sampling": {"max_tokens": max_tokens}}
    return Message("stage.forward", "1", "o", body, {})


def hidden_of(message) -> np.ndarray:
    tensor = message[3]["hidden"]
    return np.frombuffer(tensor.data, dtype=np.float32).reshape(tensor.shape)


@pytest.mark.parametrize("chunk", [16, 1000])
def test_each_chunk_goes_on_as_a_prompt_part_with_the_hidden_states_of_one_pass(make_checkpoint, chunk):
    path = make_checkpoint("llama")
    reference = TorchShardRunner(path, 0, 3, device="cpu", dtype="float32")
    expected = reference.to_numpy(reference.prefill(["r"], np.array([PROMPT])))[0]

    outbox = Outbox()
    stage = StageWorker(TorchShardRunner(path, 0, 3, device="cpu", dtype="float32"), outbox, "me",
                        "float32", prefill_chunk_tokens=chunk)
    stage.accept(prefill_message("r", [["me", 0, 3], ["next", 3, 8]], PROMPT))
    stage.close()

    parts = -(-len(PROMPT) // chunk)
    assert [(peer, kind) for peer, kind, _, _ in outbox.sent] == [("next", "stage.forward")] * parts
    bodies = [body for _, _, body, _ in outbox.sent]
    assert [b["offset"] for b in bodies] == list(range(0, len(PROMPT), chunk))
    assert {b["prompt_tokens"] for b in bodies} == {len(PROMPT)} and {b["step"] for b in bodies} == {0}
    assert "sampling" in bodies[0]
    np.testing.assert_allclose(np.concatenate([hidden_of(m) for m in outbox.sent]), expected, rtol=1e-4, atol=1e-4)
    assert stage.steps == parts  # one step per chunk
    assert stage.runner.cache.length["r"] == len(PROMPT)


def test_a_chain_fed_prompt_parts_answers_as_one_pass_does(make_checkpoint):
    """Stage A sends a 70-token prompt to stage B in 16-token parts; B runs each part as it
    arrives and samples the same first token as the whole model run on the whole prompt."""
    path = make_checkpoint("llama")
    whole = StageWorker(TorchShardRunner(path, 0, 8, device="cpu", dtype="float32"), Outbox(), "w", "float32")
    whole.accept(prefill_message("r", [["w", 0, 8]], PROMPT))
    assert whole.send.token.wait(30)
    expected = next(body["token"] for _, kind, body, _ in whole.send.sent if kind == "stage.token")
    whole.close()

    to_b, to_origin = Outbox(), Outbox()
    a = StageWorker(TorchShardRunner(path, 0, 3, device="cpu", dtype="float32"), to_b, "a", "float32",
                    prefill_chunk_tokens=16)
    b = StageWorker(TorchShardRunner(path, 3, 8, device="cpu", dtype="float32"), to_origin, "b", "float32",
                    prefill_chunk_tokens=8)
    a.accept(prefill_message("r", [["a", 0, 3], ["b", 3, 8]], PROMPT))
    a.close()
    for n, (peer, kind, body, tensors) in enumerate(to_b.sent):
        b.accept(Message(kind, str(n), "a", body, tensors))
    assert to_origin.token.wait(30)
    b.close()
    tokens = [body for _, kind, body, _ in to_origin.sent if kind == "stage.token"]
    assert [t["token"] for t in tokens] == [expected]
    assert b.runner.cache.length["r"] == len(PROMPT)


def test_prompt_parts_out_of_order_or_past_the_prompt_are_refused(make_checkpoint):
    path = make_checkpoint("llama")
    stage = StageWorker(TorchShardRunner(path, 3, 8, device="cpu", dtype="float32"), Outbox(), "b", "float32")
    route = [["a", 0, 3], ["b", 3, 8]]

    def part(offset, rows, total=70, **extra):
        hidden = np.zeros((rows, stage.spec.hidden_size), dtype=np.float32)
        body = {"request_id": "r", "kind": "prefill", "step": 0, "origin": "o", "hop": 1, "route": route,
                "offset": offset, "prompt_tokens": total, "sampling": {"max_tokens": 1}, **extra}
        return Message("stage.forward", "m", "a", body, {"hidden": Tensor("float32", hidden.shape, hidden.tobytes())})

    with pytest.raises(WireError, match="does not follow"):
        stage.accept(part(16, 16))  # a first part must start at 0
    stage.accept(part(0, 16))
    with pytest.raises(WireError, match="does not follow"):
        stage.accept(part(32, 16))  # a gap
    with pytest.raises(WireError, match="does not follow"):
        stage.accept(part(16, 16, total=90))  # the prompt's length changed
    with pytest.raises(WireError, match="does not fit"):
        stage.accept(part(16, 60))  # past the end of the prompt
    stage.accept(part(16, 54))  # the rest: the prompt is complete
    with pytest.raises(WireError, match="out-of-order step"):
        stage.accept(part(70, 1))
    stage.close()
    assert stage.requests["r"].received == 70 and stage.requests["r"].next_step == 1


def test_decode_is_not_held_up_by_a_long_prompt(make_checkpoint):
    """A decode step that arrives while a long prompt is being prefilled is served within a
    chunk, not after the whole prompt (which a single-pass prefill would make it wait for)."""
    path = make_checkpoint("llama")
    outbox = Outbox()
    stage = StageWorker(TorchShardRunner(path, 0, 8, device="cpu", dtype="float32"), outbox, "me",
                        "float32", prefill_chunk_tokens=8)
    route = [["me", 0, 8]]
    stage.accept(prefill_message("short", route, PROMPT[:3], max_tokens=2))
    assert outbox.token.wait(30)
    first_token = next(body["token"] for _, kind, body, _ in outbox.sent if kind == "stage.token")

    long_prompt = PROMPT * 3  # 210 tokens: 27 chunks of 8
    stage.accept(prefill_message("long", route, long_prompt))
    decode = {"request_id": "short", "kind": "decode", "step": 1, "origin": "o", "hop": 0, "route": route,
              "tokens": [first_token]}
    stage.accept(Message("stage.forward", "2", "me", decode, {}))
    stage.close()

    tokens = [body["request_id"] for _, kind, body, _ in outbox.sent if kind == "stage.token"]
    assert tokens == ["short", "short", "long"], tokens
    assert stage.runner.cache.length.get("long") == len(long_prompt)


def test_the_chunk_is_the_roofline_ridge_within_bounds():
    llama70b = ModelShape(num_layers=80, layer_bytes=1711308800, embed_bytes=2101346304,
                          lm_head_bytes=2101362688, kv_bytes_per_token_layer=4096,
                          flops_per_token_layer=1711308800, hidden_size=8192, dtype_bytes=2)
    # bf16 weights: 2 FLOPs per parameter and 2 bytes per parameter, so the ridge is FLOP/s over bytes/s
    assert prefill_chunk_tokens(700e12, 3000e9, llama70b) == 233  # H100
    assert prefill_chunk_tokens(60e12, 900e9, llama70b) == 67  # RTX 3090 / 4090 class
    assert prefill_chunk_tokens(1e12, 50e9, llama70b) == MIN_CHUNK_TOKENS  # a CPU
    assert prefill_chunk_tokens(5000e12, 3000e9, llama70b) == MAX_CHUNK_TOKENS


def test_a_shard_with_a_costly_step_takes_chunks_that_amortise_it():
    llama8b = ModelShape(num_layers=32, layer_bytes=436224000, embed_bytes=1050673152,
                         lm_head_bytes=1050673152, kv_bytes_per_token_layer=4096,
                         flops_per_token_layer=436224000, hidden_size=4096, dtype_bytes=2)
    cpu = dict(flops_per_s=0.34e12, bytes_per_s=40e9, model=llama8b)  # this CI machine's profile
    assert prefill_chunk_tokens(**cpu) == MIN_CHUNK_TOKENS
    # 8 Qwen3-0.6B layers timed on it: 20 ms a step plus 0.75 ms a token -> the fixed cost is 20%
    # of a 107-token step
    assert prefill_chunk_tokens(**cpu, step_fixed_s=0.020, step_per_token_s=0.00075) == 107
    assert prefill_chunk_tokens(**cpu, step_fixed_s=2.0, step_per_token_s=0.00075) == MAX_CHUNK_TOKENS
    # on a GPU the fixed cost is small next to the ridge, which stays
    h100 = dict(flops_per_s=700e12, bytes_per_s=3000e9, model=llama8b)
    assert prefill_chunk_tokens(**h100, step_fixed_s=0.0005, step_per_token_s=12e-6) == 233
    assert prefill_chunk_tokens(**h100, step_fixed_s=0.0, step_per_token_s=0.0) == 233  # not timed


class ClockedRunner:
    """A shard whose prefill advances a fake clock by fixed + tokens * per_token seconds."""

    def __init__(self, clock, fixed, per_token):
        self.clock, self.fixed, self.per_token = clock, fixed, per_token
        self.start, self.open = 3, set()

    def prefill(self, ids, inputs):
        self.open.update(ids)
        self.clock[0] += self.fixed + inputs.shape[1] * self.per_token
        return inputs

    def to_numpy(self, out):
        return out

    def release(self, rid):
        self.open.discard(rid)

    @property
    def spec(self):
        return type("Spec", (), {"hidden_size": 8})


def test_timing_a_shard_finds_its_fixed_and_per_token_cost(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(profile.time, "perf_counter", lambda: clock[0])
    runner = ClockedRunner(clock, fixed=0.020, per_token=0.00075)
    fixed, per_token = profile.time_prefill_steps(runner)
    assert fixed == pytest.approx(0.020) and per_token == pytest.approx(0.00075)
    assert runner.open == set()  # the scratch request is released
    runner.per_token = 0.0  # sizes that do not order: no answer rather than a wrong one
    assert profile.time_prefill_steps(runner) == (0.0, 0.0)


@pytest.mark.parametrize("span", [(0, 3), (3, 8)])
def test_timing_a_real_shard_leaves_it_as_it_was(make_checkpoint, span):
    path = make_checkpoint("llama")
    timed, fresh = (TorchShardRunner(path, *span, device="cpu", dtype="float32") for _ in range(2))
    fixed, per_token = profile.time_prefill_steps(timed)
    assert (fixed, per_token) == (0.0, 0.0) or (fixed > 0 and per_token > 0)
    assert timed.cache.length == {}
    inputs = np.array([PROMPT]) if span[0] == 0 else np.random.default_rng(0).normal(
        size=(1, len(PROMPT), timed.spec.hidden_size)).astype(np.float32)
    np.testing.assert_allclose(timed.to_numpy(timed.prefill(["r"], inputs)),
                               fresh.to_numpy(fresh.prefill(["r"], inputs)), rtol=1e-5, atol=1e-5)


class GatedRunner:
    """A real shard whose prefill waits at a gate, so work piles up behind a running step."""

    def __init__(self, runner):
        self.inner, self.gate, self.entered = runner, threading.Event(), threading.Event()
        self.gate.set()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def prefill(self, *args, **kwargs):
        self.entered.set()
        assert self.gate.wait(30)
        return self.inner.prefill(*args, **kwargs)


def test_a_stage_reports_the_prompt_work_waiting_for_it(make_checkpoint):
    runner = GatedRunner(TorchShardRunner(make_checkpoint("llama"), 0, 8, device="cpu", dtype="float32"))
    outbox = Outbox()
    stage = StageWorker(runner, outbox, "me", "float32", prefill_chunk_tokens=16)
    route = [["me", 0, 8]]
    stage.accept(prefill_message("a", route, PROMPT[:3]))
    assert outbox.token.wait(30) and stage.step_ms > 0
    assert stage.prompt_queue_s() == 0.0

    runner.gate.clear()
    runner.entered.clear()
    stage.accept(prefill_message("b", route, PROMPT))
    assert runner.entered.wait(30)  # b's first chunk is in a step that cannot finish yet
    stage.accept(prefill_message("c", route, PROMPT))
    step_s = stage.step_ms / 1e3
    assert stage.prompt_queue_s() == pytest.approx(len(PROMPT) / 16 * step_s)  # c waits whole
    runner.gate.set()
    stage.close()
    assert stage.prompt_queue_s() == 0.0
    assert {body["request_id"] for _, kind, body, _ in outbox.sent if kind == "stage.token"} == {"a", "b", "c"}
