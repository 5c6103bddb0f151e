"""Baseline: Parallax (arXiv 2509.26182, code v0.1.2) as publicly described.

Phase 1: a node's capacity is the layers that fit in 65% of its memory; nodes sorted by capacity;
a dynamic programme picks the number of pipelines k maximising k^2 / (total stages), each
pipeline a run of consecutive nodes in that order holding all layers; inside a pipeline layers
are split by water-filling in proportion to fp16 TFLOP/s. RTT and memory bandwidth do not enter.
Left-over nodes stay on standby. Phase 2 (default): round-robin over the fixed pipelines.
A leave discards the whole pipeline (its requests fail); standby nodes and the survivors form new
pipelines when they can.
"""

from __future__ import annotations

import itertools

from .allocation import split_layers
from .policy import Assignment, Hop, LoadView, Policy, RouteRequest
from .topology import NodeSpec

WEIGHT_SHARE = 0.65


def capacity_layers(node: NodeSpec, layer_bytes: float, num_layers: int) -> int:
    return min(num_layers, int(WEIGHT_SHARE * node.memory_bytes // layer_bytes))


def choose_pipelines(caps: list[int], num_layers: int) -> list[tuple[int, int]]:
    """Segments [j, i) of the capacity-sorted nodes forming the k pipelines maximising k^2/stages.

    dp[k][i] = fewest stages for k complete pipelines among the first i nodes; a pipeline ending
    at node i-1 is best as short as possible (capacities are sorted, dp is non-increasing in i).
    """
    n = len(caps)
    prefix = [0] + list(itertools.accumulate(caps))
    shortest_start = [-1] * (n + 1)  # largest j with prefix[i] - prefix[j] >= L
    j = 0
    for i in range(1, n + 1):
        while j < i and prefix[i] - prefix[j + 1] >= num_layers:
            j += 1
        shortest_start[i] = j if prefix[i] - prefix[j] >= num_layers else -1
    INF = float("inf")
    dp = [[0] * (n + 1)]
    choice = [[None] * (n + 1)]
    best_k, best_score = 0, 0.0
    k = 0
    while True:
        k += 1
        row, pick = [INF] * (n + 1), [None] * (n + 1)
        prev = dp[k - 1]
        for i in range(1, n + 1):
            row[i], pick[i] = row[i - 1], pick[i - 1]
            j = shortest_start[i]
            if j >= 0 and prev[j] + (i - j) < row[i]:
                row[i], pick[i] = prev[j] + (i - j), (j, i)
        if row[n] == INF:
            break
        dp.append(row)
        choice.append(pick)
        score = k * k / row[n]
        if score > best_score:
            best_k, best_score = k, score
    segments = []
    i = n
    for k in range(best_k, 0, -1):
        j, end = choice[k][i]
        segments.append((j, end))
        i = j
    return segments[::-1]


def water_fill(tflops: list[float], caps: list[int], num_layers: int) -> list[int] | None:
    """Layers_i = min(c_i, lambda * F_i) with sum = L."""
    return split_layers([1.0 / f for f in tflops], caps, num_layers)


class ParallaxPolicy(Policy):
    name = "parallax"
    reroutes_on_failure = False

    def __init__(self, ctx):
        super().__init__(ctx)
        self.pipelines: list[list[int]] = []
        self._next = 0
        self._picked: dict[int, int] = {}

    def _form(self, pool: list[NodeSpec]) -> tuple[list[list[int]], Assignment]:
        model = self.ctx.model
        ranked = sorted(pool, key=lambda n: (-capacity_layers(n, model.layer_bytes, model.num_layers), n.id))
        caps = [capacity_layers(n, model.layer_bytes, model.num_layers) for n in ranked]
        pipelines, assignment = [], {}
        for j, i in choose_pipelines(caps, model.num_layers):
            members = ranked[j:i]
            counts = water_fill([m.tflops for m in members], caps[j:i], model.num_layers)
            if counts is None:
                continue
            chain, start = [], 0
            for node, n in zip(members, counts):
                if n:
                    assignment[node.id] = (start, start + n)
                    chain.append(node.id)
                    start += n
            ok = all(model.weight_bytes(*assignment[x]) <= self._nodes[x].memory_bytes for x in chain)
            if ok:
                pipelines.append(chain)
            else:
                for x in chain:
                    del assignment[x]
        return pipelines, assignment

    def allocate(self, nodes: dict[int, NodeSpec]) -> Assignment:
        self._nodes = nodes
        self.pipelines, assignment = self._form(list(nodes.values()))
        return assignment

    def _regroup(self, nodes: dict[int, NodeSpec], current: Assignment) -> Assignment:
        self._nodes = nodes
        serving = {x for p in self.pipelines for x in p}
        standby = [n for i, n in nodes.items() if i not in serving]
        new_pipes, new_assignment = self._form(standby)
        self.pipelines += new_pipes
        kept = {x: current[x] for p in self.pipelines for x in p if x in current}
        kept.update(new_assignment)
        return kept

    def on_join(self, node: NodeSpec, nodes: dict[int, NodeSpec], current: Assignment) -> Assignment:
        return self._regroup(nodes, current)

    def on_leave(self, node_id: int, nodes: dict[int, NodeSpec], current: Assignment) -> Assignment:
        self.pipelines = [p for p in self.pipelines if node_id not in p]
        return self._regroup(nodes, current)

    def route(self, request: RouteRequest, nodes: dict[int, NodeSpec], current: Assignment,
              view: LoadView) -> list[Hop] | None:
        if request.id not in self._picked:
            if not self.pipelines:
                return None
            self._picked[request.id] = self._next % len(self.pipelines)
            self._next += 1
        index = self._picked[request.id]
        if index >= len(self.pipelines):
            self._picked[request.id] = index = self._next % len(self.pipelines) if self.pipelines else 0
            if not self.pipelines:
                return None
        chain = self.pipelines[index]
        if not all(view.ready[x] and x in current for x in chain):
            return None
        return [Hop(x, *current[x]) for x in chain]
