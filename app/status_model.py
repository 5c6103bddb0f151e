"""What the app says about itself: the tray's state and tooltip, the status window's numbers and
the swarm picture's rows, computed from the node's /health and /swarm answers. Pure functions."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.settings import is_demo_model

STARTING, IDLE, CONTRIBUTING, BUSY, ERROR = "starting", "idle", "contributing", "busy", "error"
STATES = (STARTING, IDLE, CONTRIBUTING, BUSY, ERROR)


@dataclass(frozen=True)
class NodeStatus:
    state: str
    headline: str  # one line: the tray's tooltip
    detail: str = ""  # more words: what to do, warnings
    model: str = ""
    serves: bool = False
    serving: tuple[int, int] | None = None
    assigned: tuple[int, int] | None = None
    num_layers: int | None = None
    served_tokens: int = 0
    served_requests: int = 0
    peer_id: str = ""
    demo: bool = False


def model_title(model: str, demo: bool = False) -> str:
    if demo or is_demo_model(model):
        return "the demo model"
    return model or "the model"


def summarize(phase: str, health: dict | None, swarm: dict | None = None, problem: str = "",
              contribute: bool = True, waiting_for_idle: bool = False, demo: bool = False) -> NodeStatus:
    """phase: the node process's state (stopped, starting, ready, stopping); problem: the last error;
    demo: the swarm runs the demo model."""
    if problem:
        return NodeStatus(ERROR, _first_sentence(problem), problem, demo=demo)
    if phase in ("starting", "stopping") or health is None:
        words = {"starting": "Starting Potluck…", "stopping": "Restarting Potluck's node…",
                 "ready": "Connecting to Potluck's node…"}
        return NodeStatus(STARTING, words.get(phase, "Potluck's node is not running"), demo=demo)
    model = str(health.get("model") or (swarm or {}).get("model") or "")
    demo = demo or is_demo_model(model)
    title = model_title(model, demo)
    num_layers = health.get("num_layers") or (swarm or {}).get("num_layers")
    serving, assigned = _range(health.get("serving")), _range(health.get("assigned"))
    tokens, requests = int(health.get("served_tokens") or 0), int(health.get("served_requests") or 0)
    common = dict(model=model, serves=bool(health.get("serves")), serving=serving, assigned=assigned,
                  num_layers=num_layers, served_tokens=tokens, served_requests=requests,
                  peer_id=str(health.get("peer_id") or ""), demo=demo)
    detail = ""
    if swarm is not None and not swarm.get("covered", True):
        detail = ("The swarm's computers do not hold every layer of the model yet, so chat cannot answer. "
                  "Turn on Contribute compute or add another computer to the swarm.")
    if health.get("serves"):
        if serving:
            state = BUSY if int(health.get("resident_requests") or 0) > 0 else CONTRIBUTING
            headline = f"Serving layers {serving[0]}-{serving[1] - 1} of {title} · {tokens:,} tokens served"
        elif assigned:
            state, headline = CONTRIBUTING, f"Loading layers {assigned[0]}-{assigned[1] - 1} of {title}…"
        else:
            state = CONTRIBUTING
            headline = f"Contributing: waiting for the swarm to give this computer layers of {title}"
        return NodeStatus(state, headline, detail, **common)
    if contribute and waiting_for_idle:
        headline = f"Waiting for this computer to be idle before contributing · chat with {title}"
    elif contribute:
        headline = f"Joining the swarm as a contributor… · chat with {title}"
    else:
        headline = f"Not contributing · chat with {title}"
    return NodeStatus(IDLE, headline, detail, **common)


def _range(value) -> tuple[int, int] | None:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) and len(value) == 2 else None


def _first_sentence(text: str) -> str:
    head = text.split(". ", 1)[0].strip()
    return head if head.endswith((".", ":", "!", "?")) else head + "."


# ---- the swarm picture ----

@dataclass(frozen=True)
class SwarmRow:
    label: str
    assigned: tuple[int, int] | None
    ready: bool
    serves: bool
    this_computer: bool
    load: float  # 0..1, the node's recent busy fraction
    tokens: int


@dataclass(frozen=True)
class SwarmPicture:
    num_layers: int
    rows: list[SwarmRow] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)  # per layer: how many ready nodes hold it

    @property
    def bottleneck(self) -> list[int]:
        """Layers held by the fewest ready nodes (the ones a failure or a load spike hurts first)."""
        if not self.replicas:
            return []
        low = min(self.replicas)
        return [i for i, n in enumerate(self.replicas) if n == low]

    @property
    def covered(self) -> bool:
        return bool(self.replicas) and min(self.replicas) > 0


def swarm_picture(swarm: dict | None) -> SwarmPicture:
    if not swarm or not swarm.get("num_layers"):
        return SwarmPicture(0)
    layers = int(swarm["num_layers"])
    me = (swarm.get("this_node") or {}).get("peer_id")
    rows, replicas = [], [0] * layers
    for node in swarm.get("nodes") or []:
        assigned = _range(node.get("assigned"))
        ready = assigned is not None and _range(node.get("ready")) == assigned
        if ready:
            for i in range(max(assigned[0], 0), min(assigned[1], layers)):
                replicas[i] += 1
        profile = node.get("profile") or {}
        device = profile.get("device_name") or profile.get("backend") or ""
        who = "this computer" if node.get("peer_id") == me else "…" + str(node.get("peer_id", ""))[-6:]
        rows.append(SwarmRow(label=f"{who} · {device}" if device else who, assigned=assigned, ready=ready,
                             serves=bool(node.get("serves")), this_computer=node.get("peer_id") == me,
                             load=float(node.get("utilization") or 0.0), tokens=int(node.get("served_tokens") or 0)))
    return SwarmPicture(layers, rows, replicas)


def hardware_lines(swarm: dict | None) -> list[tuple[str, str]]:
    """This computer's measured profile, as (label, value) rows."""
    me = ((swarm or {}).get("this_node") or {}).get("peer_id")
    node = next((n for n in (swarm or {}).get("nodes") or [] if n.get("peer_id") == me), None)
    profile = (node or {}).get("profile") or {}
    if not profile:
        return []
    gib = 2 ** 30
    rows = [("Device", f"{profile.get('device_name', '?')} ({profile.get('backend', '?')}, "
                       f"{profile.get('vendor', '?')})")]
    if profile.get("memory_total_bytes"):
        rows.append(("Memory", f"{profile['memory_total_bytes'] / gib:.1f} GiB total, "
                               f"{profile.get('memory_free_bytes', 0) / gib:.1f} GiB free"))
    if node and node.get("memory_bytes"):
        rows.append(("Lent to the swarm", f"{node['memory_bytes'] / gib:.2f} GiB"))
    if profile.get("matmul_tflops_half") is not None:
        rows.append(("Measured compute", f"{profile['matmul_tflops_half']:.2f} TFLOP/s (16-bit), "
                                         f"{profile.get('matmul_tflops_fp32', 0):.2f} TFLOP/s (32-bit)"))
    if profile.get("bandwidth_gbs") is not None:
        rows.append(("Measured memory bandwidth", f"{profile['bandwidth_gbs']:.1f} GB/s"))
    return rows
