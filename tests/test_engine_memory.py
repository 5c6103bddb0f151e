"""A shard's memory grows with its share of the layers, not with the whole model."""

import json
import subprocess
import sys

import pytest

# Peak resident memory from VmHWM: per address space, so unlike ru_maxrss it does not inherit the
# (large) peak of the pytest process that forked this one.
MEASURE = r"""
import json, re, sys
import torch
from transformers import LlamaForCausalLM  # import model code before the baseline
from engine.backends.torch_runner import TorchShardRunner

def peak_kb():
    return int(re.search(r"VmHWM:\s+(\d+) kB", open("/proc/self/status").read()).group(1))

path, start, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
before = peak_kb()
runner = TorchShardRunner(path, start, end, "cpu", "float32")
inputs = torch.tensor([[1, 2, 3, 4]]) if runner.is_first else torch.zeros(1, 4, runner.spec.hidden_size)
runner.prefill(["probe"], inputs)  # touch every weight: memory-mapped tensors count only once read
print(json.dumps({"peak_kb": peak_kb() - before}))
"""


def peak_kb(path, start, end):
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(start), str(end)],
                          capture_output=True, text=True, timeout=300, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_kb"]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_quarter_shard_costs_well_under_half_of_the_full_model(make_checkpoint):
    # 16 layers of ~3.9 M parameters: ~250 MB of fp32 weights, spread over several files
    path = make_checkpoint("llama", num_hidden_layers=16, hidden_size=512, intermediate_size=2048,
                           num_attention_heads=8, num_key_value_heads=4, head_dim=64, max_shard_size="40MB",
                           init_std=0.02)
    full = peak_kb(path, 0, 16)
    quarter = peak_kb(path, 4, 8)
    weights_kb = 16 * 3.9e6 * 4 / 1024
    assert full > 0.8 * weights_kb, f"a full load should hold all weights: {full} KB"
    assert quarter < 0.4 * full, f"a quarter of the layers took {quarter} KB against {full} KB for all"
