"""K chained MLX shards reproduce mlx-lm's own full model (loaded whole by mlx-lm's loader from the
same checkpoint directory): identical greedy tokens, and batched decoding equals decoding alone."""

import pytest

from engine.backends.choose import mlx_import_error

if mlx_import_error():
    pytest.skip(f"the MLX backend needs mlx and mlx-lm, which do not import here ({mlx_import_error()})",
                allow_module_level=True)

from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.utils import load_model

from engine.backends.mlx_runner import MlxShardRunner, mlx_config
from engine.generate import LocalPipeline, generate
from engine.model.spec import read_config
from engine.sampling import SamplingParams

ARCHS = ["llama", "qwen3", "qwen3_moe"]
SPLITS = {
    "halves": [(0, 4), (4, 8)],
    "uneven3": [(0, 3), (3, 4), (4, 8)],
    "first-1": [(0, 1), (1, 8)],
}
PROMPT = [5, 77, 140, 23, 9, 301, 44, 12, 250, 61, 7, 190, 33, 88, 120, 17, 230, 66, 99, 140]
STEPS = 32


def mlx_lm_greedy(path, steps, dtype=None):
    """mlx-lm's whole model: prefill logits at every position, and greedy tokens."""
    model, _ = load_model(Path(path), model_config=mlx_config(read_config(path)))
    if dtype is not None:
        model.set_dtype(dtype)
    cache = make_prompt_cache(model)
    logits = model(mx.array([PROMPT]), cache=cache)
    prefill = np.array(logits[0].astype(mx.float32))
    tokens = [int(mx.argmax(logits[0, -1]).item())]
    for _ in range(steps - 1):
        logits = model(mx.array([[tokens[-1]]]), cache=cache)
        tokens.append(int(mx.argmax(logits[0, -1]).item()))
    return prefill, tokens


@pytest.fixture(scope="module")
def reference(make_checkpoint):
    cache = {}

    def get(arch):
        if arch not in cache:
            path = make_checkpoint(arch, max_shard_size="60KB") if arch == "llama" else make_checkpoint(arch)
            cache[arch] = (path, *mlx_lm_greedy(path, STEPS))
        return cache[arch]

    return get


@pytest.mark.parametrize("split", SPLITS, ids=list(SPLITS))
@pytest.mark.parametrize("arch", ARCHS)
def test_shards_match_mlx_lm(reference, arch, split):
    path, ref_logits, ref_tokens = reference(arch)
    pipeline = LocalPipeline(path, backend="mlx", ranges=SPLITS[split])

    hidden = np.array([PROMPT])
    for runner in pipeline.runners:
        hidden = runner.prefill(["probe"], hidden, all_positions=runner.is_last)
    np.testing.assert_allclose(pipeline.to_numpy(hidden)[0], ref_logits, rtol=1e-5, atol=1e-5)
    pipeline.release("probe")

    tokens = [t for _, t in generate(pipeline, [PROMPT], [SamplingParams(max_tokens=STEPS)])]
    assert tokens == ref_tokens
    assert all(len(r.cache) == 0 for r in pipeline.runners)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_shards_match_mlx_lm_in_that_dtype(make_checkpoint, dtype):
    """Hidden states cross between shards in bf16/fp16 without a change of a bit."""
    path = make_checkpoint("llama", max_shard_size="60KB")
    _, ref_tokens = mlx_lm_greedy(path, 16, dtype=getattr(mx, dtype))
    pipeline = LocalPipeline(path, backend="mlx", dtype=dtype, ranges=SPLITS["uneven3"])
    assert pipeline.runners[0].dtype_name == dtype and pipeline.runners[0].mx_dtype == getattr(mx, dtype)
    tokens = [t for _, t in generate(pipeline, [PROMPT], [SamplingParams(max_tokens=16)])]
    assert tokens == ref_tokens


PROMPTS = [[5, 9, 13], list(range(20, 29)), list(range(40, 57)), list(range(100, 130)), [7]]


def run(pipeline, prompts, params):
    out = [[] for _ in prompts]
    for row, token in generate(pipeline, prompts, params):
        out[row].append(token)
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
def test_batched_decode_equals_alone(make_checkpoint, arch):
    pipeline = LocalPipeline(make_checkpoint(arch), backend="mlx", ranges=[(0, 3), (3, 8)])
    # prompts of different lengths (a padded prefill), rows finishing at different steps
    params = [SamplingParams(max_tokens=n) for n in (24, 15, 24, 6, 20)]
    together = run(pipeline, PROMPTS, params)
    alone = [run(pipeline, [p], [sp])[0] for p, sp in zip(PROMPTS, params)]
    assert together == alone
    assert [len(t) for t in together] == [24, 15, 24, 6, 20]
    assert all(len(r.cache) == 0 for r in pipeline.runners)


def test_request_joining_a_running_batch(make_checkpoint):
    """A request prefilled while another is mid-decode, then both decoding in one forward."""
    pipeline = LocalPipeline(make_checkpoint("llama"), backend="mlx", shards=2)
    a_ref = run(pipeline, [PROMPTS[1]], [SamplingParams(max_tokens=14)])[0]
    b_ref = run(pipeline, [PROMPTS[3]], [SamplingParams(max_tokens=8)])[0]
    a = [int(pipeline.prefill(["a"], np.array([PROMPTS[1]])).argmax(-1))]
    for _ in range(5):
        a.append(int(pipeline.decode(["a"], np.array([[a[-1]]])).argmax(-1)))
    b = [int(pipeline.prefill(["b"], np.array([PROMPTS[3]])).argmax(-1))]
    for _ in range(7):
        logits = pipeline.decode(["b", "a"], np.array([[b[-1]], [a[-1]]]))
        b.append(int(logits[0].argmax()))
        a.append(int(logits[1].argmax()))
    assert a == a_ref[:13] and b == b_ref


def test_chunked_prefill_and_spans(reference):
    """A multi-token step after a prefix (chunked prefill, re-prefill on recovery), and a route
    entering and leaving a shard mid-way (span), give the one-pass logits."""
    path, ref_logits, _ = reference("qwen3_moe")
    whole = MlxShardRunner(path, 0, 8)
    outputs = []
    for chunk in (PROMPT[:7], PROMPT[7:16], PROMPT[16:]):
        hidden = whole.prefill(["chunked"], np.array([chunk]), span=(0, 5))
        outputs.append(whole.to_numpy(whole.prefill(["chunked-rest"], hidden, all_positions=True, span=(5, 8)))[0])
    np.testing.assert_allclose(np.concatenate(outputs), ref_logits, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not inside"):
        MlxShardRunner(path, 2, 4).prefill(["x"], np.zeros((1, 1, 64), np.float32), span=(1, 4))


def test_shard_holds_only_its_layers(make_checkpoint):
    path = make_checkpoint("qwen3")  # tied embeddings

    def names(runner):
        return {k.split(".")[0] if not k.startswith("layers.") else ".".join(k.split(".")[:2])
                for k, _ in tree_flatten(runner.shard.parameters())}

    assert names(MlxShardRunner(path, 3, 5)) == {"layers.0", "layers.1"}
    last = MlxShardRunner(path, 6, 8)  # tied: the last shard's lm_head is embed_tokens
    assert names(last) == {"layers.0", "layers.1", "norm", "embed_tokens"} and last.shard.lm_head is None
    assert names(MlxShardRunner(path, 0, 2)) == {"embed_tokens", "layers.0", "layers.1"}
    moe = MlxShardRunner(make_checkpoint("qwen3_moe"), 2, 3)  # per-expert files stacked by mlx-lm's sanitize
    assert moe.layers[0].mlp.switch_mlp.up_proj.weight.shape == (4, 32, 64)


def test_release_frees_caches_and_unknown_requests_are_refused(make_checkpoint):
    runner = MlxShardRunner(make_checkpoint("llama"), 0, 8)
    runner.prefill(["r"], np.array([PROMPTS[2]]))
    assert runner.cache.bytes_held() == len(PROMPTS[2]) * 2 * 8 * 2 * 16 * 4
    assert runner.release_idle(max_idle_s=3600) == [] and runner.release("r") and not runner.release("r")
    with pytest.raises(KeyError, match="never prefilled or released"):
        runner.decode(["r"], np.array([[1]]))
