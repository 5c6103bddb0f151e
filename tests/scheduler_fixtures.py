"""Small models, swarms and scenario text shared by the scheduler tests."""

from __future__ import annotations

from engine.scheduler.model import ModelShape
from engine.scheduler.policy import LoadView, SwarmContext
from engine.scheduler.topology import NodeSpec, RttTable
from engine.scheduler.workload import Slo, Workload

GB = 1e9

# an 8B-class model cut to 16 layers: 0.5 GB per layer, small KV
SMALL_MODEL = ModelShape(num_layers=16, layer_bytes=0.5 * GB, embed_bytes=0.25 * GB, lm_head_bytes=0.25 * GB,
                         kv_bytes_per_token_layer=4096, flops_per_token_layer=1e9, hidden_size=4096, dtype_bytes=2)

LLAMA_70B = ModelShape(num_layers=80, layer_bytes=1711308800, embed_bytes=2101346304, lm_head_bytes=2101362688,
                       kv_bytes_per_token_layer=4096, flops_per_token_layer=1711308800, hidden_size=8192,
                       dtype_bytes=2)

RTT = RttTable({("a", "a"): 2, ("b", "b"): 2, ("c", "c"): 2, ("a", "b"): 40, ("a", "c"): 80, ("b", "c"): 60})
WORKLOAD = Workload(arrival_rate_per_s=1.0, prompt_tokens_mean=128, output_tokens_mean=32, max_context=1024)
SLO = Slo(ttft_p99_s=10, tpot_p50_s=0.5)


def context(model: ModelShape = SMALL_MODEL) -> SwarmContext:
    return SwarmContext(model, RTT, WORKLOAD, SLO)


def node(i: int, memory_gb: float, tflops: float = 50, bandwidth_gbs: float = 500, region: str = "a",
         uplink_mbps: float = 1000) -> NodeSpec:
    return NodeSpec(i, memory_gb * GB, tflops, bandwidth_gbs, region, uplink_mbps)


def idle_view(nodes: dict[int, NodeSpec], assignment: dict[int, tuple[int, int]], model: ModelShape) -> LoadView:
    size = max(nodes) + 1
    ready = [False] * size
    kv_free = [0.0] * size
    for n, (s, e) in assignment.items():
        ready[n] = True
        kv_free[n] = nodes[n].memory_bytes - model.weight_bytes(s, e)
    return LoadView(now=0.0, ready=ready, kv_free=kv_free, resident=[0] * size, busy_until=[0.0] * size,
                    assignment_version=1, utilization=[0.0] * size)


SCENARIO_TOML = """
name = "tiny"
seed = 3
duration_s = 40
warmup_s = 10

[model]
num_layers = 16
layer_bytes = 500000000
embed_bytes = 250000000
lm_head_bytes = 250000000
kv_bytes_per_token_layer = 4096
flops_per_token_layer = 1000000000
hidden_size = 4096
dtype_bytes = 2

[[nodes]]
count = 3
memory_gb = 6
tflops = 50
bandwidth_gbs = 500
region = "eu"
uplink_mbps = 1000

[[nodes]]
count = 1
memory_gb = 10
tflops = 20
bandwidth_gbs = 200
region = "us"
uplink_mbps = 200
leave_at_s = 25

[regions]
rtt_ms = { "eu-eu" = 2, "us-us" = 2, "eu-us" = 80 }

[workload]
arrival_rate_per_s = 2
prompt_tokens_mean = 128
output_tokens_mean = 32
max_context = 1024

[churn]
mean_node_lifetime_s = 0

[slo]
ttft_p99_s = 10
tpot_p50_s = 0.5

[search]
duration_s = 30
warmup_s = 10
"""
