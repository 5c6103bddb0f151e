"""Several requests decoding together give the same tokens as each decoding alone."""

import pytest
import torch

from engine.backends.torch_runner import TorchShardRunner
from engine.generate import LocalPipeline, generate
from engine.sampling import SamplingParams

PROMPTS = [[5, 9, 13], list(range(20, 29)), list(range(40, 57)), list(range(100, 130)), [7]]


def run(pipeline, prompts, params):
    out = [[] for _ in prompts]
    for row, token in generate(pipeline, prompts, params):
        out[row].append(token)
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
def test_batched_greedy_equals_alone(make_checkpoint, arch):
    pipeline = LocalPipeline(make_checkpoint(arch), device="cpu", dtype="float32", ranges=[(0, 3), (3, 8)])
    # different max_tokens: rows finish at different steps, so later steps run on a gapped batch
    params = [SamplingParams(max_tokens=n) for n in (40, 25, 40, 10, 33)]
    together = run(pipeline, PROMPTS, params)
    alone = [run(pipeline, [p], [sp])[0] for p, sp in zip(PROMPTS, params)]
    assert together == alone
    assert [len(t) for t in together] == [40, 25, 40, 10, 33]


def test_request_joining_a_running_batch(make_checkpoint):
    """A request prefilled while another is mid-decode, then both decoding in one forward."""
    pipeline = LocalPipeline(make_checkpoint("llama"), device="cpu", dtype="float32", shards=2)

    def greedy_alone(prompt, steps):
        return run(pipeline, [prompt], [SamplingParams(max_tokens=steps)])[0]

    a_ref, b_ref = greedy_alone(PROMPTS[1], 20), greedy_alone(PROMPTS[3], 12)
    a = [int(pipeline.prefill(["a"], torch.tensor([PROMPTS[1]])).argmax(-1))]
    for _ in range(7):
        a.append(int(pipeline.decode(["a"], torch.tensor([[a[-1]]])).argmax(-1)))
    b = [int(pipeline.prefill(["b"], torch.tensor([PROMPTS[3]])).argmax(-1))]
    for _ in range(11):
        logits = pipeline.decode(["b", "a"], torch.tensor([[b[-1]], [a[-1]]]))
        b.append(int(logits[0].argmax()))
        a.append(int(logits[1].argmax()))
    assert a == a_ref[:19] and b == b_ref


def test_seeded_sampling_is_reproducible_and_batch_independent(make_checkpoint):
    pipeline = LocalPipeline(make_checkpoint("qwen3"), device="cpu", dtype="float32")
    params = [SamplingParams(max_tokens=30, temperature=0.9, top_p=0.9, seed=s) for s in (1, 2, 3)]
    together = run(pipeline, PROMPTS[:3], params)
    alone = [run(pipeline, [p], [sp])[0] for p, sp in zip(PROMPTS[:3], params)]
    assert together == alone
    assert together[0] != run(pipeline, PROMPTS[:1], [SamplingParams(max_tokens=30, temperature=0.9, seed=9)])[0]


def test_stop_token_ends_a_request_and_frees_caches(make_checkpoint):
    pipeline = LocalPipeline(make_checkpoint("llama"), device="cpu", dtype="float32", shards=2)
    free_run = run(pipeline, [PROMPTS[2]], [SamplingParams(max_tokens=30)])[0]
    stop = free_run[10]
    stopped = run(pipeline, [PROMPTS[2]], [SamplingParams(max_tokens=30, stop_token_ids=frozenset({stop}))])[0]
    assert stopped == free_run[:free_run.index(stop)]
    assert all(len(r.cache.slot_of) == 0 for r in pipeline.runners)


def test_caches_are_freed_when_the_caller_stops_early(make_checkpoint):
    pipeline = LocalPipeline(make_checkpoint("llama"), device="cpu", dtype="float32", shards=2)
    stream = generate(pipeline, PROMPTS[:2], [SamplingParams(max_tokens=50)] * 2)
    next(stream), next(stream), next(stream)
    stream.close()  # the client went away
    assert all(len(r.cache.slot_of) == 0 for r in pipeline.runners)


def test_idle_requests_are_released(make_checkpoint):
    pipeline = LocalPipeline(make_checkpoint("llama"), device="cpu", dtype="float32")
    runner = pipeline.runners[0]
    runner.prefill(["abandoned"], torch.tensor([PROMPTS[0]]))
    assert runner.release_idle(max_idle_s=3600) == []
    assert runner.release_idle(max_idle_s=0) == ["abandoned"]
    with pytest.raises(KeyError, match="abandoned"):
        runner.decode(["abandoned"], torch.tensor([[1]]))


def test_cache_grows_past_its_first_capacity(make_checkpoint):
    """Many requests (more than the initial slots) and long contexts (more than the initial capacity)."""
    pipeline = LocalPipeline(make_checkpoint("llama"), device="cpu", dtype="float32", shards=2)
    prompts = [list(range(3 + i, 3 + i + 150 + 20 * i)) for i in range(6)]
    params = [SamplingParams(max_tokens=130)] * 6
    together = run(pipeline, prompts, params)
    assert pipeline.runners[0].cache.capacity >= 380 and pipeline.runners[0].cache.keys[0].shape[0] >= 6
    assert together[5] == run(pipeline, [prompts[5]], [params[5]])[0]


def test_sub_range_of_a_shard_chains_like_separate_shards(make_checkpoint):
    """A route may enter or leave a node's shard mid-way: layers 2..6 of a 0..8 shard."""
    path = make_checkpoint("llama")
    whole = TorchShardRunner(path, 0, 8, "cpu", "float32")
    prompt = torch.tensor([PROMPTS[2]])
    ref = whole.prefill(["ref"], prompt)
    h = whole.prefill(["r"], prompt, span=(0, 2))
    h = whole.prefill(["r1"], h, span=(2, 6))  # the same runner: each hop is its own cache entry
    torch.testing.assert_close(whole.prefill(["r2"], h, span=(6, 8)), ref)
    with pytest.raises(ValueError, match="not inside this shard"):
        TorchShardRunner(path, 2, 5, "cpu", "float32").prefill(["x"], torch.zeros(1, 1, 64), span=(1, 4))


def test_a_failed_step_leaves_the_cache_as_it_was(make_checkpoint):
    runner = TorchShardRunner(make_checkpoint("llama"), 0, 8, "cpu", "float32")  # context 512
    runner.prefill(["r"], torch.tensor([PROMPTS[3]]))
    with pytest.raises(Exception, match="context of 512"):
        runner.prefill(["r"], torch.zeros(1, 500, dtype=torch.long))
    assert runner.cache.length["r"] == len(PROMPTS[3])
