"""Capacity of a policy: the highest output-token rate it sustains within the SLO.

Search over the arrival rate: double from the scenario's own rate (or halve) until the SLO
breaks (or holds), then bisect geometrically. The upper bound caps the search: no policy can
sustain more than it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .scenario import Scenario
from .simulator import SimResult, meets_slo, simulate

BISECT_STEPS = 5
MIN_RATE_FRACTION = 1 / 256  # of the upper bound's request rate: below that, capacity counts as 0


@dataclass
class CapacityResult:
    capacity_tok_s: float
    rate_per_s: float
    probes: list[tuple[float, bool, float]]  # (arrival rate, SLO met, output tok/s)
    at_capacity: SimResult | None = None  # the run at the capacity rate


def find_capacity(scenario: Scenario, policy: str, upper_bound_tok_s: float) -> CapacityResult:
    probes: list[tuple[float, bool, float]] = []
    cache: dict[float, tuple[bool, SimResult]] = {}

    def probe(rate: float) -> bool:
        if rate not in cache:
            cfg = scenario.sim_config(arrival_rate=rate, duration_s=scenario.search_duration_s,
                                      warmup_s=scenario.search_warmup_s)
            result = simulate(cfg, policy)
            cache[rate] = (meets_slo(result, scenario.slo), result)
            probes.append((rate, cache[rate][0], result.output_tok_s))
        return cache[rate][0]

    ceiling = 1.05 * upper_bound_tok_s / scenario.workload.output_tokens_mean
    floor = ceiling * MIN_RATE_FRACTION
    if ceiling <= 0:
        return CapacityResult(0.0, 0.0, probes)
    rate = min(max(scenario.workload.arrival_rate_per_s, floor), ceiling)
    if probe(rate):
        lo, hi = rate, None
        while hi is None:
            nxt = min(lo * 2, ceiling)
            if nxt <= lo * 1.01:
                hi = ceiling
                break
            if probe(nxt):
                lo = nxt
            else:
                hi = nxt
    else:
        lo, hi = None, rate
        while lo is None:
            nxt = hi / 2
            if nxt < floor:
                return CapacityResult(0.0, 0.0, probes)
            if probe(nxt):
                lo = nxt
            else:
                hi = nxt
    for _ in range(BISECT_STEPS):
        if hi / lo < 1.03:
            break
        mid = (lo * hi) ** 0.5
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return CapacityResult(cache[lo][1].output_tok_s, lo, probes, cache[lo][1])
