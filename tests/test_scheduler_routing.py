"""Phase 2: the chain search on worked examples, and its speed at 200 nodes."""

from __future__ import annotations

import random
import statistics
import time

from engine.scheduler.policy import RouteRequest, make_policy
from engine.scheduler.routing import cheapest_chain, cheapest_ring, reachable
from tests.scheduler_fixtures import LLAMA_70B, context, idle_view, node

HALF_RTT_ONE_REGION = [[0.0]]


def test_stitches_the_fast_parts_of_two_replicas():
    # replica A: fast on 0..4, slow on 4..8; replica B: the reverse. Best: A 0..4 then B 4..8.
    spans = [(1, 0, 8, 0), (2, 0, 8, 0)]
    chain, _ = cheapest_chain(8, spans, [1.0, 1.0], [0.0, 0.0], HALF_RTT_ONE_REGION)
    assert len(chain) == 1  # equal nodes: one hop is cheapest
    spans = [(1, 0, 4, 0), (1, 4, 8, 0), (2, 0, 4, 0), (2, 4, 8, 0)]
    # node ids repeat per span on purpose: a span is (node, start, end, region)
    chain, cost = cheapest_chain(8, spans, [1.0, 5.0, 5.0, 1.0], [0.1, 0.1, 0.1, 0.1], HALF_RTT_ONE_REGION)
    assert chain == [(1, 0, 4), (2, 4, 8)] and abs(cost - 8.2) < 1e-9


def test_a_ring_search_skips_only_regions_its_first_stage_cannot_reach():
    inf = float("inf")
    apart = [[0.0, inf, inf], [inf, 0.0, inf], [inf, inf, 0.0]]
    relay = [[0.0, 0.02, inf], [0.02, 0.0, 0.03], [inf, 0.03, 0.0]]  # 0 reaches 2 through 1
    assert reachable(0, apart) == {0} and reachable(0, relay) == {0, 1, 2}
    # region 0 holds only the first half, region 2 the whole model: with hops between regions
    # ruled out, the chain lies in region 2; with them allowed, region 0's fast half starts it
    spans = [(1, 0, 4, 0), (2, 0, 8, 2), (3, 4, 8, 2)]
    per_layer, fixed = [0.1, 1.0, 0.1], [0.5, 0.5, 0.5]
    assert cheapest_ring(8, spans, per_layer, fixed, apart) == [(2, 0, 4), (3, 4, 8)]
    near = [[0.0 if r == g else 0.02 for g in range(3)] for r in range(3)]
    assert cheapest_ring(8, spans, per_layer, fixed, near) == [(1, 0, 4), (3, 4, 8)]


def test_may_enter_and_leave_a_span_at_any_layer():
    # node 1 holds 0..6 but is slow after nothing; node 2 holds 3..8 and is faster: leave node 1 at 3
    spans = [(1, 0, 6, 0), (2, 3, 8, 0)]
    chain, cost = cheapest_chain(8, spans, [2.0, 1.0], [0.0, 0.0], HALF_RTT_ONE_REGION)
    assert chain == [(1, 0, 3), (2, 3, 8)] and cost == 11.0


def test_round_trips_and_the_way_back_count():
    # two regions 100 ms apart; a faster node far away is not worth two crossings per token
    half = [[0.001, 0.05], [0.05, 0.001]]
    spans = [(1, 0, 4, 0), (2, 4, 8, 0), (3, 4, 8, 1)]
    per_layer = [0.01, 0.015, 0.0001]
    chain = cheapest_ring(8, spans, per_layer, [0.0, 0.0, 0.0], half)
    assert chain == [(1, 0, 4), (2, 4, 8)]
    # without the way back the far node looks better (0.05 + 0.0004 < 0.001 + 0.06)
    one_way, _ = cheapest_chain(8, spans, per_layer, [0.0, 0.0, 0.0], half)
    assert one_way == [(1, 0, 4), (3, 4, 8)]


def test_no_chain_when_a_layer_is_uncovered():
    assert cheapest_chain(8, [(1, 0, 4, 0), (2, 5, 8, 0)], [1, 1], [0, 0], HALF_RTT_ONE_REGION) is None


def test_potluck_routing_takes_about_a_millisecond_at_200_nodes():
    rng = random.Random(0)
    regions = "abc"
    nodes = {i: node(i, rng.choice([10, 22, 22, 44, 76]), rng.choice([25, 60, 150, 700]),
                     rng.choice([330, 900, 1800, 3000]), regions[i % 3], rng.choice([100, 300, 1000]))
             for i in range(200)}
    policy = make_policy("potluck", context(LLAMA_70B))
    assignment = policy.allocate(nodes)
    view = idle_view(nodes, assignment, LLAMA_70B)
    times = []
    for r in range(200):
        for n in assignment:
            view.resident[n] = rng.randrange(0, 50)
            view.utilization[n] = rng.random() * 0.9
        t0 = time.perf_counter()
        hops = policy.route(RouteRequest(r, rng.randrange(50, 2000), 2048), nodes, assignment, view)
        times.append(time.perf_counter() - t0)
        assert hops is not None
    # the target is < 2 ms (see bench/scheduler.py); allow a loaded CI machine some slack
    assert statistics.median(times) < 0.01


def two_region_swarm():
    # a replica of the 16-layer model in region "a" (nodes 0, 1) and one in region "c" (nodes 2, 3)
    nodes = {0: node(0, 8, region="a"), 1: node(1, 8, region="a"), 2: node(2, 8, region="c"),
             3: node(3, 8, region="c")}
    assignment = {0: (0, 8), 1: (8, 16), 2: (0, 8), 3: (8, 16)}
    return nodes, assignment


def test_potluck_waits_for_cache_room_within_a_region_rather_than_crossing():
    nodes, assignment = two_region_swarm()
    policy = make_policy("potluck", context())
    policy.allocate(nodes)
    view = idle_view(nodes, assignment, context().model)
    request = RouteRequest(1, 100, 200)
    view.kv_free[0] = 0.0  # region a's first stage is full: region c's replica has room
    assert [h.node for h in policy.route(request, nodes, assignment, view)] == [2, 3]
    view.kv_free[3] = 0.0  # now each region has a full stage; a chain 2 -> 1 across regions has room
    assert policy.route(request, nodes, assignment, view) is None  # it waits for room within one region
    view.kv_free[0] = 1e12
    assert [h.node for h in policy.route(request, nodes, assignment, view)] == [0, 1]


def test_potluck_crosses_regions_when_no_region_holds_a_whole_chain():
    nodes, assignment = two_region_swarm()
    assignment = {0: (0, 8), 3: (8, 16)}
    policy = make_policy("potluck", context())
    policy.allocate(nodes)
    hops = policy.route(RouteRequest(1, 100, 200), nodes, assignment, idle_view(nodes, assignment, context().model))
    assert [h.node for h in hops] == [0, 3]


def test_potluck_routes_through_a_slow_hop_when_it_is_the_only_way():
    # one chain, with a node so slow that prefilling a long prompt there takes most of the TTFT
    # objective: a poor route still beats none (an unroutable request would hold up the queue)
    nodes = {0: node(0, 10, tflops=50), 1: node(1, 10, tflops=0.05, uplink_mbps=50)}
    assignment = {0: (0, 8), 1: (8, 16)}
    policy = make_policy("potluck", context())
    policy.allocate(nodes)
    hops = policy.route(RouteRequest(1, 900, 1000), nodes, assignment, idle_view(nodes, assignment, context().model))
    assert [h.node for h in hops] == [0, 1]


def test_potluck_rides_a_busy_fast_pipeline_until_it_holds_a_share_of_its_cache():
    # two replicas in one region: 0-1 reads its weights at twice the speed of 2-3. A batching node
    # streaming a few sessions is busy most of the time, yet one more request rides its steps almost
    # for free; once the node has reserved a share of its cache the busy fraction means queueing
    nodes = {0: node(0, 8, bandwidth_gbs=1000), 1: node(1, 8, bandwidth_gbs=1000),
             2: node(2, 8, bandwidth_gbs=500), 3: node(3, 8, bandwidth_gbs=500)}
    assignment = {0: (0, 8), 1: (8, 16), 2: (0, 8), 3: (8, 16)}
    policy = make_policy("potluck", context())
    policy.allocate(nodes)
    view = idle_view(nodes, assignment, context().model)
    request = RouteRequest(1, 100, 200)
    assert [h.node for h in policy.route(request, nodes, assignment, view)] == [0, 1]
    view.utilization[0] = view.utilization[1] = 0.95
    view.resident[0] = view.resident[1] = 4
    assert [h.node for h in policy.route(request, nodes, assignment, view)] == [0, 1]
    view.kv_free[0] *= 0.5
    view.kv_free[1] *= 0.5
    assert [h.node for h in policy.route(request, nodes, assignment, view)] == [2, 3]
