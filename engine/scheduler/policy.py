"""The interface every scheduling policy implements, and the registry of policies by name.

A policy decides three things only: which layers each node serves (allocation, on start and on
every join or leave), which chain of nodes serves a request (routing), and whether a request
whose chain lost a node is re-routed or fails. Everything else - timing, memory, batching,
links - belongs to the simulator (or to the real swarm) and is the same for every policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .model import ModelShape
from .topology import NodeSpec, RttTable
from .workload import Slo, Workload

Assignment = dict[int, tuple[int, int]]  # node id -> layers [start, end)


@dataclass(frozen=True)
class SwarmContext:
    """What every policy is told up front."""

    model: ModelShape
    rtt: RttTable
    workload: Workload
    slo: Slo


@dataclass(frozen=True)
class Hop:
    node: int
    start: int
    end: int


@dataclass(frozen=True)
class RouteRequest:
    id: int
    prompt_tokens: int  # tokens to prefill (prompt, or prompt + generated after a re-route)
    kv_tokens: int  # KV cache the request needs: prompt + max_tokens


@dataclass
class LoadView:
    """Live per-node state a policy may read when routing (arrays indexed by node id)."""

    now: float
    ready: Sequence[bool]  # alive and weights loaded
    kv_free: Sequence[float]  # bytes of KV cache still free
    resident: Sequence[int]  # requests holding KV cache on the node
    busy_until: Sequence[float]  # when the node's current step ends
    utilization: Sequence[float] = ()  # recent busy fraction (moving average over a few seconds)
    # seconds of prompt work waiting at the node, as it reports it: prompt tokens not yet run, over
    # its chunk, times its recent step time (engine/swarm/stage.py, StageWorker.prompt_queue_s)
    prompt_queue_s: Sequence[float] = ()
    assignment_version: int = 0  # changes whenever the assignment does (lets policies cache)


class Policy:
    name = ""
    reroutes_on_failure = False
    # where the history's hidden states come from when a chain that lost a node replays only that
    # node's hop (see replacement): "stage", the stage before the lost one, which keeps what it sent
    # (engine/swarm/stage.py); "client", a client that relays every hop itself (Petals); None: the
    # request is re-routed whole and prefills its history again
    replays_from: str | None = None

    def __init__(self, ctx: SwarmContext):
        self.ctx = ctx

    def allocate(self, nodes: dict[int, NodeSpec]) -> Assignment:
        """Layers per node; empty (or partial) when the swarm cannot hold the model."""
        raise NotImplementedError

    def on_join(self, node: NodeSpec, nodes: dict[int, NodeSpec], current: Assignment) -> Assignment:
        """New assignment after a join; nodes includes the newcomer. Default: it stays idle."""
        return current

    def on_leave(self, node_id: int, nodes: dict[int, NodeSpec], current: Assignment) -> Assignment:
        """New assignment after a leave; nodes no longer holds the leaver, current still does."""
        return {n: r for n, r in current.items() if n != node_id}

    def rebalance(self, nodes: dict[int, NodeSpec], current: Assignment, view: LoadView) -> Assignment | None:
        """Called periodically; return a new assignment to move layers, or None."""
        return None

    def route(self, request: RouteRequest, nodes: dict[int, NodeSpec], current: Assignment,
              view: LoadView) -> list[Hop] | None:
        """A contiguous chain covering layers 0..L, or None to make the request wait."""
        raise NotImplementedError

    def replacement(self, chain: list[Hop], lost: int, kv_tokens: int, nodes: dict[int, NodeSpec],
                    current: Assignment, view: LoadView) -> list[Hop] | None:
        """Hops that take over chain[lost]'s layers (exactly those) after its node has gone, so the
        rest of the chain keeps its cache and only that hop prefills the history again; None: re-route
        the whole request. Only asked when replays_from is set."""
        return None


POLICY_NAMES = ("potluck", "petals", "exo", "parallax")


def make_policy(name: str, ctx: SwarmContext) -> Policy:
    if name == "potluck":
        from .potluck import PotluckPolicy as cls
    elif name == "petals":
        from .petals import PetalsPolicy as cls
    elif name == "exo":
        from .exo import ExoPolicy as cls
    elif name == "parallax":
        from .parallax import ParallaxPolicy as cls
    else:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICY_NAMES)}")
    return cls(ctx)


def covers_all_layers(assignment: Assignment, num_layers: int) -> bool:
    covered = [False] * num_layers
    for start, end in assignment.values():
        for layer in range(start, end):
            covered[layer] = True
    return all(covered)
