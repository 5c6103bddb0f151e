"""Scheduler benchmark: allocation and routing speed, and every policy's capacity per scenario.

    python bench/scheduler.py [--scenario FILE]... [--plot PATH] [--skip-capacity] [--jobs N]

Prints progress lines, then one JSON object as its last line. Capacity is the highest output
tokens/s a policy sustains within the scenario's SLO (search over the arrival rate, see
engine/scheduler/capacity.py); the upper bound is engine/scheduler/upper_bound.py. With --jobs N
every (scenario, policy) capacity search runs in one of N processes, after the timings (which run
alone); the simulations are deterministic, so only the wall times change.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.scheduler.cli import evaluate  # noqa: E402
from engine.scheduler.policy import POLICY_NAMES, LoadView, RouteRequest, SwarmContext, make_policy  # noqa: E402
from engine.scheduler.scenario import load_scenario  # noqa: E402
from engine.scheduler.simulator import simulate  # noqa: E402

SCENARIOS = ROOT / "resources" / "scenarios"
BASELINES = ("petals", "exo", "parallax")


def volunteer_pool():
    scenario = load_scenario(SCENARIOS / "volunteer_1000.toml")
    ctx = SwarmContext(scenario.model, scenario.rtt, scenario.workload, scenario.slo)
    return scenario, ctx, scenario.initial_nodes()


def allocation_ms(count: int, repeats: int = 3) -> float:
    """Potluck's phase 1 for `count` nodes drawn from the volunteer mix, 80-layer Llama-3-70B."""
    _, ctx, pool = volunteer_pool()
    nodes = random.Random(count).sample(pool, count)
    times = []
    for _ in range(repeats):
        policy = make_policy("potluck", ctx)
        t0 = time.perf_counter()
        assignment = policy.allocate({n.id: n for n in nodes})
        times.append(time.perf_counter() - t0)
        assert assignment
    return 1000 * statistics.median(times)


def routing_ms(count: int = 200, requests: int = 1000) -> float:
    """Median time of one potluck route() at `count` nodes under random live load."""
    scenario, ctx, pool = volunteer_pool()
    rng = random.Random(7)
    nodes = {n.id: n for n in rng.sample(pool, count)}
    policy = make_policy("potluck", ctx)
    assignment = policy.allocate(nodes)
    size = max(nodes) + 1
    view = LoadView(now=0.0, ready=[n in assignment for n in range(size)], kv_free=[0.0] * size,
                    resident=[0] * size, busy_until=[0.0] * size, assignment_version=1, utilization=[0.0] * size)
    for n, (s, e) in assignment.items():
        view.kv_free[n] = nodes[n].memory_bytes - scenario.model.weight_bytes(s, e)
    times = []
    for r in range(requests):
        for n in assignment:
            view.resident[n] = rng.randrange(0, 40)
            view.utilization[n] = rng.random() * 0.9
        view.now = r * 0.05
        prompt = rng.randrange(32, 1024)
        t0 = time.perf_counter()
        hops = policy.route(RouteRequest(r, prompt, prompt + 128), nodes, assignment, view)
        times.append(time.perf_counter() - t0)
        assert hops
    return 1000 * statistics.median(times)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(name, r) for name, r in results.items() if r["upper_bound_tok_s"] > 0]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.6 * len(shown), 3.4), squeeze=False)
    colors = {"potluck": "#2a7de1", "petals": "#9a9a9a", "exo": "#c4c4c4", "parallax": "#5f5f5f"}
    for ax, (name, r) in zip(axes[0], shown):
        names = list(r["policies"])
        caps = [r["policies"][n]["capacity_tok_s"] for n in names]
        bars = ax.bar(names, caps, color=[colors.get(n, "#999") for n in names])
        for bar, cap in zip(bars, caps):
            ax.annotate(f"{cap:,.0f}", (bar.get_x() + bar.get_width() / 2, cap), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax.axhline(r["upper_bound_tok_s"], color="#d62728", linestyle="--", linewidth=1,
                   label=f"upper bound {r['upper_bound_tok_s']:,.0f}")
        ax.set_ylim(0, max(max(caps) * 1.25, 1.0))  # the bound is in the legend; it can be far above
        ax.set_title(name, fontsize=10)
        ax.tick_params(axis="x", labelsize=8, rotation=20)
        ax.set_ylabel("tokens/s within SLO", fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def policy_report(task: tuple[Path, str]) -> tuple[Path, str, dict, float]:
    """One policy's capacity (and the bound) on one scenario, in a worker process."""
    path, policy = task
    t0 = time.perf_counter()
    return path, policy, evaluate(load_scenario(path), [policy]), time.perf_counter() - t0


def scenario_entry(name: str, reports: list[dict], wall_s: float) -> tuple[dict, str]:
    """The JSON entry and progress line of one scenario from its policies' reports."""
    first = reports[0]
    pols = {policy: r["policies"][policy] for r in reports for policy in r["policies"]}
    pols = {policy: pols[policy] for policy in POLICY_NAMES if policy in pols}
    entry = {"upper_bound_tok_s": first["upper_bound_tok_s"], "bound_binding": first.get("bound_binding", []),
             "policies": pols, "wall_s": round(wall_s, 1)}
    if "error" in first:
        entry["error"] = first["error"]
    best = max(BASELINES, key=lambda n: pols[n]["capacity_tok_s"])
    ours = pols["potluck"]["capacity_tok_s"]
    if first["upper_bound_tok_s"] > 0:
        entry["best_baseline"] = best
        entry["vs_best_baseline"] = round(ours / pols[best]["capacity_tok_s"], 2) if pols[best]["capacity_tok_s"] else None
        entry["vs_upper_bound"] = round(ours / first["upper_bound_tok_s"], 3)
    caps = ", ".join(f"{n} {p['capacity_tok_s']}" for n, p in pols.items())
    return entry, f"{name}: bound {first['upper_bound_tok_s']} tok/s; {caps} ({entry['wall_s']} s of searching)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", help="scenario file (default: all shipped)")
    parser.add_argument("--plot", default=str(ROOT / "bench" / "out" / "scheduler.png"))
    parser.add_argument("--skip-capacity", action="store_true", help="timings only")
    parser.add_argument("--jobs", type=int, default=1, help="capacity searches at once, one process each")
    args = parser.parse_args()
    started = time.perf_counter()
    out: dict = {}
    out["alloc_ms_100_nodes"] = round(allocation_ms(100), 1)
    out["alloc_ms_1000_nodes"] = round(allocation_ms(1000), 1)
    print(f"allocation: {out['alloc_ms_100_nodes']} ms at 100 nodes, {out['alloc_ms_1000_nodes']} ms at 1000", flush=True)
    out["route_ms_p50_200_nodes"] = round(routing_ms(), 3)
    print(f"routing: {out['route_ms_p50_200_nodes']} ms per request at 200 nodes", flush=True)
    volunteer = load_scenario(SCENARIOS / "volunteer_1000.toml")
    sim = simulate(volunteer.sim_config(), "potluck")
    out["sim_wall_s_1000_nodes_600s"] = round(sim.wall_s, 1)
    print(f"simulating {volunteer.duration_s:.0f} s of {len(volunteer.initial_nodes())} nodes: {sim.wall_s:.1f} s",
          flush=True)
    results = {}
    if not args.skip_capacity:
        paths = [Path(p) for p in args.scenario] if args.scenario else sorted(SCENARIOS.glob("*.toml"))
        # the 1000-node searches first: they take longest, so the pool's other worker does the rest meanwhile
        paths.sort(key=lambda p: p.name != "volunteer_1000.toml")
        tasks = [(path, policy) for path in paths for policy in POLICY_NAMES]
        by_path: dict[Path, list] = {path: [] for path in paths}
        with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for path, policy, report, wall in pool.map(policy_report, tasks):
                by_path[path].append((report, wall))
                if len(by_path[path]) == len(POLICY_NAMES):
                    name = report["scenario"]
                    results[name], line = scenario_entry(name, [r for r, _ in by_path[path]],
                                                         sum(w for _, w in by_path[path]))
                    print(line, flush=True)
        if results:
            plot(results, Path(args.plot))
            print(f"plot: {args.plot}", flush=True)
    out["scenarios"] = results
    out["wall_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
