"""A mixed pipeline: torch shards and MLX shards of the same fp32 checkpoint, hidden states crossing
between them as numpy arrays (the host currency, as on the wire), give the same greedy tokens as
either backend alone.

Tolerance: where the backends hand over, their fp32 hidden states agree to within
HIDDEN_TOLERANCE of the largest hidden-state magnitude (measured: about 2e-6 on Linux CPU; the
kernels differ, so the last bits do). A wrong rotary offset, mask or weight gives errors of order 1.
"""

import pytest

from engine.backends.choose import mlx_import_error

if mlx_import_error():
    pytest.skip(f"the MLX backend needs mlx and mlx-lm, which do not import here ({mlx_import_error()})",
                allow_module_level=True)

import mlx.core as mx
import numpy as np
import torch

from engine.backends.mlx_runner import MlxShardRunner, array_to_numpy, to_mlx
from engine.backends.torch_runner import TorchShardRunner, tensor_from_numpy, tensor_to_numpy
from engine.generate import LocalPipeline, generate
from engine.sampling import SamplingParams

HIDDEN_TOLERANCE = 2e-5  # relative to max |hidden|, fp32
# Greedy tokens may legitimately differ where the top two logits are closer than the backends'
# rounding: with these checkpoints this prompt's smallest top-2 gap over 32 steps is above 4e-3,
# a hundred times the logits' difference (checked by test_the_prompt_has_no_near_ties).
PROMPT = [11, 250, 37, 98, 160, 4, 222, 310, 65, 130, 19, 280, 47, 355, 90, 171, 26, 205, 140, 63]
STEPS = 32
# mistral: a sliding window of 16 that the 52-token conversation outgrows, applied the same way
ARCHS = ["llama", "qwen3_moe", "mistral"]


def shard(backend, path, start, end):
    if backend == "torch":
        return TorchShardRunner(path, start, end, "cpu", "float32")
    return MlxShardRunner(path, start, end, dtype="float32")


class MixedPipeline(LocalPipeline):
    """LocalPipeline's chaining over shards that mix backends: every output crosses to the host."""

    def __init__(self, runners):
        self.runners, self.spec = runners, runners[0].spec

    def prefill(self, request_ids, tokens, lengths=None):
        for runner in self.runners:
            tokens = runner.to_numpy(runner.prefill(request_ids, tokens, lengths))
        return tokens

    def decode(self, request_ids, tokens):
        for runner in self.runners:
            tokens = runner.to_numpy(runner.decode(request_ids, tokens))
        return tokens

    def to_numpy(self, output):
        return output


def greedy(path, backends, bounds=(0, 4, 8)):
    pipeline = MixedPipeline([shard(b, path, s, e) for b, s, e in zip(backends, bounds, bounds[1:])])
    return [t for _, t in generate(pipeline, [PROMPT], [SamplingParams(max_tokens=STEPS)])]


@pytest.mark.parametrize("arch", ARCHS)
def test_mixed_pipelines_give_the_same_tokens_as_either_backend(make_checkpoint, arch):
    path = make_checkpoint(arch)
    torch_alone = greedy(path, ["torch", "torch"])
    assert greedy(path, ["mlx", "mlx"]) == torch_alone
    assert greedy(path, ["torch", "mlx"]) == torch_alone
    assert greedy(path, ["mlx", "torch"]) == torch_alone
    assert greedy(path, ["mlx", "torch", "mlx"], bounds=(0, 3, 5, 8)) == torch_alone


@pytest.mark.parametrize("arch", ARCHS)
def test_the_prompt_has_no_near_ties(make_checkpoint, arch):
    runner = shard("torch", make_checkpoint(arch), 0, 8)
    logits, gaps = runner.prefill(["r"], torch.tensor([PROMPT])), []
    for _ in range(STEPS):
        top = logits[0].topk(2).values
        gaps.append((top[0] - top[1]).item())
        logits = runner.decode(["r"], logits.argmax(-1, keepdim=True))
    assert min(gaps) > 1e-3, "a near tie: choose another PROMPT for the cross-backend tests"


@pytest.mark.parametrize("arch", ARCHS)
def test_hidden_states_agree_where_the_backends_hand_over(make_checkpoint, arch):
    path = make_checkpoint(arch)
    prompt = np.array([PROMPT])
    by_backend = {}
    for backend in ("torch", "mlx"):
        first, second = shard(backend, path, 0, 4), shard(backend, path, 4, 8)
        hidden = first.prefill(["r"], prompt)
        logits = second.prefill(["r"], hidden, all_positions=True)
        step = second.decode(["r"], first.decode(["r"], np.array([[int(logits[0, -1].argmax())]])))
        by_backend[backend] = [first.to_numpy(hidden), second.to_numpy(logits), second.to_numpy(step)]
    for t, m in zip(by_backend["torch"], by_backend["mlx"]):
        assert t.dtype == m.dtype == np.float32 and t.shape == m.shape
        scale = np.abs(t).max()
        assert np.abs(t - m).max() <= HIDDEN_TOLERANCE * scale


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_tensors_cross_exactly_in_every_dtype(dtype):
    """torch -> numpy -> MLX -> numpy -> torch keeps every bit; bfloat16 goes as raw 16-bit words
    (uint16), the same bytes the wire carries (little endian)."""
    values = torch.randn(3, 5, 7).to(getattr(torch, dtype))
    host = tensor_to_numpy(values)
    assert host.dtype == {"bfloat16": np.uint16, "float16": np.float16, "float32": np.float32}[dtype]
    there = to_mlx(host)
    assert there.dtype == getattr(mx, dtype)
    back_host = array_to_numpy(there)
    assert back_host.dtype == host.dtype
    assert back_host.tobytes() == host.tobytes() == values.view(torch.uint8).numpy().tobytes()
    back = tensor_from_numpy(back_host)
    assert back.dtype == values.dtype and torch.equal(back.view(torch.uint8), values.view(torch.uint8))


def test_converting_outputs_to_another_dtype_rounds_as_the_backend_does(make_checkpoint):
    """to_numpy(out, "bfloat16") (a stage sending on a bfloat16 wire from a float32 shard) gives
    what the backend's own cast gives, on both backends."""
    values = np.random.default_rng(0).standard_normal((4, 9), dtype=np.float32)
    path = make_checkpoint("llama")
    torch_runner, mlx_runner = shard("torch", path, 0, 4), shard("mlx", path, 0, 4)
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(torch_runner.to_numpy(torch.from_numpy(values), "bfloat16"), expected)
    assert np.array_equal(mlx_runner.to_numpy(mx.array(values), "bfloat16"), expected)
    assert mlx_runner.to_numpy(mx.array(values), "float16").dtype == np.float16


def test_a_bfloat16_mlx_shard_takes_torch_hidden_states(make_checkpoint):
    """The swarm's wire dtype may differ from a stage's compute dtype: an MLX shard in bfloat16
    takes a torch shard's bfloat16 output and returns bfloat16 close to a torch bfloat16 shard's."""
    path = make_checkpoint("llama")
    first = TorchShardRunner(path, 0, 4, "cpu", "bfloat16")
    hidden = first.to_numpy(first.prefill(["r"], np.array([PROMPT])))
    assert hidden.dtype == np.uint16  # bfloat16 words
    mlx_out = MlxShardRunner(path, 4, 6, dtype="bfloat16").prefill(["r"], hidden)
    torch_out = TorchShardRunner(path, 4, 6, "cpu", "bfloat16").prefill(["r"], hidden)
    assert mlx_out.dtype == mx.bfloat16 and torch_out.dtype == torch.bfloat16
    mlx_out, torch_out = np.array(mlx_out.astype(mx.float32)), torch_out.float().numpy()
    scale = np.abs(torch_out).max()
    assert np.abs(mlx_out - torch_out).max() <= 0.05 * scale
