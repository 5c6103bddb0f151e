"""Phase 2 core: cheapest chain of layer spans from boundary 0 to boundary L.

A span (node, start, end) may be entered at any boundary inside it and left at any later one,
so a request can stitch pieces of different replicas together. Cost of using node k for layers
i..j = fixed[k] + (j - i) * per_layer[k] + half the RTT from the previous node's region. The
state is (boundary, region of the last node), so RTT is exact with few regions and the search
stays linear in the total span length (about a millisecond at 200 nodes).
"""

from __future__ import annotations

import numpy as np

INF = float("inf")


def cheapest_ring(num_layers: int, spans: list[tuple[int, int, int, int]], per_layer: list[float],
                  fixed: list[float], half_rtt: list[list[float]]) -> list[tuple[int, int, int]] | None:
    """Cheapest chain counting the hop from the last stage back to the first (the ring closes
    every decode step): one search per region the chain may start in."""
    starts = sorted({sp[3] for sp in spans if sp[1] == 0})
    best, best_cost = None, INF
    for region in starts:
        # only regions a chain can reach from its first stage (all of them, unless hops between
        # regions are ruled out): the others' spans, and the others' rows of the search, would
        # only slow it down
        reach = sorted(reachable(region, half_rtt))
        local = {g: j for j, g in enumerate(reach)}
        allowed = [k for k, sp in enumerate(spans) if sp[3] in local and (sp[1] > 0 or sp[3] == region)]
        found = cheapest_chain(num_layers, [(*spans[k][:3], local[spans[k][3]]) for k in allowed],
                               [per_layer[k] for k in allowed], [fixed[k] for k in allowed],
                               [[half_rtt[a][b] for b in reach] for a in reach], close_to=local[region])
        if found is not None and found[1] < best_cost:
            best, best_cost = found[0], found[1]
    return best


def reachable(region: int, half_rtt: list[list[float]]) -> set[int]:
    seen, todo = {region}, [region]
    while todo:
        r = todo.pop()
        for g, cost in enumerate(half_rtt[r]):
            if cost < INF and g not in seen:
                seen.add(g)
                todo.append(g)
    return seen


def cheapest_chain(num_layers: int, spans: list[tuple[int, int, int, int]], per_layer: list[float],
                   fixed: list[float], half_rtt: list[list[float]],
                   close_to: int | None = None) -> tuple[list[tuple[int, int, int]], float] | None:
    """spans[k] = (node, start, end, region index). Returns ([(node, start, end), ...], cost) or None.
    With close_to, the way back from the last stage to that region is part of the cost."""
    regions = len(half_rtt)
    dist = [[INF] * regions for _ in range(num_layers + 1)]
    back: list[list[tuple | None]] = [[None] * regions for _ in range(num_layers + 1)]
    by_start: list[list[int]] = [[] for _ in range(num_layers)]
    for k, (_, start, end, _) in enumerate(spans):
        if start < end:
            by_start[start].append(k)
    best = [INF] * len(spans)
    best_from: list[tuple[int, int] | None] = [None] * len(spans)
    active: list[int] = []
    for i in range(num_layers):
        if i == 0:
            enter, enter_from = [0.0] * regions, [-1] * regions
        else:
            here = dist[i]
            enter, enter_from = [], []
            for g in range(regions):
                bv, br = INF, -1
                for r in range(regions):
                    v = here[r] + half_rtt[r][g]
                    if v < bv:
                        bv, br = v, r
                enter.append(bv)
                enter_from.append(br)
        if by_start[i]:
            active.extend(by_start[i])
        active = [k for k in active if spans[k][2] > i]
        nxt, nxt_back = dist[i + 1], back[i + 1]
        for k in active:
            g = spans[k][3]
            p = per_layer[k]
            e = enter[g]
            if e < INF:
                c = e + fixed[k] - i * p
                if c < best[k]:
                    best[k] = c
                    best_from[k] = (i, enter_from[g])
            if best[k] < INF:
                v = best[k] + (i + 1) * p
                if v < nxt[g]:
                    nxt[g] = v
                    nxt_back[g] = (k, best_from[k])
    last = list(dist[num_layers])
    if close_to is not None:
        last = [v + half_rtt[r][close_to] for r, v in enumerate(last)]
    region = min(range(regions), key=lambda r: last[r])
    cost = last[region]
    if cost == INF:
        return None
    chain = []
    boundary = num_layers
    while boundary > 0:
        k, (entry, prev_region) = back[boundary][region]
        chain.append((spans[k][0], entry, boundary))
        boundary, region = entry, prev_region
    chain.reverse()
    return chain, cost


def cheapest_per_group(groups: "np.ndarray", cost: "np.ndarray") -> "np.ndarray":
    """Indices of the cheapest finite-cost member of each group (spans with equal start, end, region).

    Spans of the same layers in the same region are interchangeable for the chain search, so only
    the best of each needs to enter it; this keeps routing fast in swarms of thousands.
    """
    finite = np.flatnonzero(np.isfinite(cost))
    if finite.size == 0:
        return finite
    order = finite[np.lexsort((cost[finite], groups[finite]))]
    g = groups[order]
    first = np.ones(len(order), dtype=bool)
    first[1:] = g[1:] != g[:-1]
    return order[first]
