"""A throughput no placement and no routing can beat on a given swarm (fractional relaxation).

Each request in flight is in at most one node's batch at a time, and all requests in flight hold
KV cache for every layer somewhere; so the batches summed over nodes are at most
N = (memory left after one copy of the weights) / (KV of one request over all layers). A node
running a batch b passes at most b * bandwidth / (layer weights + b * KV read per token)
layer-tokens per second (it must read its weights once per step and each token's KV), and at
most its FLOP/s over the FLOPs of a layer-token (decode plus the prompt's share). Relaxing layer
counts, links, queueing and integrality, the best split of N over nodes is found by water-filling
on the marginal gain of a larger batch; the swarm's output tokens/s is the layer-token total
over the layer count.
"""

from __future__ import annotations

import numpy as np

from .model import ModelShape
from .topology import NodeSpec
from .workload import Workload


def upper_bound_tok_s(nodes: list[NodeSpec], model: ModelShape, workload: Workload) -> float:
    if not nodes:
        return 0.0
    bw = np.array([n.bytes_per_s for n in nodes])
    flops = np.array([n.flops_per_s for n in nodes])
    memory = float(sum(n.memory_bytes for n in nodes))
    W = model.layer_bytes
    ck = workload.decode_context_mean * model.kv_bytes_per_token_layer
    kv_request = model.kv_bytes(workload.kv_tokens_mean, model.num_layers)
    sessions = (memory - model.total_weight_bytes) / kv_request
    if sessions <= 0:
        return 0.0
    layer_token_flops = model.flops_per_token_layer * (1 + workload.prompt_tokens_mean / workload.output_tokens_mean)
    compute_cap = flops / layer_token_flops
    # the batch at which the bandwidth curve meets the compute cap
    with np.errstate(divide="ignore"):
        batch_cap = np.where(bw > compute_cap * ck, compute_cap * W / np.maximum(bw - compute_cap * ck, 1e-30), np.inf)

    def batches(lam: float) -> np.ndarray:
        b = (np.sqrt(bw * W / lam) - W) / ck
        return np.clip(b, 0.0, batch_cap)

    lo, hi = 1e-12, float((bw / W).max()) * 2  # marginal gain at b=0 is bw/W
    for _ in range(200):
        mid = np.sqrt(lo * hi)
        if batches(mid).sum() > sessions:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1 + 1e-9:
            break
    b = batches(hi)
    rate = np.minimum(b * bw / (W + b * ck), compute_cap)
    return float(rate.sum() / model.num_layers)
