"""The host's scheduler role: joins, heartbeats, leaves and eviction drive allocation and routing."""

import time

import pytest

from engine.model.spec import ModelSpec
from engine.scheduler.model import ModelShape
from engine.swarm.membership import NoRoute, SwarmScheduler

PROFILE = {"matmul_tflops_half": 0.2, "bandwidth_gbs": 30.0}


@pytest.fixture
def scheduler(make_checkpoint):
    spec = ModelSpec.from_checkpoint(make_checkpoint("llama"))
    return SwarmScheduler(ModelShape(**spec.as_scheduler_shape()), "tiny", spec.max_position_embeddings)


def report_ready(s):
    for m in s.members.values():
        s.heartbeat(m.peer_id, s.assignment.get(m.index), 0, 1e6, 0)


def test_three_small_nodes_split_the_model_and_route_through_all(scheduler):
    for i in range(3):
        scheduler.join(f"p{i}", True, 1.0e6, PROFILE)
    ranges = sorted(scheduler.assignment.values())
    assert ranges[0][0] == 0 and ranges[-1][1] == 8 and len(ranges) == 3
    with pytest.raises(NoRoute, match="may still be loading"):
        scheduler.route(10, 100)  # nobody has reported its layers loaded yet
    report_ready(scheduler)
    route = scheduler.route(10, 100)
    assert [h.start for h in route][0] == 0 and route[-1].end == 8
    assert all(a.end == b.start for a, b in zip(route, route[1:]))
    assert {h.peer_id for h in route} == {"p0", "p1", "p2"}


def test_too_small_swarm_says_how_much_more_is_needed(scheduler):
    scheduler.join("p0", True, 0.3e6, PROFILE)
    with pytest.raises(NoRoute, match=r"too small for this model: it needs about 1\.38 MB for its weights .* "
                                      r"offer 300\.00 KB\. .* about \d+\.\d\d MB more"):
        scheduler.route(10, 100)


def test_a_silent_node_is_evicted_and_the_layers_are_reassigned(scheduler):
    for i in range(4):
        scheduler.join(f"p{i}", True, 1.0e6, PROFILE)
    report_ready(scheduler)
    victim = scheduler.route(10, 100)[1].peer_id
    scheduler.evict_after_s = 5.0
    for m in scheduler.members.values():  # the victim was last heard a minute ago, the others just now
        m.last_heard = time.monotonic() - (60.0 if m.peer_id == victim else 0.0)
    assert scheduler.evict_stale() == [victim]
    assert victim not in scheduler.members
    report_ready(scheduler)
    assert victim not in {h.peer_id for h in scheduler.route(10, 100)}


def test_rejoin_with_the_same_identity_leaves_no_ghost(scheduler):
    scheduler.join("p0", True, 1.0e6, PROFILE)
    scheduler.join("p0", True, 1.0e6, PROFILE)
    assert len(scheduler.members) == 1 and len(scheduler.snapshot()["nodes"]) == 1


def test_client_only_members_get_no_layers(scheduler):
    scheduler.join("client", False, 0.0, PROFILE)
    for i in range(3):
        scheduler.join(f"p{i}", True, 1.0e6, PROFILE)
    assert scheduler.assignment_of("client") is None


def test_the_prompt_queue_nodes_report_reaches_the_router_bounded(scheduler):
    for i in range(3):
        scheduler.join(f"p{i}", True, 1.0e6, PROFILE)
    for m, queue in zip(scheduler.members.values(), [2.5, float("nan"), 1e12]):
        scheduler.heartbeat(m.peer_id, scheduler.assignment.get(m.index), 0, 1e6, 0, 0.0, queue)
    views = []
    route = scheduler.policy.route
    scheduler.policy.route = lambda request, nodes, current, view: views.append(view) or route(
        request, nodes, current, view)
    scheduler.route(10, 100)
    assert list(views[0].prompt_queue_s) == [2.5, 0.0, 3600.0]


def test_a_lost_hop_is_taken_over_by_a_ready_node_serving_its_layers(scheduler):
    for i in range(4):  # two of them hold the first layers
        scheduler.join(f"p{i}", True, 1.0e6, PROFILE)
    report_ready(scheduler)
    route = scheduler.route(10, 100)
    spans = sorted(scheduler.assignment.values())
    doubled = next(k for k, h in enumerate(route) if spans.count((h.start, h.end)) == 2)
    hop = scheduler.replacement(route, doubled, 100)
    assert (hop.start, hop.end) == (route[doubled].start, route[doubled].end)
    assert hop.peer_id not in {h.peer_id for h in route}
    with pytest.raises(NoRoute, match="No ready node with room serves layers"):
        scheduler.replacement(route, doubled, 100, avoid={hop.peer_id})
    single = next(k for k, h in enumerate(route) if spans.count((h.start, h.end)) == 1)
    with pytest.raises(NoRoute):
        scheduler.replacement(route, single, 100)
