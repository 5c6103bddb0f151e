"""Capacity of a policy: the highest output-token rate it sustains within the SLO.

Search over the arrival rate: double from the scenario's own rate (or halve) until the SLO
breaks (or holds), then bisect geometrically. The upper bound caps the search: no policy can
sustain more than it.

Each probe pools several independent draws of the arrivals (same swarm, same churn) and judges
the SLO on all their requests together. A TTFT p99 over one short window swings with a few
unlucky bursts: on the volunteer swarm one draw missed the objective at 90 req/s and met it at
110, and bisection trusts every answer, so a single draw could stop the search a fifth short.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .scenario import Scenario
from .simulator import SimConfig, SimResult, meets_slo, simulate

BISECT_STEPS = 5
ARRIVAL_DRAWS = 2  # independent arrival sequences pooled per probe
MIN_RATE_FRACTION = 1 / 256  # of the upper bound's request rate: below that, capacity counts as 0


@dataclass
class CapacityResult:
    capacity_tok_s: float
    rate_per_s: float
    probes: list[tuple[float, bool, float]]  # (arrival rate, SLO met, output tok/s)
    at_capacity: SimResult | None = None  # the run at the capacity rate


def find_capacity(scenario: Scenario, policy: str, upper_bound_tok_s: float,
                  draws: int = ARRIVAL_DRAWS) -> CapacityResult:
    probes: list[tuple[float, bool, float]] = []
    cache: dict[float, tuple[bool, SimResult]] = {}

    def probe(rate: float) -> bool:
        if rate not in cache:
            cfg = scenario.sim_config(arrival_rate=rate, duration_s=scenario.search_duration_s,
                                      warmup_s=scenario.search_warmup_s)
            result = pooled([simulate(c, policy) for c in arrival_draws(cfg, draws)])
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


def arrival_draws(cfg: SimConfig, draws: int) -> list[SimConfig]:
    """The same swarm and churn (drawn from the scenario's seed) with `draws` arrival sequences."""
    return [replace(cfg, seed=cfg.seed + 104_729 * k) for k in range(draws)]


def pooled(results: list[SimResult]) -> SimResult:
    """One result over the requests of several runs: counts add, rates average, samples join
    (usage is the first run's)."""
    if len(results) == 1:
        return results[0]
    n = len(results)
    return SimResult(
        completed=sum(r.completed for r in results), failed=sum(r.failed for r in results),
        unfinished=sum(r.unfinished for r in results), measured=sum(r.measured for r in results),
        output_tok_s=sum(r.output_tok_s for r in results) / n,
        ttft_s=[x for r in results for x in r.ttft_s], tpot_s=[x for r in results for x in r.tpot_s],
        route_ms=[x for r in results for x in r.route_ms], alloc_ms=sum(r.alloc_ms for r in results) / n,
        reroutes=sum(r.reroutes for r in results), events=sum(r.events for r in results),
        wall_s=sum(r.wall_s for r in results), usage=results[0].usage)
