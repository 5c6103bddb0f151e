"""Potluck's own phase 1: KV-aware sizing, bandwidth-based splits, incremental joins and leaves."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from engine.scheduler.allocation import (CONCURRENCY_GRID, OVERFLOW_COMPUTE_SHARE, OVERFLOW_TPOT_SHARE, PipelineModel,
                                         allocate, best_pipelines, overflow_pipelines, place_stitchers, split_layers,
                                         thinnest_window)
from engine.scheduler.policy import RouteRequest, SwarmContext, covers_all_layers
from engine.scheduler.potluck import PotluckPolicy
from engine.scheduler.scenario import load_scenario
from engine.scheduler.workload import Workload
from tests.scheduler_fixtures import LLAMA_70B, RTT, SLO, context, idle_view, node

SCENARIOS = Path(__file__).resolve().parents[1] / "resources" / "scenarios"


def fast_pipeline_and_overflow(slow: dict) -> tuple[dict, PotluckPolicy, dict, object]:
    """Two A100s, which form the planned pipeline, beside `slow` nodes too slow to stitch into it:
    (nodes, policy, assignment, an idle load view)."""
    fast = {100 + i: node(100 + i, 76, tflops=250, bandwidth_gbs=1800) for i in range(2)}
    nodes = {**fast, **slow}
    policy = PotluckPolicy(context(LLAMA_70B))
    assignment = policy.allocate(nodes)
    return nodes, policy, assignment, idle_view(nodes, assignment, LLAMA_70B)


def test_split_levels_stage_time_by_per_layer_time():
    # per-layer times 1 and 3: the fast stage gets 3x the layers
    assert split_layers([1.0, 3.0], [80, 80], 80) == [60, 20]
    # a cap binds: the rest flows to the other stage
    assert split_layers([1.0, 3.0], [50, 80], 80) == [50, 30]
    assert split_layers([1.0], [10], 80) is None


def test_split_follows_bandwidth_where_tflops_split_evenly():
    # same TFLOP/s, 3x the bandwidth: decode is bandwidth-bound, so the faster-memory node gets
    # more layers (Parallax's TFLOP/s water-filling would split them evenly)
    ctx = context(LLAMA_70B)
    nodes = [node(0, 150, tflops=500, bandwidth_gbs=1000), node(1, 150, tflops=500, bandwidth_gbs=3000)]
    plan = allocate(nodes, ctx)
    layers = {n: e - s for n, (s, e) in plan.assignment.items()}
    assert layers[1] > 1.5 * layers[0]


def test_kv_reservation_leaves_room_for_sessions():
    """Unlike packing layers until memory is full, every pipeline stage keeps KV cache for sessions."""
    ctx = context(LLAMA_70B)
    nodes = [node(i, 24, bandwidth_gbs=900) for i in range(12)]
    plan = allocate(nodes, ctx)
    assert plan.pipelines
    for pipe in plan.pipelines:
        assert pipe.concurrency >= 8
        for nid, s, e in pipe.stages:
            free = 24e9 - LLAMA_70B.weight_bytes(s, e)
            assert free >= LLAMA_70B.kv_bytes(ctx.workload.kv_tokens_mean, e - s) * 8


def test_pipelines_stay_inside_a_region_when_they_can():
    ctx = context(LLAMA_70B)
    nodes = [node(i, 80, bandwidth_gbs=2000, region="a") for i in range(4)]
    nodes += [node(4 + i, 80, bandwidth_gbs=2000, region="c") for i in range(4)]
    plan = allocate(nodes, ctx)
    by_id = {n.id: n for n in nodes}
    for pipe in plan.pipelines:
        assert len({by_id[nid].region for nid, _, _ in pipe.stages}) == 1


def test_join_moves_no_one_and_leave_moves_only_spares():
    ctx = context(LLAMA_70B)
    nodes = {i: node(i, 24, bandwidth_gbs=900) for i in range(14)}
    policy = PotluckPolicy(ctx)
    before = policy.allocate(nodes)
    newcomer = node(99, 24, bandwidth_gbs=900)
    after_join = policy.on_join(newcomer, {**nodes, 99: newcomer}, before)
    assert {n: r for n, r in after_join.items() if n != 99} == before
    member = policy.plan.pipelines[0].stages[1][0]
    rest = {i: n for i, n in nodes.items() if i != member}
    after_leave = policy.on_leave(member, rest, before)
    pipeline_members = {nid for p in policy.plan.pipelines for nid, _, _ in p.stages}
    moved = {n for n in after_leave if after_leave[n] != before.get(n)}
    assert not moved & pipeline_members  # only spare nodes take over the leaver's layers
    covered = set()
    for s, e in after_leave.values():
        covered.update(range(s, e))
    assert covered == set(range(80))


def test_spare_nodes_cover_the_thin_layer_they_are_placed_for():
    """A thin last layer draws a spare node only with a window it can hold there (beside the
    lm_head); it once drew a window one layer short, left the layer thin and so drew every spare
    after it onto the same few layers."""
    model = LLAMA_70B
    small = node(1, 10, bandwidth_gbs=330)  # five layers inside the model, four beside the lm_head
    rates = np.full(model.num_layers, 10.0)
    rates[-1] = 0.0
    assert thinnest_window(rates, small, model, 384) == (76, 80)
    spares = [node(i, 10, bandwidth_gbs=330) for i in range(30)]
    assignment = {}
    slow_pipelines = 10.0  # seconds per token: every spare speeds them up
    place_stitchers(spares, 1, rates, slow_pipelines, PipelineModel(context(model)), assignment)
    windows = Counter(assignment.values())
    assert sum(windows.values()) == len(spares)
    assert windows.most_common(1)[0][1] <= 3  # spread over the model (it was 13 on layers 75-78)
    assert any(e == model.num_layers for _, e in windows)


def test_spares_slower_than_the_pipelines_stay_on_standby():
    """12 GB cards beside a fast pipeline would drag every chain they join: they get no layers,
    at allocation or on joining, and stay available to take over a leaver's layers. (With 1 Gbit/s
    uplinks three of them would rather widen the pipeline, for their cache: predicted 787 against
    745 tok/s. Their uplinks here are the volunteer swarm's 12 GB cards'.)"""
    ctx = context(LLAMA_70B)
    fast = {100 + i: node(100 + i, 76, tflops=250, bandwidth_gbs=1800) for i in range(2)}
    slow = {i: node(i, 10, bandwidth_gbs=330, uplink_mbps=200) for i in range(6)}
    quick = {50: node(50, 22, tflops=80, bandwidth_gbs=3000)}
    policy = PotluckPolicy(ctx)
    assignment = policy.allocate({**fast, **slow, **quick})
    assert not set(slow) & set(assignment)
    assert 50 in assignment
    newcomer = node(7, 10, bandwidth_gbs=330, uplink_mbps=200)
    assert policy.on_join(newcomer, {**fast, **slow, **quick, 7: newcomer}, assignment) == assignment
    member = policy.plan.pipelines[0].stages[0][0]
    rest = {i: n for i, n in {**fast, **slow, **quick}.items() if i != member}
    after_leave = policy.on_leave(member, rest, assignment)
    assert set(slow) & set(after_leave)


def test_nodes_too_slow_to_stitch_serve_as_overflow_only_when_the_pipelines_are_full():
    """12 GB cards that would drag the fast pipeline form an overflow pipeline of their own. Routes
    use it only when the planned pipeline has no cache room, and never mix the two; a pipeline
    member that leaves is still replaced, since overflow nodes do not count as covering its layers."""
    slow = {i: node(i, 10, bandwidth_gbs=330) for i in range(20)}
    nodes, policy, assignment, view = fast_pipeline_and_overflow(slow)
    fast = set(nodes) - set(slow)
    overflow = policy.plan.overflow_nodes
    planned = {nid for p in policy.plan.pipelines for nid, _, _ in p.stages}
    assert set(fast) <= planned
    assert overflow and overflow <= set(slow) and not overflow & planned
    request = RouteRequest(0, prompt_tokens=128, kv_tokens=160)
    assert {h.node for h in policy.route(request, nodes, assignment, view)} <= planned
    view.kv_free[101] = 0.0  # one full stage: the rest of the pipeline must not be stitched to overflow
    chain = policy.route(request, nodes, assignment, view)
    assert chain and {h.node for h in chain} <= overflow
    for nid in overflow:
        view.kv_free[nid] = 0.0
    assert policy.route(request, nodes, assignment, view) is None  # it waits for room
    # an overflow stage's node leaves and a similar machine joins: it takes that stage's layers
    gone = sorted(overflow)[0]
    rest = {i: n for i, n in nodes.items() if i != gone}
    shrunk = policy.on_leave(gone, rest, assignment)
    assert gone not in shrunk
    newcomer = node(500, 10, bandwidth_gbs=330)
    rejoined = policy.on_join(newcomer, {**rest, 500: newcomer}, shrunk)
    assert rejoined[500] == assignment[gone] and 500 in policy.plan.overflow_nodes
    after = policy.on_leave(100, {i: n for i, n in nodes.items() if i != 100}, assignment)
    replanned = policy.plan.overflow_nodes
    assert covers_all_layers({n: r for n, r in after.items() if n not in replanned}, LLAMA_70B.num_layers)


def test_an_overflow_pipeline_is_left_alone_until_it_has_worked_off_a_long_prompt():
    """Overflow nodes are slow at prompts: routing remembers a prompt sent to one of them for as long
    as its prefill and upload take there (about 17 s per node here), not for a fixed few seconds."""
    slow = {i: node(i, 10, tflops=10, bandwidth_gbs=300 + 2 * i, uplink_mbps=100) for i in range(40)}
    nodes, policy, assignment, view = fast_pipeline_and_overflow(slow)
    pipelines = [{n for n, _, _ in p.stages} for p in policy.plan.overflow]
    assert len(pipelines) == 2
    view.kv_free[101] = 0.0  # the planned pipeline is full

    def pipeline_at(t: float, rid: int, prompt: int) -> int:
        view.now = t
        chain = {h.node for h in policy.route(RouteRequest(rid, prompt, prompt + 20), nodes, assignment, view)}
        [which] = [i for i, p in enumerate(pipelines) if chain <= p]
        return which

    first = pipeline_at(0.0, 1, 8000)  # the faster of the two
    assert pipeline_at(12.0, 2, 10) != first
    assert pipeline_at(20.0, 3, 10) == first


def test_prompts_pass_to_the_overflow_pipeline_while_the_planned_one_works_through_a_prompt_queue():
    """A planned pipeline with cache room but seconds of prompts queued (it filled faster than it can
    prefill) sends the next prompt to the overflow pipeline, unless that is as busy, and takes
    prompts again once it has worked the queue off (README, Scheduler)."""
    slow = {i: node(i, 10, bandwidth_gbs=330) for i in range(20)}
    nodes, policy, assignment, view = fast_pipeline_and_overflow(slow)
    overflow = policy.plan.overflow_nodes
    [pipeline] = [{n for n, _, _ in p.stages} for p in policy.plan.pipelines]

    def route(t: float, rid: int) -> set[int]:
        view.now = t
        return {h.node for h in policy.route(RouteRequest(rid, 1000, 1020), nodes, assignment, view)}

    # 0.3-0.4 s of prefill and upload per prompt on each member: six make about 2.4 s of queue,
    # over the 2 s that PROMPT_QUEUE_SHARE allows with a 10 s TTFT objective
    for rid in range(6):
        assert route(0.0, rid) == pipeline
    # then the overflow pipeline takes prompts until its queue is as long; once both are busy,
    # the planned pipeline, which has cache room and is faster, takes them again
    chains = [route(0.0, rid) for rid in range(6, 30)]
    assert chains[0] <= overflow
    assert 3 <= sum(1 for c in chains if c <= overflow) < 20 and chains[-1] == pipeline
    assert route(20.0, 30) == pipeline


def test_an_overflow_pipeline_holds_no_more_sessions_than_it_was_planned_for():
    """Apple M1/M2 Max laptops have cache room for several times the sessions their FLOP/s can
    prefill and decode within the overflow TPOT: once a pipeline of them holds its planned
    concurrency, it takes no more requests though its cache has room (README, Scheduler)."""
    slow = {i: node(i, 40, tflops=13, bandwidth_gbs=350) for i in range(10)}
    nodes, policy, assignment, view = fast_pipeline_and_overflow(slow)
    pipes = policy.plan.overflow
    assert len(pipes) == 2
    view.kv_free[101] = 0.0  # the planned pipeline is full
    request = RouteRequest(0, prompt_tokens=256, kv_tokens=384)
    for pipe in pipes:
        room = [view.kv_free[n] / LLAMA_70B.kv_bytes(request.kv_tokens, e - s) for n, s, e in pipe.stages]
        assert min(room) > 1.5 * pipe.concurrency  # the cache alone would take many more
        for n, _, _ in pipe.stages:
            view.resident[n] = int(np.ceil(pipe.concurrency))
    assert policy.route(request, nodes, assignment, view) is None  # it waits
    second = pipes[1]
    for n, _, _ in second.stages:
        view.resident[n] = int(second.concurrency) - 1
    chain = policy.route(request, nodes, assignment, view)
    assert chain and {h.node for h in chain} <= {n for n, _, _ in second.stages}


def test_an_overflow_pipeline_is_planned_within_its_stages_flops(monkeypatch):
    """Apple M1/M2 Maxes have the bandwidth for many sessions within the overflow TPOT but not the
    FLOP/s to prefill their prompts: planned to the TPOT alone, their prompts queued and they held
    most of the volunteer swarm's late first tokens. Each stage's prompts and decode together are
    planned for at most OVERFLOW_COMPUTE_SHARE of its FLOP/s, and that is what limits them."""
    import engine.scheduler.allocation as allocation

    slow = {i: node(i, 40, tflops=13, bandwidth_gbs=350) for i in range(10)}
    nodes, policy, _, _ = fast_pipeline_and_overflow(slow)
    pm = PipelineModel(policy.ctx)
    capped = policy.plan.overflow
    assert capped
    for pipe in capped:
        chain = pm.chain([nodes[n] for n, _, _ in pipe.stages], [e - s for _, s, e in pipe.stages])
        assert chain.compute_load(pipe.tok_s) <= OVERFLOW_COMPUTE_SHARE + 1e-6
    monkeypatch.setattr(allocation, "OVERFLOW_COMPUTE_SHARE", float("inf"))
    _, loose, _, _ = fast_pipeline_and_overflow(slow)
    assert sum(p.concurrency for p in loose.plan.overflow) > 1.2 * sum(p.concurrency for p in capped)


def test_pipeline_model_predicts_slower_tokens_with_more_sessions():
    ctx = context(LLAMA_70B)
    pm = PipelineModel(ctx)
    stages = [node(i, 24, bandwidth_gbs=900) for i in range(8)]
    layers = [10] * 8
    chain = pm.chain(stages, layers)
    t1, r1 = chain.cycle(1)
    t64, r64 = chain.cycle(64)
    assert t64 > t1 and r64 > 10 * r1


def test_predicted_first_token_waits_for_an_uplink_busy_with_other_traffic():
    """A prompt's hidden states share each stage's uplink with every decode token's and the other
    prompts': with the uplinks half full the uploads take twice as long (a 12 GB volunteer card's
    200 Mbit/s uplink, not its FLOP/s, is what queues prompts on its chains)."""
    ctx = context(LLAMA_70B)
    pm = PipelineModel(ctx)
    stages = [node(i, 24, tflops=10_000, bandwidth_gbs=900, uplink_mbps=100) for i in range(8)]
    chain = pm.chain(stages, [10] * 8)
    per_token = chain.token_uploads[0] + chain.mean_prompt_uploads[0] / ctx.workload.output_tokens_mean
    idle, half = chain.ttft(1e-9), chain.ttft(0.5 / per_token)
    assert 1.7 * idle < half < 2.1 * idle  # the uploads are most of the idle chain's first token


def test_no_global_replan_without_a_gain_worth_the_reload():
    ctx = context(LLAMA_70B)
    nodes = {i: node(i, 24, bandwidth_gbs=900) for i in range(14)}
    policy = PotluckPolicy(ctx)
    assignment = policy.allocate(nodes)
    assert policy.rebalance(nodes, assignment, idle_view(nodes, assignment, LLAMA_70B)) is None


def test_split_gives_prompt_heavy_work_to_flops():
    # same bandwidth, 4x the TFLOP/s: with long prompts and short answers most of a stage's time is
    # prefill, so the node with the FLOP/s takes more layers (a bandwidth-only split would be even)
    model = LLAMA_70B
    ctx = SwarmContext(model, RTT, Workload(1.0, prompt_tokens_mean=2048, output_tokens_mean=16,
                                            max_context=4096), SLO)
    nodes = [node(0, 150, tflops=100, bandwidth_gbs=1000), node(1, 150, tflops=400, bandwidth_gbs=1000)]
    plan = allocate(nodes, ctx)
    layers = {n: e - s for n, (s, e) in plan.assignment.items()}
    assert layers[1] > 1.5 * layers[0]


def test_every_region_that_can_hold_the_model_gets_its_own_pipeline():
    # asia's swarm (two A100-40s, four 4090s, two 150 GB Mac Studios) can hold Llama-3-70B alone; its
    # Macs prefill slowly, which once kept the region from any pipeline and left it idle
    scenario = load_scenario(SCENARIOS / "heterogeneous_3region.toml")
    ctx = SwarmContext(scenario.model, scenario.rtt, scenario.workload, scenario.slo)
    nodes = scenario.initial_nodes()
    plan = allocate(nodes, ctx)
    region = {n.id: n.region for n in nodes}
    local = {region[p.stages[0][0]] for p in plan.pipelines if len({region[n] for n, _, _ in p.stages}) == 1}
    assert local == {"us", "eu", "asia"}


def test_a_prompt_avoids_a_chain_whose_nodes_report_a_long_prompt_queue():
    """Alike nodes in two regions: the prompt queue nodes report (the prompts other origins sent
    them, at the speed those really go) turns the next prompt away from them, which the policy's
    memory of what it routed itself cannot do."""
    ctx = context(LLAMA_70B)
    nodes = {i: node(i, 80, tflops=300, bandwidth_gbs=2000, region="a" if i < 4 else "b") for i in range(8)}

    def route(queue: dict[int, float]) -> set[int]:
        policy = PotluckPolicy(ctx)  # fresh each time: no memory of earlier routes
        assignment = policy.allocate(nodes)
        view = idle_view(nodes, assignment, LLAMA_70B)
        view.prompt_queue_s = [queue.get(n, 0.0) for n in range(8)]
        return {h.node for h in policy.route(RouteRequest(0, 1000, 1100), nodes, assignment, view)}

    first = route({})
    assert route({n: 5.0 for n in first}).isdisjoint(first)  # half the TTFT objective queued on each
    assert route({n: 5.0 for n in nodes if n not in first}) == first


def test_the_volunteer_swarms_slowest_macs_serve_in_overflow_pipelines():
    """The 200 Apple M1/M2 Pros (20 GB, 8 TFLOP/s, 180 GB/s) of the shipped volunteer swarm chain 10
    stages at about 0.9 s per token bare: too slow for the planned pipelines, fast enough for
    overflow ones, which may take OVERFLOW_TPOT_SHARE times the TPOT objective. (At 1.5x they all
    stayed on standby; at 2x they were planned for 21-32 sessions a pipeline.)"""
    scenario = load_scenario(SCENARIOS / "volunteer_1000.toml")
    cfg = scenario.sim_config()
    ctx = SwarmContext(cfg.model, cfg.rtt, cfg.workload, cfg.slo)
    plan = allocate(list(cfg.initial_nodes), ctx)
    pros = {n.id for n in cfg.initial_nodes if n.tflops == 8}
    planned = {nid for p in plan.pipelines for nid, _, _ in p.stages}
    serving = pros & plan.overflow_nodes
    assert len(serving) >= 0.8 * len(pros) and not pros & planned
    for p in plan.overflow:
        if {nid for nid, _, _ in p.stages} & pros:
            assert ctx.slo.tpot_p50_s < p.tpot_s <= OVERFLOW_TPOT_SHARE * ctx.slo.tpot_p50_s
            if {nid for nid, _, _ in p.stages} <= pros:
                assert p.concurrency >= 100


def test_each_kind_of_overflow_card_gets_the_reservation_that_suits_it():
    """The volunteer swarm's RTX 3060s (100 Mbit/s uplinks) are best as 17-stage chains of 5 layers,
    whose prompts cross fewer hops, and its RTX 3080s (200 Mbit/s) as 21-stage chains of 4 layers
    with more cache. One reservation for the whole region gave both 21 stages, and the 3060 chains
    held the late first tokens. Each kind is planned as it would be alone."""
    scenario = load_scenario(SCENARIOS / "volunteer_1000.toml")
    cfg = scenario.sim_config()
    ctx = SwarmContext(cfg.model, cfg.rtt, cfg.workload, cfg.slo)
    pm = PipelineModel(ctx, tpot_share=OVERFLOW_TPOT_SHARE, compute_share=OVERFLOW_COMPUTE_SHARE)
    na = [n for n in cfg.initial_nodes if n.region == "na" and n.memory_bytes == 10e9]
    kinds = {tf: [n for n in na if n.tflops == tf] for tf in (25, 40)}

    def shapes(pipes):
        return sorted((len(p.stages), round(p.tok_s, 3)) for p in pipes)

    together = overflow_pipelines(na, pm)
    alone = {tf: overflow_pipelines(group, pm) for tf, group in kinds.items()}
    by_kind = {tf: [p for p in together if {nid for nid, _, _ in p.stages} <= {n.id for n in group}]
               for tf, group in kinds.items()}
    for tf in kinds:
        assert shapes(by_kind[tf]) == shapes(alone[tf])
    assert {len(p.stages) for p in by_kind[25]} != {len(p.stages) for p in by_kind[40]}
    one_q, _, _ = best_pipelines(na, pm, grid=CONCURRENCY_GRID[::3], mixes=(False,))
    assert sum(p.tok_s for p in together) > 1.05 * sum(p.tok_s for p in one_q)


def test_a_spare_card_that_frees_cache_joins_the_pipeline(monkeypatch):
    """On the shipped LAN (8 x 24 GB cards) seven cards hold the model; the eighth, as one more
    stage, lets every stage hold fewer layers and more cache. As a stitcher beside the pipeline it
    only doubled a few layers: at 10.6 requests/s that plan missed the TTFT objective while the
    wider pipeline serves more tokens within it."""
    import engine.scheduler.allocation as allocation
    from engine.scheduler.simulator import meets_slo, simulate

    scenario = load_scenario(SCENARIOS / "homogeneous_lan.toml")
    cfg = scenario.sim_config(arrival_rate=10.6, duration_s=scenario.search_duration_s,
                              warmup_s=scenario.search_warmup_s)
    ctx = SwarmContext(cfg.model, cfg.rtt, cfg.workload, cfg.slo)
    plan = allocate(list(cfg.initial_nodes), ctx)
    assert [len(p.stages) for p in plan.pipelines] == [len(cfg.initial_nodes)]
    wide = simulate(cfg, "potluck")
    monkeypatch.setattr(allocation, "WIDEN_GAIN", float("inf"))
    narrow_plan = allocate(list(cfg.initial_nodes), ctx)
    assert [len(p.stages) for p in narrow_plan.pipelines] == [len(cfg.initial_nodes) - 1]
    narrow = simulate(cfg, "potluck")
    assert meets_slo(wide, cfg.slo) and not meets_slo(narrow, cfg.slo)
    assert wide.output_tok_s > 1.03 * narrow.output_tok_s


def test_spare_cards_that_hold_the_model_together_form_a_pipeline_before_stitching(monkeypatch):
    """On the shipped heterogeneous swarm the EU's five 3090s are too many for the A100 pipeline
    and too slow for a pipeline of their own within the TPOT budget. As stitchers they doubled a
    few of the A100s' layers (busy 23%); with the region's two idle Macs they form an overflow
    pipeline, which also turns on the router's prompt-queue gate, and the swarm meets the SLO at
    21.5 requests/s where the stitched plan missed the TTFT objective."""
    import engine.scheduler.allocation as allocation
    from engine.scheduler.simulator import meets_slo, simulate

    scenario = load_scenario(SCENARIOS / "heterogeneous_3region.toml")
    cfg = scenario.sim_config(arrival_rate=21.5, duration_s=scenario.search_duration_s,
                              warmup_s=scenario.search_warmup_s)
    ctx = SwarmContext(cfg.model, cfg.rtt, cfg.workload, cfg.slo)
    plan = allocate(list(cfg.initial_nodes), ctx)
    eu_spares = {n.id for n in cfg.initial_nodes if n.region == "eu" and n.tflops < 100}
    assert plan.overflow_nodes == eu_spares and not plan.stitchers
    with_overflow = simulate(cfg, "potluck")
    monkeypatch.setattr(allocation, "overflow_pipelines", lambda spare, pm: [])
    stitched = allocate(list(cfg.initial_nodes), ctx)
    assert {n.id for n in cfg.initial_nodes if n.tflops == 35} <= set(stitched.stitchers)
    assert meets_slo(with_overflow, cfg.slo) and not meets_slo(simulate(cfg, "potluck"), cfg.slo)


def test_a_lost_hop_is_taken_over_by_the_least_loaded_sibling_in_its_region():
    """Two pipelines in region a and one in b hold the same three spans: a hop lost from a chain
    in a goes to the other pipeline of a that serves its layers, with room and the fewest sessions.
    (On 1 Gbit/s uplinks the planner makes one 6-stage pipeline of region a instead.)"""
    nodes = {i: node(i, 6, region="a" if i < 6 else "b", uplink_mbps=500) for i in range(9)}
    policy = PotluckPolicy(context())
    assignment = policy.allocate(nodes)
    view = idle_view(nodes, assignment, policy.ctx.model)
    chain = policy.route(RouteRequest(0, prompt_tokens=128, kv_tokens=160), nodes, assignment, view)
    assert {nodes[h.node].region for h in chain} == {"a"}
    for k, lost in enumerate(chain):
        patch = policy.replacement(chain, k, 160, nodes, assignment, view)
        assert len(patch) == 1 and (patch[0].start, patch[0].end) == (lost.start, lost.end)
        sibling = patch[0].node
        assert nodes[sibling].region == "a" and sibling not in {h.node for h in chain}
        view.resident[sibling] = 3  # busier than the pipeline in b, which is still the wrong region
        assert policy.replacement(chain, k, 160, nodes, assignment, view) == patch
        view.kv_free[sibling] = 0.0  # no room: nobody in a can take the hop
        assert policy.replacement(chain, k, 160, nodes, assignment, view) is None
