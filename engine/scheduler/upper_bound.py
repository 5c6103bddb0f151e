"""An output-token rate that no placement and no routing can sustain on a swarm (a linear relaxation).

The bound is the optimum of a small linear programme over long-run average rates (per second) for
each hardware group g of nodes, built only from facts of the simulator's physics that hold for
every policy, every request and every step:

  R    output tokens per second (the objective);
  x_g  decode layer-passes: a request produces its first token at the end of its prefill, then
       needs one pass through every layer per further token, so sum_g x_g >= R * L * (1 - 1/E[o]);
  p_g  prefill layer-tokens: every prompt token goes through all L layers (re-prefills after a
       re-route only add), so sum_g p_g >= R * L * E[p] / E[o];
  h_g  lm_head work: at least one application (2 * lm_head params FLOPs) per output token;
  f_g  prompt tokens whose prefill visit at g is the last stage of the chain (nothing to upload);
  d_g  decode passes whose last stage is at g (it sends the sampled token id back, not a hidden state).

Constraints, and why each holds:
  compute   a step takes max(bytes/bandwidth, FLOPs/FLOP/s) + overhead, so a node present and
            loaded for a fraction a of the time does at most a * FLOP/s of FLOPs:
            (x_g + p_g) * flops_per_token_layer + h_g <= FLOP/s_g * A_g, A_g = sum of a over g.
  uplink    every maximal run of a chain on one node but the last ends by sending one hidden state
            per token to the next stage through that node's one uplink (the last sends a token id);
            a run covers at most cap_g = floor(memory / layer_bytes) layers. Decode sends at least
            x_g / cap_g - d_g hidden states and prefill at least p_g / cap_g - f_g, where each pass
            has exactly one final run (sum_g d_g <= sum_g x_g / L, sum_g f_g <= sum_g p_g / L),
            d_g <= x_g and f_g <= p_g. Unless a node can hold the whole model (then a chain may be
            that node alone): x_g / cap_g - d_g + p_g / cap_g - f_g <= A_g * uplink / hidden.
Expected lengths E[p], E[o] are taken conservatively for the clipped, rounded log-normal the
simulator draws (see length_bounds), so every per-token demand above is a lower bound.

Presence: a node contributes only while it is in the swarm with weights loaded; a newcomer must
first load at least one layer at the scenario's load speed. window_availability integrates this
over the measured window. It is a bound on steady throughput: the measured window can borrow a
little work done before it (prefills during warm-up), an edge effect of about a request's
lifetime over the window.

Nodes of a group may split their work in any proportion and chains are never enumerated: that is
the relaxation, and the reason the bound is an LP rather than a search.

What it leaves out, and why: memory, memory bandwidth, RTT and the latency objectives cannot lower
it validly on the shipped swarms. The only cycle time valid for every schedule is the bare chain
(batch 1, fastest nodes, shortest links): ~60 ms on the heterogeneous swarm, against 0.1-0.4 s for
loaded chains in the simulator; at 60 ms the KV cache that Little's law asks for fits in memory, the
batches it implies fit the bandwidth, and slow nodes mixed into fast chains keep the average
per-layer time within the TPOT objective. Checked, not assumed: a version that also lets each node
choose how many layers it holds and adds Little's law for the KV cache (every decode token keeps
prompt + max_tokens of cache on all L layers for at least its bare cycle: each layer's weights at
the node's bandwidth, one step overhead, half the shortest RTT and one hidden-state upload per run,
the lm_head read; over the whole swarm, and per node with the fastest chain any node could join;
request lengths split into quantile classes, so a policy that routes short requests to slow chains
is covered) gives exactly the same optimum on all three shipped swarms. What holds real swarms well
below the bound - prompt chunks sharing steps with decode tokens (a chunk at the roofline ridge about
doubles a decode step), queueing for steps and links, waiting for KV room - depends on
timing, and a policy could trade it away (admitting requests in batches keeps prompts and decode
apart, at a TTFT cost), so a worst-case argument cannot count it. Nor does the bound read the SLO,
so it holds whatever share of requests a policy leaves slow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .lp import maximise
from .model import ModelShape
from .simulator import JOIN, LEAVE, SimConfig
from .topology import NodeSpec
from .workload import LENGTH_SIGMA, Workload

SAFETY = 1e-6  # relative margin over the simplex optimum for floating-point error


@dataclass
class Bound:
    tok_s: float
    compute_tok_s: float  # the same programme without the uplink rows: FLOPs alone
    binding: list[str]  # constraints with a positive shadow price, e.g. "compute 700 TFLOP/s x4"


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def _lognormal_min(mean: float, cap: float) -> float:
    """E[min(X, cap)] for the simulator's log-normal X with this mean."""
    s = LENGTH_SIGMA
    mu = math.log(mean) - s * s / 2
    z = (math.log(cap) - mu) / s
    return mean * _phi(z - s) + cap * (1.0 - _phi(z))


def length_bounds(workload: Workload, cells: int = 256) -> tuple[float, float, float]:
    """(lower bound of E[prompt], lower and upper bound of E[output]) for workload.sample_request.

    prompt = max(1, min(C-1, round(X))) >= min(X, C-1) - 1/2. output = max(1, min(C - prompt,
    round(Y))) >= min(Y, C - prompt) - 1/2 with prompt <= X + 1 and Y independent of X: split X
    into equal-probability cells and use each cell's upper end. output <= Y + 3/2."""
    C = workload.max_context
    prompt_low = _lognormal_min(workload.prompt_tokens_mean, max(1.0, C - 1.0)) - 0.5
    s = LENGTH_SIGMA
    mu = math.log(workload.prompt_tokens_mean) - s * s / 2
    upper_ends = [math.exp(mu + s * NormalDist().inv_cdf(i / cells)) for i in range(1, cells)]
    room = [max(1.0, C - x - 1) for x in upper_ends] + [1.0]  # the last cell is unbounded
    output_low = sum(_lognormal_min(workload.output_tokens_mean, r) for r in room) / cells - 0.5
    return max(1.0, prompt_low), max(1.0, output_low), workload.output_tokens_mean + 1.5


def window_availability(cfg: SimConfig) -> tuple[list[NodeSpec], list[float]]:
    """Every node that is in the swarm during the measured window, with the share of the window it
    can serve: initial nodes from t=0, newcomers once they could have loaded one layer, until they leave."""
    start, end = cfg.warmup_s, cfg.duration_s
    load_s = cfg.model.layer_bytes / (cfg.load_gbs * 1e9)
    ready = {n.id: (n, 0.0) for n in cfg.initial_nodes}
    leave: dict[int, float] = {}
    for ev in cfg.membership:
        if ev.kind == JOIN:
            ready[ev.node.id] = (ev.node, ev.time + load_s)
        elif ev.kind == LEAVE:
            leave[ev.node.id] = min(ev.time, leave.get(ev.node.id, math.inf))
    nodes, shares = [], []
    for nid, (node, t0) in ready.items():
        overlap = min(end, leave.get(nid, math.inf)) - max(start, t0)
        if overlap > 0:
            nodes.append(node)
            shares.append(overlap / (end - start))
    return nodes, shares


def upper_bound_tok_s(nodes: list[NodeSpec], model: ModelShape, workload: Workload,
                      availability: list[float] | None = None) -> float:
    return bound(nodes, model, workload, availability).tok_s


def bound_for_window(cfg: SimConfig) -> Bound:
    nodes, shares = window_availability(cfg)
    return bound(nodes, model=cfg.model, workload=cfg.workload, availability=shares)


def _label(node: NodeSpec, present: float) -> str:
    return (f"{node.tflops:g} TFLOP/s, {node.memory_bytes / 1e9:g} GB, {node.uplink_mbps:g} Mbit/s "
            f"(x{present:.3g})")


def bound(nodes: list[NodeSpec], model: ModelShape, workload: Workload,
          availability: list[float] | None = None) -> Bound:
    availability = [1.0] * len(nodes) if availability is None else availability
    # a node that cannot hold one layer never runs anything
    useful = [(n, a) for n, a in zip(nodes, availability) if a > 0 and n.memory_bytes >= model.layer_bytes]
    if sum(n.memory_bytes for n, _ in useful) < model.total_weight_bytes:
        return Bound(0.0, 0.0, [])
    groups: dict[tuple, list] = {}  # hardware -> [node, summed availability]
    for node, share in useful:
        key = (node.memory_bytes, node.tflops, node.uplink_mbps)
        if key in groups:
            groups[key][1] += share
        else:
            groups[key] = [node, share]
    members = list(groups.values())
    L = model.num_layers
    prompt_low, output_low, output_high = length_bounds(workload)
    f = model.flops_per_token_layer
    decode_per_token = L * (1.0 - 1.0 / output_low)
    prefill_per_token = L * prompt_low / output_high
    lm_head_per_token = 2.0 * model.lm_head_bytes / model.dtype_bytes / f  # in layer-token FLOP units
    compute = np.array([n.flops_per_s * a / f for n, a in members])  # layer-tokens/s
    scale = compute.sum()  # rates are solved in units of the whole swarm's compute
    hidden = model.hidden_state_bytes(1)

    G = len(members)
    R, X, P, F, D, H = 0, 1, 1 + G, 1 + 2 * G, 1 + 3 * G, 1 + 4 * G  # columns: R, x_g, p_g, f_g, d_g, h_g
    columns = 1 + 5 * G
    rows, rhs, names = [], [], []

    def row(entries: dict[int, float], b: float, name: str) -> None:
        r = np.zeros(columns)
        for col, v in entries.items():
            r[col] += v
        rows.append(r)
        rhs.append(b)
        names.append(name)

    row({R: decode_per_token, **{X + g: -1.0 for g in range(G)}}, 0.0, "decode passes")
    row({R: prefill_per_token, **{P + g: -1.0 for g in range(G)}}, 0.0, "prefill")
    row({R: lm_head_per_token, **{H + g: -1.0 for g in range(G)}}, 0.0, "lm_head")
    row({**{F + g: 1.0 for g in range(G)}, **{P + g: -1.0 / L for g in range(G)}}, 0.0,
        "one final stage per prefill")
    row({**{D + g: 1.0 for g in range(G)}, **{X + g: -1.0 / L for g in range(G)}}, 0.0,
        "one final stage per decode pass")
    for g, (node, a) in enumerate(members):
        row({X + g: 1.0, P + g: 1.0, H + g: 1.0}, compute[g] / scale, f"compute of {_label(node, a)}")
        row({F + g: 1.0, P + g: -1.0}, 0.0, f"finals within prefill of {_label(node, a)}")
        row({D + g: 1.0, X + g: -1.0}, 0.0, f"finals within decode of {_label(node, a)}")
    uplink_rows = len(rows)
    for g, (node, a) in enumerate(members):
        if node.memory_bytes >= model.total_weight_bytes:
            continue  # it can serve whole chains alone, with nothing to send
        cap = min(L, int(node.memory_bytes // model.layer_bytes))
        messages = a * node.uplink_mbps * 1e6 / 8 / hidden / scale  # hidden states per second
        row({X + g: 1.0 / cap, P + g: 1.0 / cap, F + g: -1.0, D + g: -1.0}, messages, f"uplink of {_label(node, a)}")

    c = np.zeros(columns)
    c[R] = 1.0
    A, b = np.array(rows), np.array(rhs)
    value, _, duals = maximise(c, A, b)
    compute_only, _, _ = maximise(c, A[:uplink_rows], b[:uplink_rows])
    binding = [names[i] for i in np.argsort(-duals * b) if duals[i] * b[i] > 1e-9 * value]
    return Bound(float(value * scale * (1 + SAFETY)), float(compute_only * scale * (1 + SAFETY)), binding)
