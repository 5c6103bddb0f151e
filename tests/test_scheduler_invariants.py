"""Property tests over random swarms: coverage, memory, complete contiguous routes, for every policy."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.scheduler_fixtures import GB, SMALL_MODEL, context, idle_view, node

from engine.scheduler.allocation import SwarmTooSmall, check_swarm_fits
from engine.scheduler.policy import POLICY_NAMES, RouteRequest, make_policy

swarms = st.lists(
    st.tuples(st.floats(2, 40), st.floats(5, 300), st.floats(100, 3000), st.sampled_from("abc"),
              st.sampled_from([50, 300, 10000])),
    min_size=1, max_size=24,
)


def build(specs):
    return {i: node(i, mem, tf, bw, region, up) for i, (mem, tf, bw, region, up) in enumerate(specs)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(swarms, st.sampled_from(POLICY_NAMES))
def test_allocation_covers_layers_within_memory(specs, name):
    nodes = build(specs)
    ctx = context()
    policy = make_policy(name, ctx)
    try:
        check_swarm_fits(list(nodes.values()), ctx)
        fits = True
    except SwarmTooSmall:
        fits = False
    assignment = policy.allocate(nodes)
    for nid, (start, end) in assignment.items():
        assert 0 <= start < end <= SMALL_MODEL.num_layers
        assert SMALL_MODEL.weight_bytes(start, end) <= nodes[nid].memory_bytes
    covered = set()
    for start, end in assignment.values():
        covered.update(range(start, end))
    if name == "potluck" and fits:
        assert covered == set(range(SMALL_MODEL.num_layers))  # ours always serves a swarm that fits
    if not fits:
        # nobody can serve the whole model; a partial placement is allowed, a chain is not
        view = idle_view(nodes, assignment, SMALL_MODEL) if assignment else None
        if view is not None:
            assert policy.route(RouteRequest(0, 100, 132), nodes, assignment, view) is None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(swarms, st.sampled_from(POLICY_NAMES), st.integers(1, 400))
def test_routes_are_contiguous_and_complete(specs, name, prompt):
    nodes = build(specs)
    policy = make_policy(name, context())
    assignment = policy.allocate(nodes)
    if not assignment:
        return
    view = idle_view(nodes, assignment, SMALL_MODEL)
    hops = policy.route(RouteRequest(1, prompt, prompt + 32), nodes, assignment, view)
    covered = set()
    for s, e in assignment.values():
        covered.update(range(s, e))
    if covered != set(range(SMALL_MODEL.num_layers)):
        assert hops is None
        return
    if hops is None:
        return  # a policy may make a request wait (e.g. no room, or a fixed pipeline is incomplete)
    boundary = 0
    for hop in hops:
        start, end = assignment[hop.node]
        assert hop.start == boundary and start <= hop.start < hop.end <= end
        boundary = hop.end
    assert boundary == SMALL_MODEL.num_layers


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 30), st.floats(4, 24))
def test_potluck_routes_around_full_nodes(count, memory):
    """Nodes without free KV cache for the request are never on its chain."""
    nodes = {i: node(i, memory, region="a") for i in range(count)}
    policy = make_policy("potluck", context())
    assignment = policy.allocate(nodes)
    if not assignment:
        return  # too small for the model
    view = idle_view(nodes, assignment, SMALL_MODEL)
    first = policy.route(RouteRequest(1, 100, 132), nodes, assignment, view)
    assert first is not None
    full = first[0].node
    view.kv_free[full] = 0.0
    view.assignment_version += 0  # same assignment, new load
    second = policy.route(RouteRequest(2, 100, 132), nodes, assignment, view)
    assert second is None or all(h.node != full for h in second)


def test_swarm_too_small_says_how_much_is_missing():
    nodes = [node(i, 2) for i in range(3)]  # 6 GB for a 8.5 GB model
    with pytest.raises(SwarmTooSmall, match=r"needs \d+\.\d GB more"):
        check_swarm_fits(nodes, context())
    assert 2 * GB < SwarmTooSmall(2.5 * GB).needed_bytes < 3 * GB
