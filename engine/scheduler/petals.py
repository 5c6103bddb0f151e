"""Baseline: Petals as publicly described (BigScience, 2023).

Each server takes as many blocks as fit beside an attention cache for 4096 tokens per block and
places them where the swarm's per-block throughput is lowest (the window whose sorted
throughputs are lexicographically smallest), one server at a time in join order. A server's
throughput is min(network rps, compute rps / ((blocks + 1) / 2)). Periodically a server moves
if that raises the swarm's minimum throughput by more than 1 / 0.75. Clients route with
Dijkstra over (server, block): RTT/2 + per-block time, +10 s for servers short of cache. When a
server dies the client, which relays every hop and keeps what it sent to each server, replays that
server's inputs to the cheapest servers for its blocks; when none has room it re-routes the whole
request (replaying its history).
"""

from __future__ import annotations

import numpy as np

from .perf import layer_decode_time
from .policy import Assignment, Hop, LoadView, Policy, RouteRequest
from .routing import cheapest_chain, cheapest_per_group, cheapest_ring
from .topology import NodeSpec

CACHE_TOKENS = 4096
BALANCE_QUALITY = 0.75
CACHE_PENALTY_S = 10.0


def best_start(throughputs: np.ndarray, length: int) -> int:
    """Start of the window whose sorted throughputs are lexicographically smallest."""
    windows = np.sort(np.lib.stride_tricks.sliding_window_view(throughputs, length), axis=1)
    order = np.lexsort(windows.T[::-1])
    return int(order[0])


class PetalsPolicy(Policy):
    name = "petals"
    reroutes_on_failure = True
    replays_from = "client"

    def __init__(self, ctx):
        super().__init__(ctx)
        _, rtt = ctx.rtt.matrix()
        self._half_rtt = [[x / 2 for x in row] for row in rtt]
        self._region_index = {r: i for i, r in enumerate(ctx.rtt.regions)}
        self._spans_key = None
        self._spans: list[tuple[int, int, int, int]] = []

    def num_blocks(self, node: NodeSpec) -> int:
        model = self.ctx.model
        per_block = model.layer_bytes + model.kv_bytes(CACHE_TOKENS, 1)
        return max(0, min(model.num_layers, int(node.memory_bytes // per_block)))

    def block_rps(self, node: NodeSpec) -> float:
        """Tokens/s one block runs on this server (single-request decode, as Petals measures)."""
        return 1.0 / layer_decode_time(node, self.ctx.model, 1, self.ctx.workload.decode_context_mean)

    def throughput(self, node: NodeSpec, blocks: int) -> float:
        network_rps = node.uplink_mbps * 1e6 / (8 * self.ctx.model.hidden_state_bytes(1))
        return min(network_rps, self.block_rps(node) / ((blocks + 1) / 2))

    def _fits(self, node: NodeSpec, start: int, end: int) -> bool:
        return self.ctx.model.weight_bytes(start, end) <= node.memory_bytes

    def _place(self, node: NodeSpec, throughputs: np.ndarray) -> tuple[int, int] | None:
        blocks = self.num_blocks(node)
        while blocks > 0:
            start = best_start(throughputs, blocks)
            if self._fits(node, start, start + blocks):
                return start, start + blocks
            blocks -= 1  # embedding / lm_head at the ends of the model took the room
        return None

    def _throughputs(self, nodes: dict[int, NodeSpec], assignment: Assignment) -> np.ndarray:
        t = np.zeros(self.ctx.model.num_layers)
        for nid, (s, e) in assignment.items():
            if nid in nodes:
                t[s:e] += self.throughput(nodes[nid], e - s)
        return t

    def allocate(self, nodes: dict[int, NodeSpec]) -> Assignment:
        assignment: Assignment = {}
        throughputs = np.zeros(self.ctx.model.num_layers)
        for nid in sorted(nodes):
            span = self._place(nodes[nid], throughputs)
            if span:
                assignment[nid] = span
                throughputs[span[0]:span[1]] += self.throughput(nodes[nid], span[1] - span[0])
        return assignment

    def on_join(self, node: NodeSpec, nodes: dict[int, NodeSpec], current: Assignment) -> Assignment:
        span = self._place(node, self._throughputs(nodes, current))
        if span is None:
            return current
        return {**current, node.id: span}

    def rebalance(self, nodes: dict[int, NodeSpec], current: Assignment, view: LoadView) -> Assignment | None:
        """Each server checks whether moving would lift the swarm's minimum throughput enough."""
        assignment = dict(current)
        throughputs = self._throughputs(nodes, assignment)
        moved = False
        for nid in sorted(assignment):
            if nid not in nodes:
                continue
            s, e = assignment[nid]
            own = self.throughput(nodes[nid], e - s)
            initial = throughputs.min()
            trial = throughputs.copy()
            trial[s:e] -= own
            new_start = best_start(trial, e - s)
            if new_start == s or not self._fits(nodes[nid], new_start, new_start + e - s):
                continue
            trial[new_start:new_start + e - s] += own
            if initial < BALANCE_QUALITY * trial.min():
                assignment[nid] = (new_start, new_start + e - s)
                throughputs = trial
                moved = True
        return assignment if moved else None

    def replacement(self, chain: list[Hop], lost: int, kv_tokens: int, nodes: dict[int, NodeSpec],
                    current: Assignment, view: LoadView) -> list[Hop] | None:
        """The client's replacement for a dead server: the cheapest servers for its blocks."""
        hop = chain[lost]
        on_chain = {h.node for h in chain}
        spans, per_layer = [], []
        for n, (s, e) in current.items():
            if n in on_chain or n not in nodes or not view.ready[n] or e <= hop.start or s >= hop.end:
                continue
            a, b = max(s, hop.start), min(e, hop.end)
            if view.kv_free[n] < self.ctx.model.kv_bytes(kv_tokens, b - a):
                continue
            spans.append((n, a - hop.start, b - hop.start, self._region_index[nodes[n].region]))
            per_layer.append(1.0 / self.block_rps(nodes[n]))
        found = spans and cheapest_chain(hop.end - hop.start, spans, per_layer, [0.0] * len(spans), self._half_rtt)
        if not found:
            return None
        return [Hop(n, a + hop.start, b + hop.start) for n, a, b in found[0]]

    def route(self, request: RouteRequest, nodes: dict[int, NodeSpec], current: Assignment,
              view: LoadView) -> list[Hop] | None:
        model = self.ctx.model
        if view.assignment_version != self._spans_key:
            self._spans_key = view.assignment_version
            self._spans = [(n, s, e, self._region_index[nodes[n].region]) for n, (s, e) in current.items()
                           if n in nodes]
            self._ids = np.array([sp[0] for sp in self._spans], dtype=np.int64)
            self._layers = np.array([sp[2] - sp[1] for sp in self._spans], dtype=float)
            self._block_time = np.array([1.0 / self.block_rps(nodes[n]) for n in self._ids])
            regions = len(self._half_rtt)
            self._group = np.array([(sp[1] * (model.num_layers + 1) + sp[2]) * regions + sp[3] for sp in self._spans],
                                   dtype=np.int64)
        kv_per_layer = model.kv_bytes(request.kv_tokens, 1)
        spans = self._spans
        ids = self._ids
        ready = np.fromiter((view.ready[i] for i in ids), dtype=bool, count=len(ids))
        kv_free = np.fromiter((view.kv_free[i] for i in ids), dtype=float, count=len(ids))
        fixed = np.where(kv_free < kv_per_layer * self._layers, CACHE_PENALTY_S, 0.0)
        full = fixed + self._block_time * self._layers
        full[~ready] = np.inf
        keep = cheapest_per_group(self._group, full)  # same blocks, same region: only the cheapest matters
        if keep.size == 0:
            return None
        chain = cheapest_ring(model.num_layers, [spans[i] for i in keep], self._block_time[keep].tolist(),
                              fixed[keep].tolist(), self._half_rtt)
        if chain is None:
            return None
        return [Hop(n, s, e) for n, s, e in chain]
