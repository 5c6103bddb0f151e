"""The scheduler role of the host node: who is in the swarm, who serves which layers, which route
a request takes.

State is soft, rebuilt from joins and heartbeats: a node that stops sending heartbeats is evicted
after `evict_after_s`. Placement and routing are the scheduling policy's (engine.scheduler); this
class turns live members into the policy's inputs and keeps the policy's answers.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from engine.scheduler.model import ModelShape
from engine.scheduler.policy import Hop as SchedulerHop
from engine.scheduler.policy import LoadView, RouteRequest, SwarmContext, covers_all_layers, make_policy
from engine.scheduler.topology import NodeSpec, RttTable
from engine.scheduler.workload import Slo, Workload
from engine.swarm.protocol import Hop

REGION = "swarm"  # the live swarm measures RTT per link; placement sees one region for now
MAX_REPORTED_QUEUE_S = 3600.0  # a node's reported prompt queue is clipped here (a bad report stays bounded)


class NoRoute(RuntimeError):
    """No chain of ready nodes covers the model: the message says why, for the user."""


@dataclass
class Member:
    index: int
    peer_id: str
    serves: bool
    spec: NodeSpec
    profile: dict
    joined_at: float = field(default_factory=time.monotonic)
    last_heard: float = field(default_factory=time.monotonic)
    ready_range: tuple[int, int] | None = None
    resident: int = 0
    kv_free_bytes: float = 0.0
    served_tokens: int = 0
    utilization: float = 0.0  # busy fraction of the node's model thread, recently
    step_ms: float = 0.0  # the node's recent time per forward pass
    prompt_queue_s: float = 0.0  # seconds of prompt work waiting at the node, as it reports it


class SwarmScheduler:
    def __init__(self, shape: ModelShape, model_ref: str, max_context: int, policy: str = "potluck",
                 evict_after_s: float = 5.0):
        self.shape, self.model_ref, self.evict_after_s = shape, model_ref, evict_after_s
        # The KV cache reserved per session follows a typical chat turn, bounded by the context.
        workload = Workload(arrival_rate_per_s=1.0, prompt_tokens_mean=min(512, max_context // 4),
                            output_tokens_mean=min(256, max_context // 8), max_context=max_context)
        ctx = SwarmContext(model=shape, rtt=RttTable({(REGION, REGION): 1e-3}), workload=workload,
                           slo=Slo(ttft_p99_s=10.0, tpot_p50_s=0.5))
        self.policy = make_policy(policy, ctx)
        self.members: dict[str, Member] = {}
        self.assignment: dict[int, tuple[int, int]] = {}
        self.version = 0  # bumps when membership or assignment changes
        self._next_index = 0
        self._lock = threading.Lock()

    # ---- membership ----

    def join(self, peer_id: str, serves: bool, memory_bytes: float, profile: dict) -> Member:
        with self._lock:
            old = self.members.get(peer_id)
            if old is not None:  # a restart with the same identity: no ghost node
                self._remove(old)
            spec = NodeSpec(id=self._next_index, memory_bytes=memory_bytes,
                            tflops=max(float(profile.get("matmul_tflops_half") or 0.0), 1e-3),
                            bandwidth_gbs=max(float(profile.get("bandwidth_gbs") or 0.0), 1e-3),
                            region=REGION, uplink_mbps=10_000.0)
            member = Member(self._next_index, peer_id, serves, spec, profile)
            self._next_index += 1
            self.members[peer_id] = member
            if serves:
                servers = self._servers()
                if len(self.assignment) == 0 or not covers_all_layers(self.assignment, self.shape.num_layers):
                    self.assignment = self.policy.allocate(servers)
                else:
                    self.assignment = self.policy.on_join(spec, servers, self.assignment)
            self.version += 1
            return member

    def heartbeat(self, peer_id: str, ready_range: tuple[int, int] | None, resident: int, kv_free_bytes: float,
                  served_tokens: int, utilization: float = 0.0, prompt_queue_s: float = 0.0) -> Member | None:
        with self._lock:
            member = self.members.get(peer_id)
            if member is None:
                return None
            member.last_heard = time.monotonic()
            member.ready_range, member.resident = ready_range, resident
            member.kv_free_bytes, member.served_tokens = kv_free_bytes, served_tokens
            member.utilization = min(max(utilization, 0.0), 1.0)
            member.prompt_queue_s = min(prompt_queue_s, MAX_REPORTED_QUEUE_S) if prompt_queue_s > 0 else 0.0
            return member

    def leave(self, peer_id: str) -> bool:
        with self._lock:
            member = self.members.get(peer_id)
            if member is None:
                return False
            self._remove(member)
            return True

    def evict_stale(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            stale = [m for m in self.members.values() if now - m.last_heard > self.evict_after_s]
            for member in stale:
                self._remove(member)
        return [m.peer_id for m in stale]

    def assignment_of(self, peer_id: str) -> tuple[int, int] | None:
        member = self.members.get(peer_id)
        return self.assignment.get(member.index) if member else None

    def _servers(self) -> dict[int, NodeSpec]:
        return {m.index: m.spec for m in self.members.values() if m.serves}

    def _remove(self, member: Member) -> None:
        del self.members[member.peer_id]
        if member.index in self.assignment:
            servers = self._servers()
            self.assignment = self.policy.on_leave(member.index, servers, self.assignment)
            if not covers_all_layers(self.assignment, self.shape.num_layers) and servers:
                self.assignment = self.policy.allocate(servers)
        self.version += 1

    # ---- routing ----

    def _view(self, avoid: set[str]) -> LoadView:
        """The members' last reported load, with those in avoid not ready (call under the lock)."""
        ready = [False] * self._next_index
        kv_free = [0.0] * self._next_index
        resident = [0] * self._next_index
        utilization = [0.0] * self._next_index
        prompt_queue_s = [0.0] * self._next_index
        for m in self.members.values():
            assigned = self.assignment.get(m.index)
            ready[m.index] = m.peer_id not in avoid and assigned is not None and m.ready_range == assigned
            kv_free[m.index] = m.kv_free_bytes
            resident[m.index] = m.resident
            utilization[m.index] = m.utilization
            prompt_queue_s[m.index] = m.prompt_queue_s
        return LoadView(now=time.monotonic(), ready=ready, kv_free=kv_free, resident=resident,
                        busy_until=[0.0] * self._next_index, utilization=utilization,
                        prompt_queue_s=prompt_queue_s, assignment_version=self.version)

    def replacement(self, route: list[Hop], lost: int, kv_tokens: int, avoid: set[str] = frozenset()) -> Hop:
        """A ready node to take over route[lost] (the same layers) with cache room for the request."""
        with self._lock:
            index = {m.peer_id: m.index for m in self.members.values()}
            by_index = {m.index: m for m in self.members.values()}
            view = self._view(set(avoid) | {h.peer_id for h in route})
            chain = [SchedulerHop(index.get(h.peer_id, -1), h.start, h.end) for h in route]
            hops = self.policy.replacement(chain, lost, kv_tokens, self._servers(), self.assignment, view)
            if not hops or len(hops) != 1:
                lost_hop = route[lost]
                raise NoRoute(f"No ready node with room serves layers {lost_hop.start}-{lost_hop.end - 1} now.")
            return Hop(by_index[hops[0].node].peer_id, hops[0].start, hops[0].end)

    def route(self, prompt_tokens: int, kv_tokens: int, avoid: set[str] = frozenset()) -> list[Hop]:
        with self._lock:
            by_index = {m.index: m for m in self.members.values()}
            view = self._view(avoid)
            if not covers_all_layers(self.assignment, self.shape.num_layers):
                raise NoRoute(self.too_small_message())
            hops = self.policy.route(RouteRequest(0, prompt_tokens, kv_tokens), self._servers(),
                                     self.assignment, view)
            if not hops:
                raise NoRoute("No chain of ready nodes with room for this conversation covers every layer right "
                              "now: nodes may still be loading their layers, one may have just left, or their KV "
                              "cache is full. Try again in a moment, or ask for fewer tokens (max_tokens).")
            return [Hop(by_index[h.node].peer_id, h.start, h.end) for h in hops]

    def too_small_message(self) -> str:
        offered = sum(m.spec.memory_bytes for m in self.members.values() if m.serves)
        weights = self.shape.total_weight_bytes
        kv = self.shape.kv_bytes(self.policy.ctx.workload.kv_tokens_mean, self.shape.num_layers)
        return (f"The swarm is too small for this model: it needs about {_size(weights)} for its weights and "
                f"{_size(kv)} of KV cache per conversation, and its serving nodes offer {_size(offered)}. "
                f"Add a computer (or raise --max-memory) to contribute about "
                f"{_size(max(weights + kv - offered, 0))} more.")

    # ---- for /swarm ----

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "model": self.model_ref, "num_layers": self.shape.num_layers, "version": self.version,
                "covered": covers_all_layers(self.assignment, self.shape.num_layers),
                "nodes": [{
                    "peer_id": m.peer_id, "serves": m.serves, "assigned": self.assignment.get(m.index),
                    "ready": m.ready_range, "resident_requests": m.resident, "kv_free_bytes": m.kv_free_bytes,
                    "served_tokens": m.served_tokens, "memory_bytes": m.spec.memory_bytes,
                    "utilization": round(m.utilization, 3), "step_ms": round(m.step_ms, 2),
                    "profile": m.profile, "seconds_since_heartbeat": round(time.monotonic() - m.last_heard, 2),
                } for m in sorted(self.members.values(), key=lambda m: m.index)],
            }


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} bytes"
