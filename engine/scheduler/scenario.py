"""Scenario files (TOML): a swarm, a model, a workload, churn and SLOs; validation with clear errors."""

from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .model import ModelShape
from .simulator import JOIN, LEAVE, MembershipEvent, SimConfig
from .topology import NodeSpec, RttTable
from .workload import Slo, Workload


class ScenarioError(ValueError):
    """A scenario file is unreadable or wrong; the message names the key and says what to fix."""


@dataclass(frozen=True)
class NodeGroup:
    count: int
    memory_gb: float
    tflops: float
    bandwidth_gbs: float
    region: str
    uplink_mbps: float
    join_at_s: float
    leave_at_s: float | None


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    duration_s: float
    model: ModelShape
    groups: tuple[NodeGroup, ...]
    rtt: RttTable
    workload: Workload
    mean_node_lifetime_s: float
    rejoin_after_s: float
    load_gbs: float
    slo: Slo
    search_duration_s: float
    search_warmup_s: float
    warmup_s: float

    def initial_nodes(self) -> list[NodeSpec]:
        return [n for t, n, _ in self._node_timeline() if t == 0]

    def _node_timeline(self) -> list[tuple[float, NodeSpec, float | None]]:
        out, nid = [], 0
        for g in self.groups:
            for _ in range(g.count):
                spec = NodeSpec(nid, g.memory_gb * 1e9, g.tflops, g.bandwidth_gbs, g.region, g.uplink_mbps)
                out.append((g.join_at_s, spec, g.leave_at_s))
                nid += 1
        return out

    def sim_config(self, arrival_rate: float | None = None, duration_s: float | None = None,
                   warmup_s: float | None = None) -> SimConfig:
        duration = self.duration_s if duration_s is None else duration_s
        warmup = self.warmup_s if warmup_s is None else warmup_s
        stop = duration
        workload = self.workload if arrival_rate is None else self.workload.with_rate(arrival_rate)
        rng = random.Random(self.seed * 7919 + 17)  # membership draws, independent of arrivals
        timeline = self._node_timeline()
        next_id = len(timeline)
        initial, events = [], []
        queue = list(timeline)
        while queue:
            join_t, spec, leave_t = queue.pop(0)
            if join_t >= stop:
                continue
            if join_t == 0:
                initial.append(spec)
            else:
                events.append(MembershipEvent(join_t, JOIN, spec))
            churn_t = join_t + rng.expovariate(1 / self.mean_node_lifetime_s) if self.mean_node_lifetime_s > 0 else None
            if leave_t is not None and (churn_t is None or leave_t <= churn_t):
                events.append(MembershipEvent(leave_t, LEAVE, spec))
            elif churn_t is not None and churn_t < stop:
                events.append(MembershipEvent(churn_t, LEAVE, spec))
                again = NodeSpec(next_id, spec.memory_bytes, spec.tflops, spec.bandwidth_gbs, spec.region,
                                 spec.uplink_mbps)
                next_id += 1
                queue.append((churn_t + self.rejoin_after_s, again, None))
        events.sort(key=lambda e: (e.time, e.kind, e.node.id))
        return SimConfig(self.model, self.rtt, workload, self.slo, tuple(initial), tuple(events), duration,
                         warmup, self.seed, self.load_gbs)


MODEL_KEYS = ("num_layers", "layer_bytes", "embed_bytes", "lm_head_bytes", "kv_bytes_per_token_layer",
              "flops_per_token_layer", "hidden_size", "dtype_bytes")
INT_MODEL_KEYS = ("num_layers", "hidden_size", "dtype_bytes")
WIRES = ("exact", "q8_0")  # optional [model] wire: hidden states between stages (potluck node --wire)


def _number(table: dict, key: str, where: str, *, positive: bool = True, integer: bool = False,
            default=None, required: bool = True):
    if key not in table:
        if required:
            raise ScenarioError(f"{where}: missing key '{key}'")
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise ScenarioError(f"{where}: '{key}' must be {kind}, got {value!r}")
    if positive and value <= 0:
        raise ScenarioError(f"{where}: '{key}' must be > 0, got {value}")
    if not positive and value < 0:
        raise ScenarioError(f"{where}: '{key}' must be >= 0, got {value}")
    return value


def _table(doc: dict, key: str, required: bool = True) -> dict:
    if key not in doc:
        if required:
            raise ScenarioError(f"missing table [{key}]")
        return {}
    if not isinstance(doc[key], dict):
        raise ScenarioError(f"'{key}' must be a table ([{key}])")
    return doc[key]


def parse_rtt(regions: dict) -> RttTable:
    rtt_ms = regions.get("rtt_ms")
    if rtt_ms is None:
        raise ScenarioError("[regions]: missing key 'rtt_ms'")
    if not isinstance(rtt_ms, dict) or not rtt_ms:
        raise ScenarioError("[regions]: 'rtt_ms' must be a table like { \"eu-eu\" = 5, \"eu-us\" = 90 }")
    pairs = {}
    for key, ms in rtt_ms.items():
        parts = key.split("-")
        if len(parts) != 2 or not all(parts):
            raise ScenarioError(f"[regions] rtt_ms: key '{key}' must be 'REGION-REGION' (region names without '-')")
        _number(rtt_ms, key, "[regions] rtt_ms", positive=False)
        pairs[(parts[0], parts[1])] = float(ms)
    return RttTable(pairs)


def parse_scenario(doc: dict, source: str = "scenario") -> Scenario:
    name = doc.get("name", Path(source).stem)
    if not isinstance(name, str):
        raise ScenarioError("'name' must be a string")
    seed = _number(doc, "seed", "top level", positive=False, integer=True, default=1, required=False)
    duration = _number(doc, "duration_s", "top level")

    model_t = _table(doc, "model")
    wire = model_t.get("wire", "exact")
    if wire not in WIRES:
        raise ScenarioError(f"[model]: 'wire' must be one of {', '.join(WIRES)}, got {wire!r}")
    model = ModelShape(**{k: _number(model_t, k, "[model]", integer=k in INT_MODEL_KEYS) for k in MODEL_KEYS},
                       wire=wire)

    rtt = parse_rtt(_table(doc, "regions"))

    raw_nodes = doc.get("nodes")
    if not raw_nodes:
        raise ScenarioError("missing [[nodes]]: add at least one group of nodes")
    if not isinstance(raw_nodes, list):
        raise ScenarioError("'nodes' must be an array of tables ([[nodes]])")
    groups = []
    for i, g in enumerate(raw_nodes, 1):
        where = f"[[nodes]] #{i}"
        region = g.get("region")
        if region is None:
            raise ScenarioError(f"{where}: missing key 'region'")
        if not isinstance(region, str) or not rtt.has(region, region):
            raise ScenarioError(f"{where}: unknown region {region!r}: [regions] rtt_ms has no "
                                f"'{region}-{region}' entry (known regions: {', '.join(rtt.regions)})")
        join = _number(g, "join_at_s", where, positive=False, default=0.0, required=False)
        leave = _number(g, "leave_at_s", where, default=None, required=False)
        if leave is not None and leave <= join:
            raise ScenarioError(f"{where}: 'leave_at_s' ({leave}) must be after 'join_at_s' ({join})")
        groups.append(NodeGroup(_number(g, "count", where, integer=True), _number(g, "memory_gb", where),
                                _number(g, "tflops", where), _number(g, "bandwidth_gbs", where), region,
                                _number(g, "uplink_mbps", where), float(join), leave))
    used = sorted({g.region for g in groups})
    for a in used:
        for b in used:
            if not rtt.has(a, b):
                raise ScenarioError(f"[regions] rtt_ms: no round-trip time between '{a}' and '{b}' "
                                    f"(add \"{a}-{b}\" = MS)")

    w = _table(doc, "workload")
    workload = Workload(_number(w, "arrival_rate_per_s", "[workload]", positive=False),
                        _number(w, "prompt_tokens_mean", "[workload]"),
                        _number(w, "output_tokens_mean", "[workload]"),
                        _number(w, "max_context", "[workload]", integer=True))
    if workload.prompt_tokens_mean + workload.output_tokens_mean > workload.max_context:
        raise ScenarioError("[workload]: prompt_tokens_mean + output_tokens_mean exceeds 'max_context'")

    churn = _table(doc, "churn", required=False)
    lifetime = _number(churn, "mean_node_lifetime_s", "[churn]", positive=False, default=0.0, required=False)
    rejoin = _number(churn, "rejoin_after_s", "[churn]", positive=False, default=60.0, required=False)
    load_gbs = _number(churn, "load_gbs", "[churn]", default=2.0, required=False)

    slo_t = _table(doc, "slo")
    slo = Slo(_number(slo_t, "ttft_p99_s", "[slo]"), _number(slo_t, "tpot_p50_s", "[slo]"),
              _number(slo_t, "max_failed_fraction", "[slo]", positive=False, default=0.05, required=False))

    search = _table(doc, "search", required=False)
    search_duration = _number(search, "duration_s", "[search]", default=min(duration, 240.0), required=False)
    search_warmup = _number(search, "warmup_s", "[search]", positive=False,
                            default=min(60.0, search_duration / 4), required=False)
    warmup = _number(doc, "warmup_s", "top level", positive=False, default=min(60.0, duration / 4), required=False)
    for key, value, limit in (("[search] warmup_s", search_warmup, search_duration), ("warmup_s", warmup, duration)):
        if value >= limit:
            raise ScenarioError(f"{key} ({value}) must be shorter than the simulated duration ({limit})")

    return Scenario(name, seed, float(duration), model, tuple(groups), rtt, workload, float(lifetime),
                    float(rejoin), float(load_gbs), slo, float(search_duration), float(search_warmup), float(warmup))


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ScenarioError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None
    try:
        return parse_scenario(doc, str(path))
    except ScenarioError as e:
        raise ScenarioError(f"{path}: {e}") from None
