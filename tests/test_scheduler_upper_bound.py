"""The upper bound: worked examples by hand, presence under churn, and no policy ever beating it."""

from __future__ import annotations

import tomllib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.scheduler.capacity import find_capacity
from engine.scheduler.lp import maximise
from engine.scheduler.model import ModelShape
from engine.scheduler.policy import POLICY_NAMES
from engine.scheduler.scenario import parse_scenario
from engine.scheduler.simulator import JOIN
from engine.scheduler.upper_bound import bound, bound_for_window, length_bounds, window_availability
from engine.scheduler.workload import Workload
from tests.scheduler_fixtures import GB, SCENARIO_TOML, SMALL_MODEL, WORKLOAD, node

# 4 layers of 1 GB, no embedding or lm_head, 1 GFLOP per token and layer, 1000-byte hidden states
TOY = ModelShape(num_layers=4, layer_bytes=1 * GB, embed_bytes=0, lm_head_bytes=0, kv_bytes_per_token_layer=1000,
                 flops_per_token_layer=1e9, hidden_size=500, dtype_bytes=2)
TOY_WORK = Workload(arrival_rate_per_s=1, prompt_tokens_mean=100, output_tokens_mean=100, max_context=1_000_000)


def per_token_demand(model, workload):
    """Layer-passes of decode and layer-tokens of prefill per output token (conservative means)."""
    prompt_low, output_low, output_high = length_bounds(workload)
    return model.num_layers * (1 - 1 / output_low), model.num_layers * prompt_low / output_high


def test_length_bounds_bracket_the_sampled_means():
    import random

    from engine.scheduler.workload import sample_request

    for workload in (TOY_WORK, WORKLOAD, Workload(1, 3000, 900, 4096)):
        rng = random.Random(5)
        draws = [sample_request(rng, workload) for _ in range(40_000)]
        prompt = np.mean([p for p, _ in draws])
        output = np.mean([o for _, o in draws])
        prompt_low, output_low, output_high = length_bounds(workload)
        assert prompt_low <= prompt * 1.01 and output_low <= output * 1.01 <= output_high * 1.02
        assert prompt_low > 0.9 * prompt and output_low > 0.9 * output  # bounds, but not loose ones


def test_compute_bound_by_hand():
    # every node holds the whole 8.5 GB model, so links never bind: FLOPs alone set the rate.
    # Per output token: (decode + prefill) layer-tokens x 1 GFLOP, plus one lm_head (2 x 0.125 G params)
    nodes = [node(i, 40, tflops=1, bandwidth_gbs=3000) for i in range(4)]
    decode, prefill = per_token_demand(SMALL_MODEL, WORKLOAD)
    per_token_flops = (decode + prefill) * 1e9 + 2 * 0.25e9 / 2
    result = bound(nodes, SMALL_MODEL, WORKLOAD)
    assert result.tok_s == pytest.approx(4e12 / per_token_flops, rel=1e-5)
    assert result.tok_s == pytest.approx(result.compute_tok_s)
    assert all(name.startswith("compute") for name in result.binding)


def test_uplink_bound_by_hand():
    # Node A (4 GB) holds the whole toy model: it may serve chains alone and never uploads.
    # Node B (2 GB) holds at most 2 layers and has an 8 Mbit/s uplink = 1000 hidden states/s, shared:
    # every run of <= 2 layers on it but a chain's last sends one hidden state per token (the last
    # sends a token id), decode and prompts alike:
    #   x_B / 2 - d_B + p_B / 2 - f_B <= 1000, where d_B and f_B (tokens of the runs on B that end a
    #   decode pass or a prefill) are at most the passes' totals, a R / L and b R / L (L = 4).
    # A does 10 TFLOP/s = 10 000 layer-tokens/s, B 40 000. With a = decode and b = prefill work per
    # token, B does 2000 + 2 (d_B + f_B) and A 10 000; giving B every final run:
    #   (a + b) R = 12 000 + 2 (a + b) R / 4  ->  R = 24 000 / (a + b), and B stays under its FLOP/s
    # (with a separate channel for decode and prompts, as the simulator once had, and a hidden state
    # for every decode run, it was more; FLOP/s alone would allow 50 000 / (a + b))
    a_node = node(0, 4, tflops=10, uplink_mbps=1)
    b_node = node(1, 2, tflops=40, uplink_mbps=8)
    a, b = per_token_demand(TOY, TOY_WORK)
    result = bound([a_node, b_node], TOY, TOY_WORK)
    assert result.tok_s == pytest.approx(24_000 / (a + b), rel=1e-5)
    assert result.compute_tok_s == pytest.approx(50_000 / (a + b), rel=1e-5)
    assert any(name.startswith("uplink of") for name in result.binding)


def test_bound_is_zero_when_the_swarm_cannot_hold_the_model():
    small = [node(i, 6) for i in range(2)]
    assert bound(small[:1], SMALL_MODEL, WORKLOAD).tok_s == 0.0
    assert bound(small + [node(5, 6)], SMALL_MODEL, WORKLOAD).tok_s > bound(small, SMALL_MODEL, WORKLOAD).tok_s


def test_absent_time_does_not_count():
    nodes = [node(i, 40, tflops=1) for i in range(2)]
    full = bound(nodes, SMALL_MODEL, WORKLOAD).tok_s
    assert bound(nodes, SMALL_MODEL, WORKLOAD, availability=[1.0, 0.5]).tok_s == pytest.approx(0.75 * full)


def tiny(**overrides):
    doc = tomllib.loads(SCENARIO_TOML)
    doc.update(overrides)
    return parse_scenario(doc)


def test_window_availability_counts_leaves_and_weight_loading():
    # window [10, 40]; the 10 GB "us" node leaves at 25 s: it serves half the window
    cfg = tiny().sim_config()
    nodes, shares = window_availability(cfg)
    by_memory = {n.id: (n.memory_bytes, a) for n, a in zip(nodes, shares)}
    assert sorted(by_memory.values()) == [(6 * GB, 1.0)] * 3 + [(10 * GB, 0.5)]
    # with churn, a replacement joins 5 s after a leave and must load a 0.5 GB layer at 2 GB/s first
    cfg = tiny(churn={"mean_node_lifetime_s": 20, "rejoin_after_s": 5}).sim_config()
    joins = {e.node.id: e.time for e in cfg.membership if e.kind == JOIN}
    nodes, shares = window_availability(cfg)
    for n, a in zip(nodes, shares):
        if n.id in joins:
            start = max(10.0, joins[n.id] + 0.25)
            assert a <= (40 - start) / 30 + 1e-9
    assert bound_for_window(cfg).tok_s < bound_for_window(tiny().sim_config()).tok_s * 1.0001


def test_simplex_solves_a_textbook_programme():
    # max 3x + 5y st x <= 4, 2y <= 12, 3x + 2y <= 18 -> x = 2, y = 6, value 36; duals (0, 1.5, 1)
    value, x, duals = maximise(np.array([3.0, 5.0]), np.array([[1, 0], [0, 2], [3, 2]]), np.array([4.0, 12, 18]))
    assert value == pytest.approx(36) and x == pytest.approx([2, 6]) and duals == pytest.approx([0, 1.5, 1])


# no policy sustains more than the bound ---------------------------------------------------------
def capacities_within_bound(scenario):
    cfg = scenario.sim_config(duration_s=scenario.search_duration_s, warmup_s=scenario.search_warmup_s)
    limit = bound_for_window(cfg).tok_s
    for name in POLICY_NAMES:
        # search up to 3x the bound, so a policy that beat it would show
        measured = find_capacity(scenario, name, 3 * limit).capacity_tok_s
        assert measured <= limit, (name, measured, limit)


def test_no_policy_beats_the_bound_on_the_test_scenario():
    capacities_within_bound(tiny())


group = st.fixed_dictionaries({
    "count": st.integers(1, 3), "memory_gb": st.sampled_from([3, 5, 9, 20]), "tflops": st.sampled_from([2, 10, 60]),
    "bandwidth_gbs": st.sampled_from([100, 500, 2000]), "region": st.sampled_from(["eu", "us"]),
    "uplink_mbps": st.sampled_from([20, 200, 5000]),
})


@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(group, min_size=1, max_size=3), st.sampled_from([(64, 16), (256, 32)]))
def test_no_policy_beats_the_bound_on_random_swarms(groups, lengths):
    doc = tomllib.loads(SCENARIO_TOML)
    doc["nodes"] = groups
    doc["workload"].update(prompt_tokens_mean=lengths[0], output_tokens_mean=lengths[1])
    doc["duration_s"], doc["warmup_s"] = 30, 10
    doc["search"] = {"duration_s": 30, "warmup_s": 10}
    scenario = parse_scenario(doc)
    if sum(g["count"] * g["memory_gb"] for g in groups) * GB < SMALL_MODEL.total_weight_bytes:
        assert bound_for_window(scenario.sim_config()).tok_s == 0.0
        return
    capacities_within_bound(scenario)
