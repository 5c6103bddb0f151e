"""Does KV memory tighten the upper bound? A check of the claim in engine/scheduler/upper_bound.py.

    python bench/upper_bound_kv.py [--scenario FILE]...

Solves, per shipped scenario, the bound's linear programme extended with what memory implies:
- each node chooses how many layers k it holds (a share of its time per k, so the programme stays
  linear): its decode uplink carries runs of at most k layers, its KV cache is memory - k layers;
- Little's law for the KV cache. A request reserves prompt + max_tokens (c tokens) on all L layers
  from admission to its last token, so each decode token keeps kv * c * L bytes for at least its
  bare cycle: every layer's weights read at its node's bandwidth, plus per run one step overhead,
  half the shortest RTT and one hidden-state upload, plus the lm_head read. Over the whole swarm
  the KV-seconds this needs fit in the memory left beside the weights; per node, the cache for its
  own layers is held at least for the fastest cycle any chain could have.
- decode tokens split into 8 classes by c (quantiles over decode tokens, lower ends, 3% margin),
  so a policy that sends short requests to slow chains is covered.
It needs scipy (HiGHS) for a programme of ~1000 rows; the shipped bound is small enough for
engine/scheduler/lp.py. Prints one line per scenario, then one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.scheduler.perf import STEP_OVERHEAD_S  # noqa: E402
from engine.scheduler.scenario import load_scenario  # noqa: E402
from engine.scheduler.upper_bound import bound_for_window, length_bounds, window_availability  # noqa: E402
from engine.scheduler.workload import sample_request  # noqa: E402

CLASSES = 8


def context_classes(workload, draws: int = 100_000) -> list[float]:
    """Lower ends of CLASSES equal shares of decode tokens ordered by their request's reservation."""
    rng = random.Random(12345)
    c, w = [], []
    for _ in range(draws):
        p, o = sample_request(rng, workload)
        if o > 1:
            c.append(p + o)
            w.append(o - 1)
    order = np.argsort(c)
    c, w = np.array(c)[order], np.array(w, dtype=float)[order]
    share = np.cumsum(w) / w.sum()
    return [0.0] + [0.97 * c[np.searchsorted(share, q / CLASSES)] for q in range(1, CLASSES)]


def kv_bound(cfg) -> float:
    try:
        from scipy.optimize import linprog
    except ImportError:
        raise SystemExit("bench/upper_bound_kv.py needs scipy for its linear programme: pip install scipy")

    nodes, shares = window_availability(cfg)
    model, workload = cfg.model, cfg.workload
    L, lb, f, kv = model.num_layers, model.layer_bytes, model.flops_per_token_layer, model.kv_bytes_per_token_layer
    groups: dict[tuple, list] = {}
    for n, a in zip(nodes, shares):
        if n.memory_bytes >= lb:
            key = (n.memory_bytes, n.tflops, n.bandwidth_gbs, n.uplink_mbps)
            groups.setdefault(key, [n, 0.0])[1] += a
    members = list(groups.values())
    prompt_low, output_low, output_high = length_bounds(workload)
    hidden = model.hidden_state_bytes(1)
    half_rtt = min(min(row) for row in cfg.rtt.matrix()[1]) / 2
    classes = context_classes(workload)
    caps = [min(L, int(n.memory_bytes // lb)) for n, _ in members]
    bw_max = max(n.bytes_per_s for n, _ in members)
    runs_min = 1 if max(caps) >= L else math.ceil(L / max(caps))
    fastest_cycle = (L * min(lb / n.bytes_per_s for n, _ in members) + model.lm_head_bytes / bw_max
                     + runs_min * STEP_OVERHEAD_S + (0 if runs_min == 1 else runs_min * half_rtt))
    scale = sum(n.flops_per_s * a / f for n, a in members)  # rates in units of the swarm's compute

    columns = {"R": 0}

    def col(key) -> int:
        return columns.setdefault(key, len(columns))

    configs = [(g, k) for g, cap in enumerate(caps) for k in range(1, cap + 1)]
    for g, k in configs:
        for v in ("a", "p", "f", "d", "h", *(f"x{q}" for q in range(CLASSES))):
            col((g, k, v))
    rows, rhs = [], []

    def row(entries: dict[int, float], bound: float) -> None:
        r = np.zeros(len(columns))
        for c, v in entries.items():
            r[c] += v
        rows.append(r)
        rhs.append(bound)

    decode = L * (1 - 1 / output_low)
    for q in range(CLASSES):
        row({0: decode / CLASSES, **{col((g, k, f"x{q}")): -1.0 for g, k in configs}}, 0.0)
    row({0: L * prompt_low / output_high, **{col((g, k, "p")): -1.0 for g, k in configs}}, 0.0)
    row({0: 2.0 * model.lm_head_bytes / model.dtype_bytes / f, **{col((g, k, "h")): -1.0 for g, k in configs}}, 0.0)
    finals = {col((g, k, "f")): 1.0 for g, k in configs}
    for g, k in configs:
        finals[col((g, k, "p"))] = -1.0 / L
    row(finals, 0.0)
    decode_finals = {col((g, k, "d")): 1.0 for g, k in configs}  # a decode pass's last run sends a token id
    for g, k in configs:
        for q in range(CLASSES):
            decode_finals[col((g, k, f"x{q}"))] = -1.0 / L
    row(decode_finals, 0.0)
    for g, (n, a) in enumerate(members):
        row({col((g, k, "a")): 1.0 for k in range(1, caps[g] + 1)}, a)
    swarm_kv = {}
    for g, k in configs:
        n = members[g][0]
        a, p, fin, h = (col((g, k, v)) for v in "apfh")
        xs = [col((g, k, f"x{q}")) for q in range(CLASSES)]
        free_tb = (n.memory_bytes - k * lb) / 1e12
        row({**{x: 1.0 for x in xs}, p: 1.0, h: 1.0, a: -n.flops_per_s / f / scale}, 0.0)
        row({fin: 1.0, p: -1.0}, 0.0)
        row({col((g, k, "d")): 1.0, **{x: -1.0 for x in xs}}, 0.0)
        per_run = STEP_OVERHEAD_S
        if k < L:
            messages = n.uplink_mbps * 1e6 / 8 / hidden / scale
            # decode messages and prompts' uploads share the one uplink (simulator: since c0a534e)
            row({**{x: 1.0 / k for x in xs}, p: 1.0 / k, fin: -1.0, col((g, k, "d")): -1.0, a: -messages}, 0.0)
            per_run += half_rtt + hidden / (n.uplink_mbps * 1e6 / 8)
        per_pass = lb / n.bytes_per_s + per_run / k + model.lm_head_bytes / bw_max / L
        row({**{x: kv * classes[q] * fastest_cycle * scale / 1e12 for q, x in enumerate(xs)}, a: -free_tb}, 0.0)
        for q, x in enumerate(xs):
            swarm_kv[x] = kv * L * classes[q] * per_pass * scale / 1e12
        swarm_kv[a] = -free_tb
    row(swarm_kv, 0.0)
    objective = np.zeros(len(columns))
    objective[0] = -1.0
    result = linprog(objective, A_ub=np.array(rows), b_ub=np.array(rhs), bounds=(0, None), method="highs")
    if result.status != 0:
        raise RuntimeError(f"linprog: {result.message}")
    return -result.fun * scale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", type=Path)
    args = parser.parse_args()
    paths = args.scenario or [ROOT / "resources" / "scenarios" / name for name in
                              ("homogeneous_lan.toml", "heterogeneous_3region.toml", "volunteer_1000.toml")]
    out = {}
    for path in paths:
        scenario = load_scenario(path)
        cfg = scenario.sim_config(duration_s=scenario.search_duration_s, warmup_s=scenario.search_warmup_s)
        shipped, with_kv = bound_for_window(cfg).tok_s, kv_bound(cfg)
        out[scenario.name] = {"upper_bound_tok_s": round(shipped, 2), "with_kv_tok_s": round(with_kv, 2),
                              "ratio": round(with_kv / shipped, 4)}
        print(f"{scenario.name}: bound {shipped:.1f} tok/s, with KV and layer choice {with_kv:.1f} tok/s")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
