"""Each baseline reproduces a worked example from its public description (notes/peers.md)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.scheduler.exo import ExoPolicy, split_by_memory
from engine.scheduler.parallax import ParallaxPolicy, capacity_layers, choose_pipelines, water_fill
from engine.scheduler.petals import CACHE_TOKENS, PetalsPolicy, best_start
from tests.scheduler_fixtures import GB, LLAMA_70B, SMALL_MODEL, context, node


# Parallax ------------------------------------------------------------------------------------
def test_parallax_capacity_is_layers_in_65_percent_of_memory():
    # 24 GB card, 1.71 GB layers: 0.65 * 24 / 1.711 = 9.1 -> 9 layers
    assert capacity_layers(node(0, 24), LLAMA_70B.layer_bytes, 80) == 9
    assert capacity_layers(node(0, 192), LLAMA_70B.layer_bytes, 80) == 72


def test_parallax_dp_maximises_k_squared_over_stages():
    # L = 80; capacities sorted: two 80s, then four 40s, then 20s.
    # k=1: 1 stage (score 1); k=2: 2 stages (score 2); k=3: 2+2=4 stages (score 9/4);
    # k=4: 2 + 2 + 2 = 6 stages (16/6 = 2.67); k=5: + four 20s = 10 stages (2.5) -> k = 4.
    caps = [80, 80, 40, 40, 40, 40, 20, 20, 20, 20]
    segments = choose_pipelines(caps, 80)
    assert len(segments) == 4
    assert sum(i - j for j, i in segments) == 6
    for j, i in segments:
        assert sum(caps[j:i]) >= 80


def test_parallax_water_filling_is_proportional_to_tflops():
    # no cap binds: 80 layers over 100 and 300 TFLOP/s -> 20 and 60
    assert water_fill([100, 300], [80, 80], 80) == [20, 60]
    # the fast node's cap binds (40): it keeps 40, the rest goes to the slow one
    assert water_fill([100, 300], [80, 40], 80) == [40, 40]


def test_parallax_round_robins_over_fixed_pipelines():
    nodes = {i: node(i, 8, region="a") for i in range(4)}  # 0.65*8/0.5 = 10 layers each: 2 pipelines of 2
    policy = ParallaxPolicy(context())
    assignment = policy.allocate(nodes)
    assert len(policy.pipelines) == 2
    from tests.scheduler_fixtures import idle_view
    from engine.scheduler.policy import RouteRequest
    view = idle_view(nodes, assignment, SMALL_MODEL)
    firsts = [policy.route(RouteRequest(r, 10, 20), nodes, assignment, view)[0].node for r in range(4)]
    assert firsts[0] != firsts[1] and firsts[0] == firsts[2] and firsts[1] == firsts[3]


# exo -----------------------------------------------------------------------------------------
def test_exo_splits_layers_in_proportion_to_memory():
    assert split_by_memory([24, 16, 8], 48) == [24, 16, 8]
    assert sum(split_by_memory([10, 10, 10], 16)) == 16


def test_exo_picks_the_smallest_ring_that_holds_the_model():
    # model 8.5 GB; a 6 GB node alone is too small; 6 + 5 GB holds it; speed is ignored
    nodes = {0: node(0, 6, tflops=1), 1: node(1, 5, tflops=1), 2: node(2, 4, tflops=900), 3: node(3, 3)}
    assignment = ExoPolicy(context()).allocate(nodes)
    assert set(assignment) == {0, 1}
    assert assignment[0] == (0, 9) and assignment[1] == (9, 16)  # 16 * 6/11 = 8.7 -> 9


# Petals --------------------------------------------------------------------------------------
def test_petals_blocks_fit_beside_a_4096_token_cache():
    policy = PetalsPolicy(context(LLAMA_70B))
    per_block = LLAMA_70B.layer_bytes + CACHE_TOKENS * LLAMA_70B.kv_bytes_per_token_layer
    assert policy.num_blocks(node(0, 24)) == int(24 * GB // per_block) == 13


def test_petals_window_covers_the_lowest_throughput_span():
    throughputs = np.array([5.0, 5.0, 1.0, 1.0, 5.0, 5.0])
    assert best_start(throughputs, 2) == 2
    # ties on the minimum are broken by the next-lowest throughput
    assert best_start(np.array([1.0, 3.0, 9.0, 1.0, 2.0]), 2) == 3


def test_petals_throughput_is_min_of_network_and_compute_over_average_blocks():
    policy = PetalsPolicy(context())
    n = node(0, 8, uplink_mbps=1e6)
    assert policy.throughput(n, 3) == pytest.approx(policy.block_rps(n) / 2)  # (3 + 1) / 2 blocks used
    slow_link = node(1, 8, uplink_mbps=1)
    assert policy.throughput(slow_link, 3) == pytest.approx(1e6 / (8 * SMALL_MODEL.hidden_state_bytes(1)))


def test_petals_servers_spread_to_cover_every_block():
    nodes = {i: node(i, 3) for i in range(8)}  # 5 blocks each, 16 blocks: servers fill the gaps
    assignment = PetalsPolicy(context()).allocate(nodes)
    covered = set()
    for s, e in assignment.values():
        covered.update(range(s, e))
    assert covered == set(range(16))
