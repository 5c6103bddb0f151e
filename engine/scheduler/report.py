"""Turning simulation results into the JSON object, a readable table and a plot."""

from __future__ import annotations

import math


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(x, 4)


def format_table(report: dict) -> str:
    lines = [f"scenario: {report['scenario']}"]
    if report.get("error"):
        lines.append(f"  {report['error']}")
    lines.append(f"upper bound: {report['upper_bound_tok_s']:.1f} output tok/s")
    if report.get("bound_binding"):
        lines.append(f"  (limited by: {'; '.join(report['bound_binding'])})")
    head = (f"{'policy':<10} {'capacity tok/s':>14} {'vs bound':>8} {'TTFT p50':>9} {'TTFT p99':>9} "
            f"{'TPOT p50':>9} {'TPOT p99':>9} {'done':>6} {'failed':>6} {'alloc ms':>9} {'route ms':>9}")
    lines += [head, "-" * len(head)]
    ub = report["upper_bound_tok_s"]

    def f(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    for name, p in report["policies"].items():
        share = f"{p['capacity_tok_s'] / ub:.0%}" if ub else "-"
        lines.append(f"{name:<10} {p['capacity_tok_s']:>14.1f} {share:>8} {f(p['ttft_p50_s']):>9} "
                     f"{f(p['ttft_p99_s']):>9} {f(p['tpot_p50_s'], '{:.3f}'):>9} {f(p['tpot_p99_s'], '{:.3f}'):>9} "
                     f"{p['completed']:>6} {p['failed']:>6} {f(p['alloc_ms'], '{:.1f}'):>9} "
                     f"{f(p['route_ms_p50'], '{:.3f}'):>9}")
    lines.append("capacity: highest output tok/s within the SLO; latencies at the scenario's own arrival rate")
    for name, detail in report.get("details", {}).items():
        if detail.get("usage_at_capacity"):
            lines.append(f"where {name}'s time goes at capacity (per hardware group: busy, FLOP/s used, uplink used, KV reserved):")
            lines += [f"  {u['region']:<6} {u['nodes']:>4} x {u['memory_gb']:g} GB {u['tflops']:g} TFLOP/s "
                      f"{u['bandwidth_gbs']:g} GB/s ({u['serving']} serving): busy {u['busy']:.0%}, "
                      f"FLOP/s {u['flops_used']:.0%}, uplink {u['uplink_used']:.0%}, KV {u['kv_reserved']:.0%}"
                      for u in detail["usage_at_capacity"]]
    return "\n".join(lines)


COLORS = {"potluck": "#2a7de1", "petals": "#8c8c8c", "exo": "#b5b5b5", "parallax": "#5f5f5f"}


def plot_report(report: dict, path: str) -> None:
    """Capacity (with the upper bound) and latency per policy, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["policies"])
    pols = report["policies"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    caps = [pols[n]["capacity_tok_s"] for n in names]
    ax1.bar(names, caps, color=[COLORS.get(n, "#999") for n in names])
    ax1.axhline(report["upper_bound_tok_s"], color="#d62728", linestyle="--", label="upper bound")
    ax1.set_ylabel("output tokens/s within SLO")
    ax1.set_title("capacity")
    ax1.legend(loc="upper right", fontsize=8)
    width = 0.38
    xs = range(len(names))
    ttft = [pols[n]["ttft_p50_s"] or 0 for n in names]
    tpot = [pols[n]["tpot_p50_s"] or 0 for n in names]
    ax2.bar([x - width / 2 for x in xs], ttft, width, label="TTFT p50 (s)", color="#4c9be8")
    ax2.bar([x + width / 2 for x in xs], tpot, width, label="TPOT p50 (s)", color="#f0a030")
    ax2.set_xticks(list(xs), names)
    ax2.set_yscale("log")
    ax2.set_title(f"latency at {report.get('arrival_rate_per_s', 0):g} req/s")
    ax2.legend(fontsize=8)
    fig.suptitle(report["scenario"])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
