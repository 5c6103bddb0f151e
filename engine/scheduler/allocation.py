"""Phase 1 of Potluck's scheduler: which layers each node serves.

Decode is memory-bound, so a pipeline's token rate is roughly (requests it holds) / (time to
read its weights once + links); the number of requests it can hold is set by the KV cache left
after the weights. Packing many layers per node (Petals) starves the cache; spreading layers thin
adds hops and round trips. So phase 1 searches the KV reservation Q (concurrent sessions per
pipeline): for each Q it gives every node the layers that fit beside Q sessions of cache
(m = M / (layer + Q * kv_per_layer)), forms pipelines from the fastest nodes of each region,
splits layers inside a pipeline so every stage spends the same time per request (its prompt at
the node's FLOP/s plus its share of decode steps at the node's bandwidth, from measured figures),
predicts throughput and latency with the performance model, and keeps the Q that gives the most
tokens/s within the latency budget. Nodes left over are put on the layers where their own region
is thinnest, so routing can stitch them into chains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .model import ModelShape
from .perf import (STEP_OVERHEAD_S, layer_decode_time, pipelined_time, prefill_chunk_tokens, prefill_time,
                   transfer_time)
from .policy import Assignment, SwarmContext
from .topology import NodeSpec
from .workload import LENGTH_SIGMA

CONCURRENCY_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
TPOT_BUDGET = 0.8  # share of the TPOT SLO a fully loaded pipeline may use; the rest is queueing slack
TTFT_BUDGET = 0.5  # share of the TTFT SLO a planned prompt's bare prefill may use
STITCHER_PREFILL_SHARE = 0.1  # a spare node whose prefill of a mean prompt takes more of the TTFT SLO stays idle
STITCHER_SLOWDOWN = 1.0  # a spare node slower per layer (hop included) than the planned pipelines stays idle
# nodes too slow to stitch form overflow pipelines, planned for up to this multiple of the TPOT
# objective: when the planned pipelines are full, a slower answer beats waiting for one, and the
# objective is a median the planned pipelines keep. At 1.5x the volunteer swarm's 200 Apple M1/M2
# Pros (10 chained stages, ~0.9 s per token bare) stayed on standby; at 2x they served 21-32
# sessions a pipeline, at 3x 150 (their bandwidth, not their FLOP/s, sets their pace), and the swarm
# passes 197 requests/s instead of failing there (docs/scheduler-experiments.md, "Slow answers for
# the slowest laptops")
OVERFLOW_TPOT_SHARE = 3.0
# ... and for at most this share of each stage's FLOP/s on prompts and decode together: a looser
# TPOT lets FLOP/s-poor stages (M1/M2 Maxes) take sessions whose prompts then queue behind each
# other, and the first-token prediction, which charges only prompts, does not see it coming
OVERFLOW_COMPUTE_SHARE = 0.8
# pipelines are planned for prompts up to this multiple of the mean; the router keeps longer prompts
# off chains too slow for them (potluck.PREFILL_HOP_SHARE, TTFT_ROUTE_SHARE)
PLANNED_PROMPT_FACTOR = 1.0
WIDEN_GAIN = 1.02  # a spare node joins a planned pipeline when it raises the predicted rate this much
P99_FACTOR = math.exp(2.326 * LENGTH_SIGMA - LENGTH_SIGMA**2 / 2)  # p99 / mean of a request length


class SwarmTooSmall(Exception):
    def __init__(self, needed_bytes: float):
        self.needed_bytes = needed_bytes
        super().__init__(f"swarm too small for this model: needs {needed_bytes / 1e9:.1f} GB more memory "
                         f"(add nodes or use a smaller or quantised model)")


@dataclass
class Pipeline:
    stages: list[tuple[int, int, int]]  # (node, start, end) in chain order
    concurrency: float  # sessions the pipeline holds at the predicted rate
    tok_s: float
    tpot_s: float
    ttft_s: float


@dataclass
class Plan:
    assignment: Assignment
    pipelines: list[Pipeline] = field(default_factory=list)
    stitchers: list[int] = field(default_factory=list)
    concurrency: int = 0
    overflow: list[Pipeline] = field(default_factory=list)  # used only when the pipelines are full

    @property
    def overflow_nodes(self) -> set[int]:
        return {node for p in self.overflow for node, _, _ in p.stages}

    @property
    def tok_s(self) -> float:
        return sum(p.tok_s for p in self.pipelines)


def layers_that_fit(node: NodeSpec, model: ModelShape, kv_tokens: float, extra_bytes: float = 0.0) -> int:
    """Layers whose weights fit beside KV cache for kv_tokens (summed over sessions) per layer."""
    per_layer = model.layer_bytes + kv_tokens * model.kv_bytes_per_token_layer
    return max(0, min(model.num_layers, int((node.memory_bytes - extra_bytes) // per_layer)))


def check_swarm_fits(nodes: list[NodeSpec], ctx: SwarmContext) -> None:
    """Raise SwarmTooSmall unless the swarm can hold one replica plus cache for one long request."""
    model = ctx.model
    request_tokens = min(ctx.workload.max_context, ctx.workload.kv_tokens_mean * P99_FACTOR)
    per_layer = model.layer_bytes + request_tokens * model.kv_bytes_per_token_layer
    held = sum(min(model.num_layers, int(n.memory_bytes // per_layer)) for n in nodes)
    total = sum(n.memory_bytes for n in nodes)
    need = model.num_layers * per_layer + model.embed_bytes + model.lm_head_bytes
    if held < model.num_layers or total < need:
        missing_layers = max(0, model.num_layers - held)
        raise SwarmTooSmall(max(need - total, missing_layers * per_layer, 1e8))


def split_layers(times: list[float], caps: list[int], num_layers: int) -> list[int] | None:
    """Layers per stage so that layers * per-layer time is level across stages (water-filling)."""
    if sum(caps) < num_layers:
        return None
    # n_i = min(c_i, lam / t_i); walk the saturation points c_i * t_i in increasing order
    order = sorted(range(len(caps)), key=lambda k: caps[k] * times[k])
    saturated = 0.0
    inv_rest = sum(1.0 / t for t in times)
    lam = 0.0
    for k in order:
        if saturated + caps[k] * times[k] * inv_rest >= num_layers:
            lam = (num_layers - saturated) / inv_rest
            break
        saturated += caps[k]
        inv_rest -= 1.0 / times[k]
    else:
        lam = max(c * t for c, t in zip(caps, times))
    real = [min(c, lam / t) for c, t in zip(caps, times)]
    counts = [min(c, int(x)) for c, x in zip(caps, real)]
    short = num_layers - sum(counts)
    for k in sorted(range(len(caps)), key=lambda k: counts[k] - real[k]):
        if short <= 0:
            break
        if counts[k] < caps[k]:
            counts[k] += 1
            short -= 1
    if short > 0:
        for k in sorted(range(len(caps)), key=lambda k: times[k]):
            add = min(short, caps[k] - counts[k])
            counts[k] += add
            short -= add
    return counts


class PipelineModel:
    """Predicts a pipeline's tokens/s, TPOT and TTFT from the performance model."""

    def __init__(self, ctx: SwarmContext, strict: bool = True, tpot_share: float = TPOT_BUDGET,
                 compute_share: float = math.inf):
        self.ctx = ctx
        self.compute_share = compute_share
        wl = ctx.workload
        self.context = wl.decode_context_mean
        self.kv_tokens = wl.kv_tokens_mean
        self.long_prompt = min(wl.max_context, wl.prompt_tokens_mean * PLANNED_PROMPT_FACTOR)
        # without strict budgets (when nothing meets them) the swarm still serves, just slower
        self.tpot_budget = tpot_share * ctx.slo.tpot_p50_s if strict else math.inf
        self.ttft_budget = TTFT_BUDGET * ctx.slo.ttft_p99_s if strict else math.inf
        self.cache: dict = {}

    def layer_work(self, node: NodeSpec, batch: float) -> float:
        """Seconds one layer on this node spends per request: its prompt, and its share of the decode
        steps at this batch. Stages are levelled on this, so a prompt-heavy workload gives the
        cards with the most FLOP/s more layers, and a decode-heavy one those with the most bandwidth."""
        model, wl = self.ctx.model, self.ctx.workload
        prompt = prefill_time(node, model, 1, int(wl.prompt_tokens_mean)) - STEP_OVERHEAD_S
        return prompt + wl.output_tokens_mean * layer_decode_time(node, model, batch, self.context) / max(batch, 1.0)

    def links(self, stages: list[NodeSpec]) -> float:
        """Half round trips around the ring (the last stage sends the token back to the first)."""
        if len(stages) == 1:
            return 0.0
        rtt = self.ctx.rtt
        return sum(rtt.rtt_s(s.region, stages[(k + 1) % len(stages)].region) / 2 for k, s in enumerate(stages))

    def chain(self, stages: list[NodeSpec], layers: list[int]) -> ChainTimes:
        return ChainTimes(self, stages, layers)

    def evaluate(self, stages: list[NodeSpec], layers: list[int]) -> tuple[float, float, float, float] | None:
        """(tok/s, concurrency, tpot, ttft) at the largest concurrency that memory holds and that
        keeps both latency budgets; None when even one session breaks them."""
        model = self.ctx.model
        hold = []
        for k, (s, n) in enumerate(zip(stages, layers)):
            start = sum(layers[:k])
            free = s.memory_bytes - model.weight_bytes(start, start + n)
            hold.append(free / model.kv_bytes(self.kv_tokens, n))
        q_max = min(hold)
        chain = self.chain(stages, layers)

        def within(q: float) -> bool:
            tpot, rate = chain.cycle(q)
            return (tpot <= self.tpot_budget and chain.ttft(rate) <= self.ttft_budget
                    and chain.compute_load(rate) <= self.compute_share)

        if q_max < 1 or not within(1.0):
            return None
        q = q_max
        if not within(q):
            lo, hi = 1.0, q_max
            for _ in range(16):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if within(mid) else (lo, mid)
            q = lo
        tpot, rate = chain.cycle(q)
        return rate, q, tpot, chain.ttft(rate)


class ChainTimes:
    """A pipeline's predicted times under load. What does not depend on the load (prefill times,
    uploads of a prompt, links) is computed once: the planner asks each chain about many loads."""

    def __init__(self, pm: PipelineModel, stages: list[NodeSpec], layers: list[int]):
        model, wl = pm.ctx.model, pm.ctx.workload
        self.model, self.context, self.output_tokens = model, pm.context, wl.output_tokens_mean
        self.stages, self.layers = stages, layers
        self.links = pm.links(stages)
        self.prefills = [prefill_time(s, model, n, int(wl.prompt_tokens_mean)) for s, n in zip(stages, layers)]
        prompt = int(pm.long_prompt)
        self.long_prefills = [prefill_time(s, model, n, prompt) for s, n in zip(stages, layers)]
        self.chunk_shares = [prefill_chunk_tokens(s.flops_per_s, s.bytes_per_s, model) / prompt for s in stages]
        self.prompt_uploads = [transfer_time(s, model.hidden_state_bytes(prompt)) for s in stages[:-1]]
        self.mean_prompt_uploads = [transfer_time(s, model.hidden_state_bytes(wl.prompt_tokens_mean))
                                    for s in stages[:-1]]
        # seconds of FLOP/s each decode token takes at a stage (at the roofline's compute side)
        self.decode_compute = [n * model.flops_per_token_layer / s.flops_per_s for s, n in zip(stages, layers)]
        self.prompt_links = 0.0
        for s, nxt in zip(stages, stages[1:]):
            self.prompt_links += pm.ctx.rtt.rtt_s(s.region, nxt.region) / 2
        hidden = model.hidden_state_bytes(1)
        # every stage but the last sends each token's hidden state on; the last sends a token id
        self.token_uploads = [transfer_time(s, hidden) if k < len(stages) - 1 else 0.0 for k, s in enumerate(stages)]

    def cycle(self, q: float) -> tuple[float, float]:
        """(token time, tokens/s) of the pipeline holding q requests, spread evenly over its stages.

        Per stage: its decode step at batch q/S, slowed by the share of time it spends on prompts
        (rho = request rate x prefill time), plus uploading the batch's hidden states; plus links.
        The request rate depends on the throughput, so iterate to the fixed point.
        """
        batch = q / len(self.stages)
        steps = [n * layer_decode_time(s, self.model, batch, self.context) + STEP_OVERHEAD_S
                 for s, n in zip(self.stages, self.layers)]
        uploads = [batch * up for up in self.token_uploads]
        rate = 0.0
        for _ in range(12):
            requests_per_s = rate / self.output_tokens
            t = self.links
            for step, up, pre in zip(steps, uploads, self.prefills):
                rho = requests_per_s * pre
                if rho > 0.95:  # min() here cost a tenth of a 1000-node plan
                    rho = 0.95
                t += step / (1 - rho) + up
            new_rate = q / t
            if abs(new_rate - rate) < 1e-3 * new_rate:
                break
            rate = 0.5 * (rate + new_rate) if rate else new_rate
        return t, q / t

    def compute_load(self, rate: float) -> float:
        """The busiest stage's share of its FLOP/s spent on prompts and decode at `rate` tokens/s."""
        requests_per_s = rate / self.output_tokens
        return max(requests_per_s * pre + rate * dc for pre, dc in zip(self.prefills, self.decode_compute))

    def ttft(self, rate: float) -> float:
        """Bare time to first token of a planned-length prompt while the pipeline runs at `rate`
        tokens/s: its chunks pass the stages (and the uplinks between them) pipelined. An uplink
        also carries every decode token's hidden state and the other prompts: on the volunteer
        swarm's 100-200 Mbit/s cards that load, not their FLOP/s, is what queues prompts."""
        requests_per_s = rate / self.output_tokens
        times, shares = [], []
        for k, (pre, long, share) in enumerate(zip(self.prefills, self.long_prefills, self.chunk_shares)):
            rho = min(0.95, requests_per_s * pre)
            times.append(long / (1 - rho))
            shares.append(share)
            if k < len(self.prompt_uploads):
                sent = min(0.95, requests_per_s * self.mean_prompt_uploads[k] + rate * self.token_uploads[k])
                times.append(self.prompt_uploads[k] / (1 - sent))
                shares.append(share)
        return pipelined_time(times, shares) + self.prompt_links


def hardware_key(node: NodeSpec) -> tuple:
    return (node.memory_bytes, node.tflops, node.bandwidth_gbs, node.region, node.uplink_mbps)


def build_pipeline(members: list[NodeSpec], q: int, pm: PipelineModel) -> Pipeline | None:
    """Pipeline over these nodes with reservation q; identical hardware lists are solved once."""
    key = (q, tuple(hardware_key(n) for n in members))
    if key not in pm.cache:
        pm.cache[key] = _build_pipeline(members, q, pm)
    solved = pm.cache[key]
    if solved is None:
        return None
    positions, pipe = solved
    stages = [(members[k].id, s, e) for k, (_, s, e) in zip(positions, pipe.stages)]
    return Pipeline(stages, pipe.concurrency, pipe.tok_s, pipe.tpot_s, pipe.ttft_s)


def _build_pipeline(members: list[NodeSpec], q: int, pm: PipelineModel) -> tuple[list[int], Pipeline] | None:
    model = pm.ctx.model
    kv = q * pm.kv_tokens
    index = list(range(len(members)))
    if len(members) == 1:
        caps = [layers_that_fit(members[0], model, kv, model.embed_bytes + model.lm_head_bytes)]
    else:
        by_memory = sorted(index, key=lambda k: -members[k].memory_bytes)
        first, last = by_memory[0], by_memory[1]
        index = [first] + [k for k in index if k not in (first, last)] + [last]
        caps = ([layers_that_fit(members[first], model, kv, model.embed_bytes)]
                + [layers_that_fit(members[k], model, kv) for k in index[1:-1]]
                + [layers_that_fit(members[last], model, kv, model.lm_head_bytes)])
    order = [members[k] for k in index]
    batch = q / len(order)
    times = [pm.layer_work(n, batch) for n in order]
    counts = split_layers(times, caps, model.num_layers)
    if counts is None:
        return None
    keep = [k for k, c in enumerate(counts) if c > 0]
    if keep[0] != 0 or keep[-1] != len(order) - 1:
        return None  # the ends must stay where embedding / lm_head were budgeted
    stages_nodes = [order[k] for k in keep]
    layers = [counts[k] for k in keep]
    result = pm.evaluate(stages_nodes, layers)
    if result is None:
        return None
    rate, conc, tpot, ttft = result
    stages, start = [], 0
    for n in layers:
        stages.append((-1, start, start + n))
        start += n
    return [index[k] for k in keep], Pipeline(stages, conc, rate, tpot, ttft)


def form_pipelines(nodes: list[NodeSpec], q: int, pm: PipelineModel,
                   mix: bool = False) -> tuple[list[Pipeline], list[NodeSpec]]:
    """Greedy pipelines, each with just enough nodes to hold all layers.

    Plain: fastest nodes first. Mixed: each pipeline takes alternately from the fast and the slow
    end of the pool, so slow nodes (good KV holders with a few layers) ride along with fast ones
    inside the latency budget instead of forming pipelines too slow to use.
    """
    model = pm.ctx.model
    kv = q * pm.kv_tokens
    pool = sorted(nodes, key=node_speed_key)
    pipelines: list[Pipeline] = []
    leftover: list[NodeSpec] = []
    while pool:
        members, held, take_fast = [], 0, True
        while pool and held < model.num_layers + 2:
            n = pool.pop(0) if take_fast or not mix else pool.pop()
            take_fast = not take_fast
            c = layers_that_fit(n, model, kv)
            if c > 0:
                members.append(n)
                held += c
            else:
                leftover.append(n)
        pipe = build_pipeline(members, q, pm) if held >= model.num_layers else None
        for _ in range(12 if mix else 3):
            if pipe is not None or not pool:
                break
            # too slow, or the ends lost room to embedding / lm_head: trade the slowest member
            # for the fastest node left
            slowest = min(members, key=lambda n: n.bandwidth_gbs)
            if held - layers_that_fit(slowest, model, kv) + layers_that_fit(pool[0], model, kv) >= model.num_layers:
                members.remove(slowest)
                leftover.append(slowest)
            members.append(pool.pop(0))
            held = sum(layers_that_fit(n, model, kv) for n in members)
            pipe = build_pipeline(members, q, pm) if held >= model.num_layers else None
        if pipe is None:
            leftover += members
            break
        pipelines.append(pipe)
        used = {st[0] for st in pipe.stages}
        unused = [n for n in members if n.id not in used]  # the split gave them no layers
        if unused:
            pool = sorted(pool + unused, key=node_speed_key)
    return pipelines, leftover + pool


def node_speed_key(node: NodeSpec) -> float:
    return -node.bandwidth_gbs


def best_pipelines(nodes: list[NodeSpec], pm: PipelineModel, grid: tuple[int, ...] = CONCURRENCY_GRID,
                   mixes: tuple[bool, ...] = (False, True)) -> tuple[list[Pipeline], list[NodeSpec], int]:
    """The KV reservation q (from the grid) whose pipelines give these nodes the most tokens/s."""
    best: tuple[float, int, list[Pipeline], list[NodeSpec]] = (0.0, 1, [], list(nodes))
    for q in grid:
        for mix in mixes:
            pipelines, leftover = form_pipelines(nodes, q, pm, mix)
            total = sum(p.tok_s for p in pipelines)
            if total > best[0]:
                best = (total, q, pipelines, leftover)
    return best[2], best[3], best[1]


def plan_pipelines(nodes: list[NodeSpec], pm: PipelineModel) -> tuple[list[Pipeline], list[NodeSpec], int]:
    """Pipelines inside each region first (round trips there are short), each region with its own
    reservation q; then the nodes of regions that could not form a pipeline of their own together,
    if the round trips between them allow. Nodes of a region that has pipelines stay there as
    stitchers: routes keep to one region, so a cross-region pipeline made of them would be used only
    when their region's own chains are full. Returns the smallest q chosen."""
    by_region: dict[str, list[NodeSpec]] = {}
    for n in nodes:
        by_region.setdefault(n.region, []).append(n)
    pipelines: list[Pipeline] = []
    leftover: list[NodeSpec] = []
    stranded: list[NodeSpec] = []
    qs = []
    for region in sorted(by_region):
        pipes, rest, q = best_pipelines(by_region[region], pm)
        if pipes:
            pipes, rest = widen_pipelines(pipes, rest, by_region[region], q, pm)
            pipelines += pipes
            leftover += rest
            qs.append(q)
        else:
            stranded += rest
    if len({n.region for n in stranded}) > 1:
        pipes, stranded, q = best_pipelines(stranded, pm)
        pipelines += pipes
        if pipes:
            qs.append(q)
    return pipelines, leftover + stranded, (min(qs) if qs else 1)


def widen_pipelines(pipelines: list[Pipeline], spare: list[NodeSpec], nodes: list[NodeSpec], q: int,
                    pm: PipelineModel) -> tuple[list[Pipeline], list[NodeSpec]]:
    """Add spare nodes of the region to its pipelines while the predicted rate rises by WIDEN_GAIN.

    form_pipelines takes just enough nodes to hold the model; one more stage lets every stage hold
    fewer layers and more cache (and adds its FLOP/s), for one more hop. As a stitcher beside the
    pipeline the same node only doubles a few layers: on the shipped LAN the eighth 24 GB card in
    the pipeline raised capacity from 2341 to 2811 tok/s; on the heterogeneous swarm Asia's second
    Mac Studio joins its pipeline. The prediction decides: on that swarm's EU a 3090 beside the
    A100s would be predicted slower (its 300 Mbit/s uplink carries every prompt) and stays out."""
    by_id = {n.id: n for n in nodes}
    spare = sorted(spare, key=node_speed_key)
    out = []
    for pipe in sorted(pipelines, key=lambda p: -p.tok_s):
        members = [by_id[n] for n, _, _ in pipe.stages]
        best = pipe
        while spare:
            trials = {}
            for cand in spare:
                key = hardware_key(cand)
                if key not in trials:
                    trials[key] = (cand, build_pipeline(members + [cand], q, pm))
            cand, trial = max(trials.values(), key=lambda ct: ct[1].tok_s if ct[1] else 0.0)
            if trial is None or trial.tok_s < WIDEN_GAIN * best.tok_s:
                break
            members = members + [cand]
            spare.remove(cand)
            best = trial
        used = {st[0] for st in best.stages}
        spare = sorted(spare + [n for n in members if n.id not in used], key=node_speed_key)
        out.append(best)
    return out, spare


def layer_rates(pipelines: list[Pipeline], num_layers: int) -> np.ndarray:
    rates = np.zeros(num_layers)
    for p in pipelines:
        rates += p.tok_s  # every pipeline covers every layer
    return rates


def region_pipelines(pipelines: list[Pipeline], region: str, region_of: dict[int, str]) -> list[Pipeline]:
    """The pipelines wholly inside `region` (all of them when it has none): where its spares' routes run."""
    return [p for p in pipelines if all(region_of.get(s[0]) == region for s in p.stages)] or pipelines


def reference_cycle(pipelines: list[Pipeline]) -> float:
    """Typical loaded seconds per token of these pipelines, which a spare must not slow down."""
    return float(np.median([p.tpot_s for p in pipelines]))


def thinnest_window(rates: np.ndarray, node: NodeSpec, model: ModelShape, kv_tokens: float) -> tuple[int, int] | None:
    """The layers (start, end) this node can hold beside kv_tokens of cache whose lowest summed
    token rate is lowest (ties: lowest sum). A window at either end is shorter by the embedding or
    lm_head it must hold too, so every candidate is sized for where it sits: a window chosen for a
    thin last layer that the node then cannot hold would attract every newcomer to the same place."""
    L = model.num_layers
    whole = layers_that_fit(node, model, kv_tokens, model.embed_bytes + model.lm_head_bytes)
    if whole >= L:
        return 0, L
    candidates = []
    first = layers_that_fit(node, model, kv_tokens, model.embed_bytes)
    if first > 0:
        candidates.append((0, first))
    last = layers_that_fit(node, model, kv_tokens, model.lm_head_bytes)
    if last > 0:
        candidates.append((L - last, L))
    inner = min(layers_that_fit(node, model, kv_tokens), L - 2)
    if inner > 0:
        windows = np.lib.stride_tricks.sliding_window_view(rates[1:L - 1], inner)
        score = windows.min(axis=1) + 1e-9 * windows.sum(axis=1)
        start = 1 + int(np.argmin(score))
        candidates.append((start, start + inner))
    if not candidates:
        return None
    return min(candidates, key=lambda w: rates[w[0]:w[1]].min() + 1e-9 * rates[w[0]:w[1]].sum())


def speeds_up_chains(node: NodeSpec, layers: int, ref_cycle: float, pm: PipelineModel) -> bool:
    """Whether a spare node holding `layers` layers would help the chains routed through it.

    Its prompt time must stay a small share of the TTFT objective, and its time per layer with
    its hop included (at batch 1) must be no worse than the planned pipelines' per layer when
    loaded. A slower stitcher drags every chain it joins, and the fast stages of that chain hold
    their KV cache for the longer cycle: on the volunteer swarm, 12 GB cards as stitchers cut the
    tokens served at the same arrival rate by 12%."""
    model, ctx = pm.ctx.model, pm.ctx
    prompt = int(ctx.workload.prompt_tokens_mean)
    bare = prefill_time(node, model, layers, prompt) + transfer_time(node, model.hidden_state_bytes(prompt))
    if bare > STITCHER_PREFILL_SHARE * ctx.slo.ttft_p99_s:
        return False
    hop = (ctx.rtt.rtt_s(node.region, node.region) / 2 + STEP_OVERHEAD_S
           + transfer_time(node, model.hidden_state_bytes(1)))
    per_layer = layer_decode_time(node, model, 1.0, pm.context) + hop / layers
    return per_layer <= STITCHER_SLOWDOWN * ref_cycle / model.num_layers


def place_stitchers(leftover: list[NodeSpec], q: int, rates: np.ndarray, ref_cycle: float,
                    pm: PipelineModel, assignment: Assignment) -> list[int]:
    """Give leftover nodes the window of layers where the summed token rate is lowest."""
    model = pm.ctx.model
    placed = []
    for node in sorted(leftover, key=node_speed_key):
        window = (thinnest_window(rates, node, model, q * pm.kv_tokens)
                  or thinnest_window(rates, node, model, pm.kv_tokens))
        if window is None:
            continue
        start, end = window
        m = end - start
        if not speeds_up_chains(node, m, ref_cycle, pm):
            continue  # it stays on standby: a spare for the layers of a node that leaves
        free = node.memory_bytes - model.weight_bytes(start, start + m)
        conc = free / model.kv_bytes(pm.kv_tokens, m)
        rates[start:start + m] += conc / max(ref_cycle, 1e-3)
        assignment[node.id] = (start, start + m)
        placed.append(node.id)
    return placed


def allocate(nodes: list[NodeSpec], ctx: SwarmContext) -> Plan:
    check_swarm_fits(nodes, ctx)
    plan = _allocate(nodes, PipelineModel(ctx), PipelineModel(ctx, tpot_share=OVERFLOW_TPOT_SHARE,
                                                                  compute_share=OVERFLOW_COMPUTE_SHARE))
    if not plan.pipelines:
        plan = _allocate(nodes, PipelineModel(ctx, strict=False))
    if not plan.pipelines:
        ensure_coverage(nodes, plan, ctx)
    return plan


def _allocate(nodes: list[NodeSpec], pm: PipelineModel, overflow_pm: PipelineModel | None = None) -> Plan:
    pipelines, leftover, q = plan_pipelines(nodes, pm)
    if not pipelines:
        return Plan({}, [], [], 1)
    overflow = overflow_pipelines(leftover, overflow_pm) if overflow_pm else []
    assignment: Assignment = {}
    for p in pipelines + overflow:
        for node, start, end in p.stages:
            assignment[node] = (start, end)
    leftover = [n for n in leftover if n.id not in assignment]
    # stitchers go where their own region is thinnest, since that is where their routes run; all
    # size their layers for the smallest reservation any region chose (more layers, less cache each
    # measured better on the volunteer swarm than each region's own q)
    region_of = {n.id: n.region for n in nodes}
    stitchers = []
    for region in sorted({n.region for n in leftover}):
        local = region_pipelines(pipelines, region, region_of)
        rates = layer_rates(local, pm.ctx.model.num_layers)
        ref_cycle = reference_cycle(local)
        stitchers += place_stitchers([n for n in leftover if n.region == region], q, rates, ref_cycle, pm,
                                     assignment)
    return Plan(assignment, pipelines, stitchers, q, overflow)


def overflow_pipelines(spare: list[NodeSpec], pm: PipelineModel) -> list[Pipeline]:
    """Pipelines, each inside one region, of the nodes the planned pipelines left, planned for a
    looser TPOT.

    Routing uses them only when the planned pipelines have no cache room or are busy with prompts,
    and never mixes the two: a slow stage in a fast chain would hold the fast stages' cache for its
    slower cycle (see speeds_up_chains). On the volunteer swarm these are the 12 GB cards, idle
    otherwise. They form before any spare node stitches: a stitcher only doubles a few layers of
    pipelines that are already whole, while a pipeline of the same nodes holds every layer again
    and gives prompts a calm place when the fast ones queue. On the heterogeneous swarm the EU's
    five 3090s stitched the A100 pipeline at 23% busy; with its two idle Macs they form a pipeline
    instead, and the swarm passes the SLO at 21.5 requests/s (5398 tok/s; it failed there before).

    Each kind of hardware in a region is planned with the reservation q that suits it, then what is
    left of all kinds together. With one q per region the volunteer swarm's RTX 3060s took the
    3080s' 21-stage shape, and their prompts, crossing 20 hops of 100 Mbit/s uplinks, got their
    first tokens 12-17 s after arrival at the median; as 17 stages of 5 layers they are predicted 1296 tok/s instead
    of 966 in NA (docs/scheduler-experiments.md, "A reservation per kind of overflow card")."""
    by_region: dict[str, list[NodeSpec]] = {}
    for n in spare:
        by_region.setdefault(n.region, []).append(n)
    out = []
    for region in sorted(by_region):
        by_kind: dict[tuple, list[NodeSpec]] = {}
        for n in by_region[region]:
            by_kind.setdefault(hardware_key(n), []).append(n)
        rest: list[NodeSpec] = []
        for kind in sorted(by_kind):
            # mixing fast and slow ends gains nothing among alike nodes, and a coarse grid keeps
            # allocation fast at 1000 nodes
            pipes, left, _ = best_pipelines(by_kind[kind], pm, grid=CONCURRENCY_GRID[::3], mixes=(False,))
            out += pipes
            rest += left
        if rest:
            pipes, _, _ = best_pipelines(rest, pm, grid=CONCURRENCY_GRID[::3], mixes=(False,))
            out += pipes
    return out


def ensure_coverage(nodes: list[NodeSpec], plan: Plan, ctx: SwarmContext) -> None:
    """Without any pipeline, cover the layers greedily with the largest nodes, one session each."""
    model = ctx.model
    plan.assignment.clear()
    plan.stitchers = []
    start = 0
    kv = ctx.workload.kv_tokens_mean
    for node in sorted(nodes, key=lambda n: -n.memory_bytes):
        if start >= model.num_layers:
            break
        n = model.num_layers - start
        while n > 0 and model.weight_bytes(start, start + n) + model.kv_bytes(kv, n) > node.memory_bytes:
            n -= 1
        if n > 0:
            plan.assignment[node.id] = (start, start + n)
            start += n
    if start < model.num_layers:
        per_layer = model.layer_bytes + model.kv_bytes(kv, 1)
        raise SwarmTooSmall((model.num_layers - start) * per_layer + model.lm_head_bytes)
