"""Baseline: exo (v1) as publicly described.

Placement picks the smallest cycle of devices whose memory holds the model and splits layers in
proportion to each device's memory; compute speed and round trips are never inputs. All
requests go round that one ring. A lost device breaks the ring: requests on it fail and exo
places the model again on the devices that are left.
"""

from __future__ import annotations

from .policy import Assignment, Hop, LoadView, Policy, RouteRequest
from .topology import NodeSpec


def split_by_memory(memories: list[float], num_layers: int) -> list[int]:
    """Layers in proportion to memory, rounded by largest remainder."""
    total = sum(memories)
    real = [num_layers * m / total for m in memories]
    counts = [int(x) for x in real]
    for k in sorted(range(len(real)), key=lambda k: counts[k] - real[k])[: num_layers - sum(counts)]:
        counts[k] += 1
    return counts


class ExoPolicy(Policy):
    name = "exo"
    reroutes_on_failure = False

    def allocate(self, nodes: dict[int, NodeSpec]) -> Assignment:
        model = self.ctx.model
        ranked = sorted(nodes.values(), key=lambda n: (-n.memory_bytes, n.id))
        for size in range(1, len(ranked) + 1):
            ring = ranked[:size]
            if sum(n.memory_bytes for n in ring) < model.total_weight_bytes:
                continue
            counts = split_by_memory([n.memory_bytes for n in ring], model.num_layers)
            assignment, start = {}, 0
            for node, n in zip(ring, counts):
                if n:
                    assignment[node.id] = (start, start + n)
                    start += n
            if all(model.weight_bytes(s, e) <= nodes[i].memory_bytes for i, (s, e) in assignment.items()):
                return assignment
        return {}

    def on_leave(self, node_id: int, nodes: dict[int, NodeSpec], current: Assignment) -> Assignment:
        if node_id not in current:
            return current
        return self.allocate(nodes)

    def route(self, request: RouteRequest, nodes: dict[int, NodeSpec], current: Assignment,
              view: LoadView) -> list[Hop] | None:
        ring = sorted(current.items(), key=lambda item: item[1][0])
        if not ring or not all(view.ready[n] for n, _ in ring):
            return None
        return [Hop(n, s, e) for n, (s, e) in ring]
