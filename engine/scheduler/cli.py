"""`potluck simulate SCENARIO.toml [--policy NAME]... [--json] [--plot FILE.png]`."""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from .allocation import SwarmTooSmall, check_swarm_fits
from .capacity import find_capacity
from .policy import POLICY_NAMES, SwarmContext
from .report import _num, format_table, plot_report
from .scenario import Scenario, ScenarioError, load_scenario
from .simulator import percentile, simulate
from .upper_bound import bound_for_window


def evaluate(scenario: Scenario, policies: list[str], search: bool = True) -> dict:
    nodes = scenario.initial_nodes()
    report = {"scenario": scenario.name, "arrival_rate_per_s": scenario.workload.arrival_rate_per_s,
              "upper_bound_tok_s": 0.0, "policies": {}}
    ctx = SwarmContext(scenario.model, scenario.rtt, scenario.workload, scenario.slo)
    try:
        check_swarm_fits(nodes, ctx)
    except SwarmTooSmall as e:
        report["error"] = str(e)
        for name in policies:
            report["policies"][name] = {"capacity_tok_s": 0.0, "ttft_p50_s": None, "ttft_p99_s": None,
                                        "tpot_p50_s": None, "tpot_p99_s": None, "completed": 0, "failed": 0,
                                        "alloc_ms": None, "route_ms_p50": None}
        return report
    # over the window capacity is measured in (search duration and warm-up), churn included
    limit = bound_for_window(scenario.sim_config(duration_s=scenario.search_duration_s,
                                                 warmup_s=scenario.search_warmup_s))
    bound = limit.tok_s
    report["upper_bound_tok_s"] = round(bound, 2)
    report["bound_binding"] = limit.binding[:3]
    report["details"] = {}
    for name in policies:
        at_rate = simulate(scenario.sim_config(), name)
        capacity = find_capacity(scenario, name, bound) if search else None
        report["details"][name] = {"sim_wall_s": round(at_rate.wall_s, 2), "reroutes": at_rate.reroutes,
                                   "capacity_rate_per_s": capacity.rate_per_s if capacity else None,
                                   "probes": capacity.probes if capacity else [],
                                   "usage_at_capacity": capacity.at_capacity.usage if capacity and capacity.at_capacity else []}
        report["policies"][name] = {
            "capacity_tok_s": round(capacity.capacity_tok_s, 2) if capacity else None,
            "ttft_p50_s": _num(percentile(at_rate.ttft_s, 50)),
            "ttft_p99_s": _num(percentile(at_rate.ttft_s, 99)),
            "tpot_p50_s": _num(percentile(at_rate.tpot_s, 50)),
            "tpot_p99_s": _num(percentile(at_rate.tpot_s, 99)),
            "completed": at_rate.completed,
            "failed": at_rate.failed,
            "alloc_ms": round(at_rate.alloc_ms, 2),
            "route_ms_p50": _num(statistics.median(at_rate.route_ms)) if at_rate.route_ms else None,
        }
    return report


def main(args: argparse.Namespace) -> int:
    policies = args.policies or list(POLICY_NAMES)
    unknown = [p for p in policies if p not in POLICY_NAMES]
    if unknown:
        print(f"potluck simulate: unknown policy {unknown[0]!r}; choose from {', '.join(POLICY_NAMES)}",
              file=sys.stderr)
        return 2
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as e:
        print(f"potluck simulate: {e}", file=sys.stderr)
        return 2
    report = evaluate(scenario, policies)
    if args.plot:
        plot_report(report, args.plot)
    if args.json:
        out = {k: report[k] for k in ("scenario", "upper_bound_tok_s", "policies")}
        if "error" in report:
            out["error"] = report["error"]
        print(json.dumps(out))
    else:
        print(format_table(report))
    return 0
