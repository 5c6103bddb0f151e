"""Potluck's own policy: KV-aware pipeline allocation + load-aware stitching routes.

Nodes too slow to join the planned pipelines form overflow pipelines of their own, which take
requests only while the planned ones have no cache room, and no more than they were planned for.
Joins and leaves are incremental: a newcomer takes the thinnest layers without moving anyone; a
leaver's layers are taken over by spare nodes only when no one else covers them. A global re-plan
happens only when its predicted gain over the next minutes beats the tokens lost while moved nodes
reload their weights.
"""

from __future__ import annotations

import numpy as np

from .allocation import (PipelineModel, Plan, SwarmTooSmall, allocate, reference_cycle, region_pipelines,
                         speeds_up_chains, thinnest_window)
from .perf import STEP_OVERHEAD_S, layer_decode_time, pipelined_time, prefill_chunk_tokens, transfer_time
from .policy import Assignment, Hop, LoadView, Policy, RouteRequest, SwarmContext, covers_all_layers
from .routing import cheapest_per_group, cheapest_ring
from .topology import NodeSpec

REPLAN_HORIZON_S = 600.0  # how long a re-plan is expected to pay off
RELOAD_GBS = 2.0  # weight loading speed assumed when pricing a re-plan
MAX_REPLAN_MOVES = 0.25  # a global re-plan may move at most this share of the serving nodes
MAX_UTILIZATION = 0.97
PREFILL_HOP_SHARE = 0.1  # a hop whose prefill takes more of the TTFT objective is a last resort
# a node's busy fraction weighs in routing only once this share of its cache is reserved. Below it the
# node is busy with small decode steps that one more request rides almost for free: on the volunteer
# swarm at its own 4 requests/s the busy fraction sent most requests past the A6000 pipelines (4-6
# stages) to 3090 chains of 7-9 (TPOT p50 0.277 s; 0.260 s with this). Near capacity, where it keeps
# prompts off prompt-saturated nodes (the heterogeneous swarm's EU A100s), those hold much of their
# cache (docs/scheduler-experiments.md, "the busy fraction at low load")
BUSY_FROM_RESERVED = 0.1
PROMPT_LOAD_DECAY_S = 2.0  # how long a routed prompt is assumed to keep a node busy
TTFT_ROUTE_SHARE = 0.3  # share of the TTFT objective a chain's bare prefill may take before it is re-planned
# a node with more queued prompt work than this share of the TTFT objective takes no new prompt
# while a calmer pipeline has room: when empty pipelines fill (at start, after a re-plan) or a burst
# arrives, cache room outlasts prefill room by many seconds. Only where there are overflow pipelines
# to turn to; elsewhere routing's cost already weighs the queue
PROMPT_QUEUE_SHARE = 0.2


class PotluckPolicy(Policy):
    name = "potluck"
    reroutes_on_failure = True
    replays_from = "stage"

    def __init__(self, ctx: SwarmContext):
        super().__init__(ctx)
        self.plan: Plan | None = None
        self._regions = ctx.rtt.regions
        _, rtt = ctx.rtt.matrix()
        self._half_rtt = [[x / 2 for x in row] for row in rtt]
        # the same, with hops between regions ruled out (see route)
        self._within_region = [[x / 2 if i == j else np.inf for j, x in enumerate(row)] for i, row in enumerate(rtt)]
        self._region_index = {r: i for i, r in enumerate(self._regions)}
        self._spans_key = None
        self._session_cap_of: dict[int, float] = {}
        self._spans: list[tuple[int, int, int, int]] = []
        self._token_time_target = ctx.slo.tpot_p50_s
        # prompt tokens recently sent through each node (decaying): the prefill queue it has now
        self._prompt_load = np.zeros(0)
        self._prompt_load_t = 0.0
        # and the seconds of prompt work not yet done, worked off at one second per second. Routing
        # reads it for overflow nodes only, whose prompts outlast the fading memory above (a Mac
        # needs 1-2 s per stage for a mean prompt); on the planned pipelines' fast cards the fading
        # memory steers better, since they interleave prompts with decode steps
        # (docs/scheduler-experiments.md, "how routing counts the prompts queued at a node")
        self._prompt_work = np.zeros(0)

    # phase 1 -----------------------------------------------------------------------------
    def allocate(self, nodes: dict[int, NodeSpec]) -> Assignment:
        """Empty when the swarm cannot hold the model (allocation.check_swarm_fits says by how much)."""
        try:
            self.plan = allocate(list(nodes.values()), self.ctx)
        except SwarmTooSmall:
            self.plan = None
            return {}
        return dict(self.plan.assignment)

    def on_join(self, node: NodeSpec, nodes: dict[int, NodeSpec], current: Assignment) -> Assignment:
        model = self.ctx.model
        q = self.plan.concurrency if self.plan else 1
        kv = self.ctx.workload.kv_tokens_mean
        rates = self._layer_rates(nodes, current)
        window = thinnest_window(rates, node, model, q * kv) or thinnest_window(rates, node, model, kv)
        if window is None:
            return current
        if self.plan and self.plan.pipelines:
            region_of = {n: spec.region for n, spec in nodes.items()}
            ref_cycle = reference_cycle(region_pipelines(self.plan.pipelines, node.region, region_of))
            if not speeds_up_chains(node, window[1] - window[0], ref_cycle, PipelineModel(self.ctx)):
                return self._replace_overflow_stage(node, nodes, current)
        new = dict(current)
        new[node.id] = window
        return new

    def _replace_overflow_stage(self, node: NodeSpec, nodes: dict[int, NodeSpec], current: Assignment) -> Assignment:
        """A newcomer too slow to stitch takes the layers of an overflow stage whose node has left,
        if it can hold them with that pipeline's cache (volunteers leave and others with similar
        machines join, so the overflow pipelines stay whole under churn); else it stays on standby."""
        model, kv = self.ctx.model, self.ctx.workload.kv_tokens_mean
        for pipe in self.plan.overflow:
            regions = {nodes[n].region for n, _, _ in pipe.stages if n in nodes}
            if regions != {node.region}:
                continue
            for k, (nid, start, end) in enumerate(pipe.stages):
                if nid in nodes:
                    continue
                need = model.weight_bytes(start, end) + model.kv_bytes(pipe.concurrency * kv, end - start)
                if need <= node.memory_bytes:
                    pipe.stages[k] = (node.id, start, end)
                    new = dict(current)
                    new[node.id] = (start, end)
                    return new
        return current

    def on_leave(self, node_id: int, nodes: dict[int, NodeSpec], current: Assignment) -> Assignment:
        new = {n: r for n, r in current.items() if n != node_id and n in nodes}
        # overflow pipelines do not count: routing keeps them apart from the planned ones
        overflow = self.plan.overflow_nodes if self.plan else set()
        planned = {n: r for n, r in new.items() if n not in overflow}
        if covers_all_layers(planned, self.ctx.model.num_layers):
            return new
        gap = self._uncovered(planned)
        filled = self._fill_gaps(gap, nodes, new)
        if filled is not None:
            return filled
        return self.allocate(nodes) or new

    def rebalance(self, nodes: dict[int, NodeSpec], current: Assignment, view: LoadView) -> Assignment | None:
        try:
            fresh = allocate(list(nodes.values()), self.ctx)
        except SwarmTooSmall:
            return None
        now_rate = self._intact_rate(current)
        moved = [n for n, r in fresh.assignment.items() if current.get(n) != r]
        moved_share = len(moved) / max(1, len(fresh.assignment))
        if moved_share > MAX_REPLAN_MOVES:
            return None  # a re-plan that reshuffles the swarm costs more in re-prefills than it saves
        reload_s = max((self.ctx.model.weight_bytes(*fresh.assignment[n]) for n in moved), default=0.0) / (RELOAD_GBS * 1e9)
        disrupted = sum(view.resident[n] for n in moved if n < len(view.resident))
        gain = (fresh.tok_s - now_rate) * REPLAN_HORIZON_S
        cost = (now_rate + fresh.tok_s) * reload_s * moved_share + disrupted * self.ctx.workload.output_tokens_mean
        if gain > cost and fresh.tok_s > 1.1 * now_rate:
            self.plan = fresh
            return dict(fresh.assignment)
        return None

    def _uncovered(self, assignment: Assignment) -> list[int]:
        covered = np.zeros(self.ctx.model.num_layers, dtype=bool)
        for s, e in assignment.values():
            covered[s:e] = True
        return [int(x) for x in np.flatnonzero(~covered)]

    def _fill_gaps(self, gap: list[int], nodes: dict[int, NodeSpec], assignment: Assignment) -> Assignment | None:
        """Move stitchers / idle nodes (never pipeline or overflow members) onto uncovered layers."""
        model = self.ctx.model
        kv = self.ctx.workload.kv_tokens_mean
        in_pipeline = ({s[0] for p in self.plan.pipelines for s in p.stages} | self.plan.overflow_nodes
                       if self.plan else set())
        spare = sorted((n for n in nodes.values() if n.id not in in_pipeline),
                       key=lambda n: -n.memory_bytes)
        new = dict(assignment)
        layers = list(gap)
        while layers:
            start = layers[0]
            end = start
            while end < model.num_layers and end in layers:
                end += 1
            for node in spare:
                n = end - start
                while n > 0 and model.weight_bytes(start, start + n) + model.kv_bytes(kv, n) > node.memory_bytes:
                    n -= 1
                if n > 0:
                    new[node.id] = (start, start + n)
                    spare.remove(node)
                    layers = [x for x in layers if not start <= x < start + n]
                    break
            else:
                return None
        return new

    def _layer_rates(self, nodes: dict[int, NodeSpec], assignment: Assignment) -> np.ndarray:
        """Tokens/s each layer could pass, summed over the nodes that hold it (rough)."""
        model, pm = self.ctx.model, PipelineModel(self.ctx)
        rates = np.zeros(model.num_layers)
        for nid, (s, e) in assignment.items():
            node = nodes.get(nid)
            if node is None:
                continue
            free = node.memory_bytes - model.weight_bytes(s, e)
            conc = max(0.0, free / model.kv_bytes(pm.kv_tokens, e - s))
            t = (e - s) * layer_decode_time(node, model, 1.0, pm.context) + STEP_OVERHEAD_S
            share = (e - s) / model.num_layers
            rates[s:e] += conc * share / t
        return rates

    def _intact_rate(self, assignment: Assignment) -> float:
        """Predicted tokens/s of the planned pipelines that are still whole (same estimator as a re-plan)."""
        if self.plan is None:
            return 0.0
        return sum(p.tok_s for p in self.plan.pipelines
                   if all(assignment.get(n) == (s, e) for n, s, e in p.stages))

    # phase 2 -----------------------------------------------------------------------------
    def _index_spans(self, nodes: dict[int, NodeSpec], current: Assignment, version: int) -> None:
        """Static per-span arrays, rebuilt only when the assignment changes."""
        model = self.ctx.model
        rows = [(n, s, e, self._region_index[nodes[n].region]) for n, (s, e) in current.items() if n in nodes]
        self._spans = rows
        self._spans_key = version
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        self._ids = ids
        self._start = np.array([r[1] for r in rows], dtype=np.int64)
        self._end = np.array([r[2] for r in rows], dtype=np.int64)
        self._layers = (self._end - self._start).astype(float)
        region = np.array([r[3] for r in rows], dtype=np.int64)
        self._group = (self._start * (model.num_layers + 1) + self._end) * len(self._regions) + region
        self._bw = np.array([nodes[n].bytes_per_s for n in ids]) if rows else np.zeros(0)
        self._flops = np.array([nodes[n].flops_per_s for n in ids]) if rows else np.zeros(0)
        self._uplink = np.array([nodes[n].uplink_mbps * 1e6 / 8 for n in ids]) if rows else np.zeros(0)
        self._chunk = np.array([prefill_chunk_tokens(nodes[n].flops_per_s, nodes[n].bytes_per_s, model) for n in ids],
                               dtype=float)
        overflow = self.plan.overflow_nodes if self.plan else set()
        self._overflow = np.array([n in overflow for n in ids], dtype=bool)
        # an overflow pipeline holds at most the sessions it was planned for: its nodes' cache
        # outlasts their FLOP/s (an M1/M2 Max chain of the volunteer swarm has room for 418 but
        # prefills and decodes about 100-125 (by its shape) within allocation.OVERFLOW_COMPUTE_SHARE of its FLOP/s;
        # filled to its cache, its prompt queue grew without bound and it held 95% of the late
        # first tokens)
        planned_sessions = {n: p.concurrency for p in (self.plan.overflow if self.plan else []) for n, _, _ in p.stages}
        self._session_cap = np.array([planned_sessions.get(n, np.inf) for n in ids], dtype=float)
        self._session_cap_of = planned_sessions
        self._kv_cap = np.array([nodes[n].memory_bytes - model.weight_bytes(s, e) for n, s, e, _ in rows])

    def replacement(self, chain: list[Hop], lost: int, kv_tokens: int, nodes: dict[int, NodeSpec],
                    current: Assignment, view: LoadView) -> list[Hop] | None:
        """One node that holds all of the lost hop's layers, in the chain's region, ready, with cache
        room (and, on an overflow pipeline, under its session cap): the one holding the fewest
        sessions. Sibling pipelines hold the same spans, so one is usually at hand."""
        if view.assignment_version != self._spans_key:
            self._index_spans(nodes, current, view.assignment_version)
        hop = chain[lost]
        on_chain = {h.node for h in chain}
        region = next((nodes[h.node].region for h in chain if h.node in nodes), None)
        need = self.ctx.model.kv_bytes(kv_tokens, hop.end - hop.start)
        best, best_key = None, None
        for n, (s, e) in current.items():
            if (n in on_chain or n not in nodes or not view.ready[n] or s > hop.start or e < hop.end
                    or view.kv_free[n] < need or view.resident[n] >= self._session_cap_of.get(n, np.inf)):
                continue
            if region is not None and nodes[n].region != region:
                continue
            key = (view.resident[n], -view.kv_free[n], n)
            if best_key is None or key < best_key:
                best, best_key = n, key
        return None if best is None else [Hop(best, hop.start, hop.end)]

    def route(self, request: RouteRequest, nodes: dict[int, NodeSpec], current: Assignment,
              view: LoadView) -> list[Hop] | None:
        """Cheapest chain by predicted seconds per output token, under the live load.

        Per node: its layers at the batch it would run with this request (decode is bandwidth-
        bound, so a busier node costs more only through KV reads and compute), half a step of
        waiting, the hidden-state upload, and the prompt's prefill amortised over the answer.
        Nodes without free KV cache for the request's whole length are not eligible.

        Chains stay within one region whenever some region holds a whole chain. A chain that
        mixes regions holds every stage's KV cache for its slow cycle, so on the fast stages that
        cache serves several times fewer tokens than on a chain within their region; when every
        such chain is out of cache room the request waits (None) instead of taking a mixed chain.
        """
        model, wl = self.ctx.model, self.ctx.workload
        if view.assignment_version != self._spans_key:
            self._index_spans(nodes, current, view.assignment_version)
        if not self._spans:
            return None
        ids = self._ids
        # whole lists at once, then the spans' rows: a generator over them costs ten times more
        ready = np.asarray(view.ready, dtype=bool)[ids]
        kv_free = np.asarray(view.kv_free, dtype=float)[ids]
        resident = np.asarray(view.resident, dtype=float)[ids]
        util = np.asarray(view.utilization, dtype=float)[ids]

        layers = self._layers
        need = model.kv_bytes(request.kv_tokens, 1) * layers
        W, F, k = model.layer_bytes, model.flops_per_token_layer, model.kv_bytes_per_token_layer
        context = wl.decode_context_mean
        batch = 1.0 + resident * layers / model.num_layers
        t_layer = np.maximum((W + batch * context * k) / self._bw, batch * F / self._flops)
        step = layers * t_layer + STEP_OVERHEAD_S
        # every resident request needs one step's share per token: a node whose step over all of
        # them (plus this one) approaches the token-time target is saturated, whatever it did lately
        full = resident + 1.0
        step_all = layers * np.maximum((W + full * context * k) / self._bw, full * F / self._flops) + STEP_OVERHEAD_S
        reserved = 1.0 - kv_free / np.maximum(self._kv_cap, 1.0)
        util = np.where(reserved > BUSY_FROM_RESERVED, util, 0.0)
        load = np.maximum(util, step_all / self._token_time_target)
        slowdown = 1.0 / (1.0 - np.minimum(load, MAX_UTILIZATION))  # queueing: waits grow as 1/(1-u)
        outputs = max(1.0, request.kv_tokens - request.prompt_tokens)
        p = request.prompt_tokens
        # prompt time counts against the TTFT objective: weigh it against per-token time by the ratio
        # of the two SLOs (and never less than its share of the answer's length)
        prefill_weight = max(1.0 / outputs, self.ctx.slo.tpot_p50_s / self.ctx.slo.ttft_p99_s)
        prefill = (np.maximum(layers * (W + p * k) / self._bw, layers * p * F / self._flops)
                   + model.hidden_state_bytes(p) / self._uplink) * prefill_weight
        t_layer = t_layer * slowdown
        fixed = (STEP_OVERHEAD_S + 0.5 * step + prefill) * slowdown + model.hidden_state_bytes(1) / self._uplink
        full = fixed + layers * t_layer
        # a hop whose bare prefill of this prompt takes a large share of the TTFT objective would
        # blow the tail however idle it is: a last resort only, since a request with no route at all
        # waits at the head of the queue and holds up every request behind it
        bare_prefill = prefill / prefill_weight
        chunk_share = np.minimum(1.0, self._chunk / p)
        slow_penalty = np.where(bare_prefill > PREFILL_HOP_SHARE * self.ctx.slo.ttft_p99_s, self.ctx.slo.ttft_p99_s, 0.0)
        fixed = fixed + slow_penalty
        full = full + slow_penalty
        # queued prompts ahead of this one: their prefill and upload, at this node's speeds
        if len(self._prompt_load) <= ids.max():
            grow = np.zeros(ids.max() + 1 - len(self._prompt_load))
            self._prompt_load = np.concatenate([self._prompt_load, grow])
            self._prompt_work = np.concatenate([self._prompt_work, grow])
        elapsed = view.now - self._prompt_load_t
        self._prompt_load *= np.exp(-elapsed / PROMPT_LOAD_DECAY_S)
        self._prompt_work = np.maximum(0.0, self._prompt_work - elapsed)
        self._prompt_load_t = view.now
        queued = self._prompt_load[ids]
        backlog = queued * (layers * F / self._flops + model.hidden_state_bytes(1) / self._uplink)
        backlog = np.where(self._overflow, np.maximum(backlog, self._prompt_work[ids]), backlog)
        if len(view.prompt_queue_s):
            # and the queue the node itself reports, which sees the prompts other origins sent and
            # how fast they really go between decode steps: near capacity a fast region's prompts
            # outrun its FLOP/s (the heterogeneous swarm's EU A100s), and the fading memory above
            # caps at ~2 s of work while the queue grows past the TTFT objective
            reported = np.asarray(view.prompt_queue_s, dtype=float)[ids]
            backlog = np.maximum(backlog, reported)
        # nodes working through a long prompt queue take new prompts only when nothing calmer has room
        # (PROMPT_QUEUE_SHARE); both estimates, since either may undercount a queue
        calm = ~self._overflow.any() | (np.maximum(backlog, self._prompt_work[ids])
                                        <= PROMPT_QUEUE_SHARE * self.ctx.slo.ttft_p99_s)
        fixed = fixed + backlog * prefill_weight
        full = full + backlog * prefill_weight
        long_prompt = outputs * self.ctx.slo.tpot_p50_s / self.ctx.slo.ttft_p99_s

        def search(eligible: np.ndarray, hop_cost: list[list[float]]) -> list[tuple[int, int, int]] | None:
            keep = cheapest_per_group(self._group, np.where(eligible, full, np.inf))
            if keep.size == 0:
                return None
            spans = [self._spans[i] for i in keep]
            per_layer = t_layer[keep].tolist()
            chain = cheapest_ring(model.num_layers, spans, per_layer, fixed[keep].tolist(), hop_cost)
            if chain is None:
                return None
            # the prompt's time to first token along the chain (its chunks pipelined over the
            # stages, behind their queued prompts); if it eats most of the TTFT objective, search
            # again with prompt time weighing as much as a whole answer
            at = {s[0]: k for s, k in zip(spans, keep.tolist())}
            hops = [at[n] for n, _, _ in chain]
            ttft = pipelined_time(bare_prefill[hops].tolist(), chunk_share[hops].tolist()) + backlog[hops].sum()
            if ttft > TTFT_ROUTE_SHARE * self.ctx.slo.ttft_p99_s:
                heavy = fixed[keep] + (bare_prefill[keep] + backlog[keep]) * long_prompt
                chain = cheapest_ring(model.num_layers, spans, per_layer, heavy.tolist(), hop_cost) or chain
            return chain

        has_room = ready & (kv_free >= need) & (resident < self._session_cap)
        planned = has_room & ~self._overflow
        overflow = has_room & self._overflow
        # planned pipelines first; the overflow pipelines answer, slower and on their own, when the
        # planned ones are full or busy with prompts; of two busy ones, the planned one
        chain = search(planned & calm, self._within_region)
        if chain is None and overflow.any():
            chain = search(overflow & calm, self._within_region)
        if chain is None and not calm.all():
            chain = search(planned, self._within_region)
        if chain is None and overflow.any() and not calm.all():
            chain = search(overflow, self._within_region)
        if chain is None:
            # out of cache room within every region: wait (no route now; the request is asked for
            # again as caches free) rather than cross regions, which only a swarm without any
            # region that holds a whole chain has to do
            if search(ready & (self._kv_cap >= need), self._within_region) is not None:
                return None
            chain = search(has_room, self._half_rtt)
        if chain is None:
            return None
        upload = model.hidden_state_bytes(request.prompt_tokens)
        for n, start, end in chain:
            self._prompt_load[n] += request.prompt_tokens
            node = nodes[n]
            # FLOPs alone, not perf.prefill_time's roofline: the two differ only for prompts shorter
            # than FLOP/s / bandwidth (at most 80 tokens on the volunteer swarm's overflow cards), a few ms
            self._prompt_work[n] += request.prompt_tokens * (end - start) * F / node.flops_per_s + transfer_time(node, upload)
        return [Hop(n, s, e) for n, s, e in chain]
