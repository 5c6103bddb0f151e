"""Performance model: how long a node takes for a step, a prefill, an upload.

Decode is memory-bandwidth-bound: every step reads the stage's weights once for the whole batch
and each request's KV cache; prefill is compute-bound. A step takes the larger of the two
(roofline) plus a fixed launch overhead. The live scheduler feeds it measured profiles; the
simulator uses exactly the same functions, so what the scheduler predicts is what it is judged by.
"""

from __future__ import annotations

from .model import ModelShape
from .topology import NodeSpec

STEP_OVERHEAD_S = 0.0005  # kernel launches, sampling, framework bookkeeping per step
MIN_CHUNK_TOKENS, MAX_CHUNK_TOKENS = 32, 512  # bounds of a prefill chunk (prefill_chunk_tokens)
STEP_FIXED_SHARE = 0.2  # the most of a prefill step its fixed cost may take (prefill_chunk_tokens)


def step_time(node: NodeSpec, bytes_read: float, flops: float) -> float:
    return max(bytes_read / node.bytes_per_s, flops / node.flops_per_s) + STEP_OVERHEAD_S


def layer_decode_time(node: NodeSpec, model: ModelShape, batch: float, context: float) -> float:
    """Seconds for one decode step of `batch` requests through one layer (no overhead)."""
    read = model.layer_bytes + batch * context * model.kv_bytes_per_token_layer
    return max(read / node.bytes_per_s, batch * model.flops_per_token_layer / node.flops_per_s)


def prefill_time(node: NodeSpec, model: ModelShape, layers: int, tokens: int) -> float:
    read = layers * (model.layer_bytes + tokens * model.kv_bytes_per_token_layer)
    return step_time(node, read, layers * tokens * model.flops_per_token_layer)


def prefill_chunk_tokens(flops_per_s: float, bytes_per_s: float, model: ModelShape,
                         step_fixed_s: float = 0.0, step_per_token_s: float = 0.0) -> int:
    """Prompt tokens a node prefills per step: the chunk whose FLOPs take as long as reading the
    layers' weights (the roofline's ridge), within [MIN_CHUNK_TOKENS, MAX_CHUNK_TOKENS].

    A smaller chunk leaves FLOP/s idle while the weights stream in; a larger one makes every decode
    token that shares the step wait longer for little gain. One size for every node (256) stalled
    decode on cards with few FLOP/s per byte: a 256-token chunk through 10 layers takes 73 ms on a
    3090-class card, 4x its weight read, and their pipelines' time per token sat at the TPOT
    objective (docs/scheduler-experiments.md, "prefill chunks sized per node").

    A node that has timed its own shard (engine.profile.time_prefill_steps: a step costs
    step_fixed_s + tokens * step_per_token_s) takes at least the chunk whose fixed cost is
    STEP_FIXED_SHARE of the step, so a prompt takes at most ~1.25x its single pass. The roofline has
    no fixed cost worth counting on a GPU, but a CPU spends 2-3 ms per layer per step in Python and
    kernel set-up: on the CI machine's 2 cores a 512-token prompt through 8 Qwen3-0.6B layers took
    0.92-1.07 s in the ridge's chunks (the 32-token floor) and 0.75-0.87 s in the 65-90-token chunks
    timing picks, one pass 0.58-0.65 s (bench/prefill_chunks.py, three runs)."""
    ridge = model.layer_bytes * flops_per_s / (bytes_per_s * model.flops_per_token_layer)
    if step_fixed_s > 0 and step_per_token_s > 0:
        ridge = max(ridge, step_fixed_s * (1 - STEP_FIXED_SHARE) / (STEP_FIXED_SHARE * step_per_token_s))
    return max(MIN_CHUNK_TOKENS, min(MAX_CHUNK_TOKENS, round(ridge)))


def pipelined_time(stage_s: list[float], chunk_share: list[float]) -> float:
    """Seconds for a prompt to pass stages that each pass a chunk on as soon as it is done: the
    slowest stage's whole time, plus the time of one chunk (chunk_share of its whole) at each other.
    Stages are a chain's prefills and the uploads of their hidden states (engine/swarm/stage.py)."""
    if not stage_s:
        return 0.0
    slowest = max(range(len(stage_s)), key=stage_s.__getitem__)
    return stage_s[slowest] + sum(t * min(1.0, c) for k, (t, c) in enumerate(zip(stage_s, chunk_share)) if k != slowest)


def transfer_time(node: NodeSpec, nbytes: float) -> float:
    """Time to push nbytes through the node's uplink."""
    return nbytes * 8 / (node.uplink_mbps * 1e6)
