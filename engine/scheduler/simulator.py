"""Discrete-event simulator of a swarm serving requests under one scheduling policy.

Physics (identical for every policy; nothing here knows which policy runs):
- a node runs one step at a time over everything queued at it (continuous batching): it reads
  the weights of the layers the batch touches once, each request's KV cache, and does the FLOPs
  of every token; step time comes from engine.scheduler.perf. A step prefills at most the node's
  chunk of prompt tokens (perf.prefill_chunk_tokens: the roofline ridge of its measured FLOP/s and
  bandwidth), the rest of a started prompt first, one chunk per request per step; each chunk's
  hidden states move on as soon as it is done, so the stages of a chain work on a long prompt at
  the same time (engine/swarm/stage.py batches and forwards the same way);
- a hop costs RTT/2 plus serialisation on the sender's one uplink: decode messages (one hidden
  state per token; the last stage sends the sampled token id back to the first, a few bytes that
  cost only RTT/2, as engine/swarm/stage.py does) go first, one after another, and every byte they
  send pushes the prompts' hidden states (bulk transfers, one after another) back by its time, so
  decode and prompts together never send faster than the uplink (a transfer already under way
  keeps its finish time: the error is at most one transfer's overlap per busy period);
- a request reserves KV cache (prompt + max_tokens) on every node of its chain when admitted and
  frees it when done; if the chain has no room it waits and is retried when memory frees;
- nodes join, leave (abruptly) and reload weights when their layers change; a request that lost
  a node mid-answer keeps the rest of its chain if the policy replays lost hops and names a
  replacement (see Simulator.replay: the history's hidden states are resent by the stage before,
  behind its other traffic, or by a client that relays every hop), else it is re-routed and
  re-prefilled from the origin's token history when the policy supports that, else it fails.
Deterministic for a seed: arrivals and membership changes are drawn before the run.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field

from .model import ModelShape
from .perf import STEP_OVERHEAD_S, prefill_chunk_tokens
from .policy import Assignment, Hop, LoadView, Policy, RouteRequest, SwarmContext, make_policy
from .topology import NodeSpec, RttTable
from .workload import Slo, Workload, sample_request

MIN_MICROBATCH = 8  # a step takes at least this many decode tokens when they are queued
REBALANCE_PERIOD_S = 60.0
UTILIZATION_WINDOW_S = 5.0  # time constant of the busy-fraction average nodes report
PENDING_SCAN = 8  # waiting requests retried per freed slot

ARRIVAL, STEP_DONE, DELIVER, LEAVE, JOIN, READY, REBALANCE = range(7)


class PolicyError(RuntimeError):
    """A policy broke an invariant (memory overcommitted, broken chain): a bug, not a user error."""


@dataclass(frozen=True)
class MembershipEvent:
    time: float
    kind: int  # JOIN or LEAVE
    node: NodeSpec


@dataclass(frozen=True)
class SimConfig:
    model: ModelShape
    rtt: RttTable
    workload: Workload
    slo: Slo
    initial_nodes: tuple[NodeSpec, ...]
    membership: tuple[MembershipEvent, ...]  # joins and leaves after t=0, in time order
    duration_s: float
    warmup_s: float
    seed: int
    load_gbs: float = 2.0  # weight loading speed when a node's layers change


class Request:
    __slots__ = ("id", "arrival", "prompt", "output", "generated", "hops", "epoch", "first_t", "last_t",
                 "done_t", "failed", "holds", "prefill", "measured", "reroutes", "replays", "replay_end")

    def __init__(self, rid: int, arrival: float, prompt: int, output: int, measured: bool):
        self.id, self.arrival, self.prompt, self.output = rid, arrival, prompt, output
        self.generated = 0
        self.hops: list[Hop] = []
        self.epoch = 0
        self.first_t = self.last_t = self.done_t = None
        self.failed = False
        self.holds: list[tuple[int, float]] = []
        self.prefill = prompt
        self.measured = measured
        self.reroutes = 0
        self.replays = 0
        self.replay_end = -1  # while a lost hop's replacement replays the history: the hop after it


class Node:
    __slots__ = ("spec", "alive", "span", "kv_cap", "queue", "busy", "uplink_free", "bulk_free", "requests",
                 "load_token", "region", "chunk", "step_s", "replay_free")

    def __init__(self, spec: NodeSpec, region: int, chunk: int):
        self.spec = spec
        self.region = region
        self.chunk = chunk  # prompt tokens a step prefills (perf.prefill_chunk_tokens)
        self.alive = True
        self.span: tuple[int, int] | None = None
        self.kv_cap = 0.0
        self.queue: list = []
        self.busy = False
        self.uplink_free = 0.0  # decode messages queue here, ahead of ...
        self.bulk_free = 0.0  # ... prompts' hidden states, which their bytes push back (one uplink)
        self.replay_free = 0.0  # ... and replayed histories, which both push back (see replay)
        self.requests: dict[int, Request] = {}  # by id: insertion order keeps runs reproducible
        self.load_token = 0
        self.step_s = 0.0  # moving average of its steps' time, as a live stage keeps (step_ms)


@dataclass
class SimResult:
    completed: int
    failed: int
    unfinished: int
    measured: int
    output_tok_s: float
    ttft_s: list[float]
    tpot_s: list[float]
    route_ms: list[float]
    alloc_ms: float
    reroutes: int
    events: int
    wall_s: float
    usage: list[dict] = field(default_factory=list)  # per hardware group over the window, see Simulator.usage
    replays: int = 0  # lost hops replayed (the rest of the chain kept), see Simulator.replay


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.inf
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


class Simulator:
    def __init__(self, cfg: SimConfig, policy: Policy):
        self.cfg = cfg
        self.policy = policy
        self.model = cfg.model
        self.L = cfg.model.num_layers
        regions, matrix = cfg.rtt.matrix()
        self.region_index = {r: i for i, r in enumerate(regions)}
        self.half_rtt = [[x / 2 for x in row] for row in matrix]
        self.nodes: dict[int, Node] = {}
        self.specs: dict[int, NodeSpec] = {}
        self.assignment: Assignment = {}
        self.view = LoadView(now=0.0, ready=[], kv_free=[], resident=[], busy_until=[], assignment_version=0,
                             utilization=[], prompt_queue_s=[])
        self.util_t: list[float] = []
        self.heap: list = []
        self.seq = 0
        self.now = 0.0
        self.pending: deque[Request] = deque()
        self.finished: list[Request] = []
        self.route_s: list[float] = []
        self.events = 0
        self.window_tokens = 0
        self.requests: list[Request] = []
        self.busy_s: list[float] = []  # per node id: seconds of steps started in the measured window
        self.flops_done: list[float] = []
        self.sent_s: list[float] = []  # per node id: seconds of uplink time taken by sends in the window

    # bookkeeping ---------------------------------------------------------------------------
    def push(self, t: float, kind: int, a=None, b=None) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, a, b))

    def add_node(self, spec: NodeSpec) -> Node:
        node = Node(spec, self.region_index[spec.region],
                    prefill_chunk_tokens(spec.flops_per_s, spec.bytes_per_s, self.model))
        self.nodes[spec.id] = node
        self.specs[spec.id] = spec
        v = self.view
        while len(v.ready) <= spec.id:
            v.ready.append(False)
            v.kv_free.append(0.0)
            v.resident.append(0)
            v.busy_until.append(0.0)
            v.utilization.append(0.0)
            v.prompt_queue_s.append(0.0)
            self.util_t.append(0.0)
            self.busy_s.append(0.0)
            self.flops_done.append(0.0)
            self.sent_s.append(0.0)
        return node

    def apply_assignment(self, new: Assignment, initial: bool = False) -> None:
        model = self.model
        old = self.assignment
        for nid in set(old) | set(new):
            if old.get(nid) == new.get(nid) and not initial:
                continue
            node = self.nodes.get(nid)
            if node is None or not node.alive:
                continue
            span = new.get(nid)
            if span is not None:
                s, e = span
                if not (0 <= s < e <= self.L):
                    raise PolicyError(f"{self.policy.name}: node {nid} got invalid layers {span}")
                weights = model.weight_bytes(s, e)
                if weights > node.spec.memory_bytes:
                    raise PolicyError(f"{self.policy.name}: node {nid} over memory "
                                      f"({weights / 1e9:.1f} GB of weights in {node.spec.memory_bytes / 1e9:.1f} GB)")
            for req in list(node.requests.values()):
                self.break_request(req)
            node.queue = []
            self.view.prompt_queue_s[nid] = 0.0
            node.span = span
            node.load_token += 1
            self.view.ready[nid] = False
            if span is None:
                node.kv_cap = 0.0
                self.view.kv_free[nid] = 0.0
                continue
            node.kv_cap = node.spec.memory_bytes - weights
            self.view.kv_free[nid] = node.kv_cap
            if initial:
                self.view.ready[nid] = True
            else:
                self.push(self.now + weights / (self.cfg.load_gbs * 1e9), READY, node, node.load_token)
        self.assignment = {n: r for n, r in new.items() if n in self.nodes and self.nodes[n].alive}
        self.view.assignment_version += 1

    # requests ------------------------------------------------------------------------------
    def try_admit(self, req: Request) -> bool | None:
        """True: admitted; False: route found but no room on it; None: no route now."""
        self.view.now = self.now
        t0 = time.perf_counter()
        hops = self.policy.route(RouteRequest(req.id, req.prefill, req.prompt + req.output),
                                 self.specs, self.assignment, self.view)
        self.route_s.append(time.perf_counter() - t0)
        if hops is None:
            return None
        self.check_chain(hops)
        kv_free = self.view.kv_free
        kvb = self.model.kv_bytes_per_token_layer * (req.prompt + req.output)
        needs = [(h.node, kvb * (h.end - h.start)) for h in hops]
        for nid, need in needs:
            if kv_free[nid] < need:
                return False
        for nid, need in needs:
            kv_free[nid] -= need
            self.view.resident[nid] += 1
            self.nodes[nid].requests[req.id] = req
        req.holds = needs
        req.hops = hops
        self.deliver(self.nodes[hops[0].node], [(req, req.epoch, 0, req.prefill, 0)])
        return True

    def check_chain(self, hops: list[Hop]) -> None:
        boundary = 0
        for h in hops:
            span = self.assignment.get(h.node)
            if (h.start != boundary or h.end <= h.start or span is None or not span[0] <= h.start
                    or h.end > span[1] or not self.view.ready[h.node]):
                raise PolicyError(f"{self.policy.name}: invalid chain {hops} (assignment {span})")
            boundary = h.end
        if boundary != self.L:
            raise PolicyError(f"{self.policy.name}: chain ends at layer {boundary}, not {self.L}")

    def release(self, req: Request) -> None:
        kv_free, resident = self.view.kv_free, self.view.resident
        for nid, need in req.holds:
            node = self.nodes[nid]
            if node.requests.pop(req.id, None) is not None:
                kv_free[nid] += need
                resident[nid] -= 1
        req.holds = []
        req.epoch += 1

    def break_request(self, req: Request) -> None:
        """A node on the request's chain is gone or reloading."""
        self.release(req)
        req.replay_end = -1
        if self.policy.reroutes_on_failure:
            req.prefill = req.prompt + req.generated
            req.reroutes += 1
            self.pending.appendleft(req)
        else:
            req.failed = True
            req.done_t = self.now
            self.finished.append(req)

    def admit_pending(self) -> None:
        scanned = 0
        pending = self.pending
        i = 0
        while i < len(pending) and scanned < PENDING_SCAN:
            req = pending[i]
            scanned += 1
            outcome = self.try_admit(req)
            if outcome is True:
                del pending[i]
            elif outcome is None:
                break
            else:
                i += 1

    # nodes ---------------------------------------------------------------------------------
    def deliver(self, node: Node, items: list) -> None:
        if not node.alive:
            return
        node.queue.extend(items)
        if not node.busy:
            self.start_step(node)

    def start_step(self, node: Node) -> None:
        """Run one step over everything queued (prefill in chunks). Items: (req, epoch, hop, end, done)
        where done = -1 for a decode token; for a prompt, its tokens [done, end) are here to prefill."""
        items = []
        rest = []
        budget = node.chunk
        lo, hi = self.L, 0
        kv_tokens = 0
        tokens = 0
        last_tokens = 0
        L = self.L
        # pipeline micro-batching: a stage takes about its share (resident / stages) of the decode
        # tokens per step, so a chain's requests spread over its stages instead of moving as one
        # clump that keeps a single stage busy at a time (the live stage takes everything queued;
        # there, arrival jitter does the spreading that this deterministic model would lack).
        # Letting a step take up to its roofline ridge (free below it: the weights are read once)
        # changed nothing measurable: volunteers at 230 requests/s 19966 against 19907 tok/s,
        # one arrival draw; heterogeneous at 21.75, two draws, 5407 against 5446.
        decode_cap = -1
        decodes = 0
        prompts = None  # requests with a chunk in this step (a later part of theirs waits)
        waiting = 0  # prompt tokens left for later steps
        for item in node.queue:
            req, epoch, h, tok, done = item
            if req.epoch != epoch:
                continue
            if done < 0:
                if decode_cap < 0:
                    decode_cap = max(MIN_MICROBATCH, -(-self.view.resident[node.spec.id] // len(req.hops)))
                if decodes >= decode_cap:
                    rest.append(item)
                    continue
                decodes += 1
            if done >= 0:  # prefill chunk
                if budget <= 0 or (prompts is not None and req in prompts):
                    rest.append(item)
                    waiting += tok - done
                    continue
                if prompts is None:
                    prompts = set()
                prompts.add(req)
                chunk = min(budget, tok - done)
                budget -= chunk
                waiting += tok - done - chunk
                item = (req, epoch, h, tok, done + chunk, done)  # + where this chunk began
                context = done + chunk
            else:
                chunk = 1
                context = req.prompt + req.generated
                item = (req, epoch, h, tok, done, done)
            hop = req.hops[h]
            s, e = hop.start, hop.end
            n = e - s
            if s < lo:
                lo = s
            if e > hi:
                hi = e
            kv_tokens += n * context
            tokens += n * chunk
            if e == L:
                last_tokens += 1
            items.append(item)
        node.queue = rest
        if not items:
            node.busy = False
            self.view.prompt_queue_s[node.spec.id] = 0.0
            return
        model = self.model
        spec = node.spec
        read = (hi - lo) * model.layer_bytes + kv_tokens * model.kv_bytes_per_token_layer
        flops = tokens * model.flops_per_token_layer
        if last_tokens:
            read += model.lm_head_bytes
            flops += last_tokens * 2 * model.lm_head_bytes / model.dtype_bytes
        dt = max(read / spec.bytes_per_s, flops / spec.flops_per_s) + STEP_OVERHEAD_S
        node.busy = True
        nid = spec.id
        node.step_s = 0.9 * node.step_s + 0.1 * dt if node.step_s else dt
        self.view.prompt_queue_s[nid] = waiting / node.chunk * node.step_s
        if self.now >= self.cfg.warmup_s:
            self.busy_s[nid] += dt
            self.flops_done[nid] += flops
        util = self.view.utilization
        decay = math.exp(-(self.now - self.util_t[nid]) / UTILIZATION_WINDOW_S)
        util[nid] = util[nid] * decay * math.exp(-dt / UTILIZATION_WINDOW_S) + 1 - math.exp(-dt / UTILIZATION_WINDOW_S)
        self.util_t[nid] = self.now + dt
        self.view.busy_until[nid] = self.now + dt
        self.push(self.now + dt, STEP_DONE, node, (items, node.load_token))

    def step_done(self, node: Node, items: list, token: int) -> None:
        if not node.alive or token != node.load_token:
            return
        now = self.now
        groups: dict[int, list] = {}  # hidden states for the next stage, by node
        returns: dict[int, list] = {}  # sampled token ids back to the first stage: a few bytes each
        hidden = self.model.hidden_state_bytes(1)
        finished_any = False
        for req, epoch, h, tok, done, began in items:
            if req.epoch != epoch:
                continue
            hops = req.hops
            if done >= 0:
                if done < tok:
                    node.queue.insert(0, (req, epoch, h, tok, done))  # the rest of the prompt, before newer work
                if h + 1 == req.replay_end:  # a replacement has replayed the history: only its last
                    if done < tok:           # position goes on, as the decode step the chain lost
                        continue
                    req.replay_end = -1
                    if h + 1 < len(hops):
                        groups.setdefault(hops[h + 1].node, []).append((req, epoch, h + 1, 1, -1))
                        continue
                elif h + 1 < len(hops):  # this chunk goes on now
                    groups.setdefault(hops[h + 1].node, []).append((req, epoch, h + 1, done, began))
                    continue
                elif done < req.prefill:
                    continue  # the first token comes with the prompt's last chunk
            elif h + 1 < len(hops):
                groups.setdefault(hops[h + 1].node, []).append((req, epoch, h + 1, tok, -1))
                continue
            req.generated += 1
            if now >= self.cfg.warmup_s:
                self.window_tokens += 1
            if req.first_t is None:
                req.first_t = now
            req.last_t = now
            if req.generated >= req.output:
                req.done_t = now
                self.release(req)
                self.finished.append(req)
                finished_any = True
                continue
            returns.setdefault(hops[0].node, []).append((req, req.epoch, 0, 1, -1))
        node.busy = False
        spec = node.spec
        uplink = spec.uplink_mbps * 1e6 / 8
        measuring = now >= self.cfg.warmup_s
        for dest_id, batch in groups.items():
            dest = self.nodes[dest_id]
            if dest is node:
                node.queue.extend(batch)
                continue
            latency = self.half_rtt[node.region][dest.region]
            prompts = [item for item in batch if item[4] >= 0]
            tokens = [item for item in batch if item[4] < 0] if prompts else batch
            for item in prompts:
                send = (item[3] - item[4]) * hidden / uplink
                t = max(now, node.bulk_free) + send
                node.bulk_free = t
                if node.replay_free > now:
                    node.replay_free += send
                if measuring:
                    self.sent_s[spec.id] += send
                self.push(t + latency, DELIVER, dest, [item])
            if not tokens:
                continue
            # one message per request, serialised on the uplink; delivered in small groups so the
            # next stage can start on the first ones while the rest are still on the wire
            per_item = hidden / uplink
            t = node.uplink_free if node.uplink_free > now else now
            for k in range(0, len(tokens), MIN_MICROBATCH):
                part = tokens[k:k + MIN_MICROBATCH]
                t += per_item * len(part)
                self.push(t + latency, DELIVER, dest, part)
            node.uplink_free = t
            node.bulk_free = max(node.bulk_free, now) + per_item * len(tokens)
            if measuring:
                self.sent_s[spec.id] += per_item * len(tokens)
            if node.replay_free > now:
                node.replay_free += per_item * len(tokens)
        for dest_id, batch in returns.items():
            dest = self.nodes[dest_id]
            if dest is node:
                node.queue.extend(batch)
            else:
                self.push(now + self.half_rtt[node.region][dest.region], DELIVER, dest, batch)
        if node.queue:
            self.start_step(node)
        if finished_any and self.pending:
            self.admit_pending()

    def replay(self, req: Request, lost: Node) -> bool:
        """Keep the request's chain but the lost node: the policy's replacement hops prefill the
        history from the hidden states at the lost hop's first layer, resent by the stage before
        it (which keeps what it sent) or by a client that relays every hop, and the decode step
        the chain lost goes on from there. Requests still prefilling their prompt are re-routed."""
        source = self.policy.replays_from
        if source is None or req.first_t is None or req.replay_end >= 0:
            return False
        hops = req.hops
        k = next(i for i, h in enumerate(hops) if h.node == lost.spec.id)
        prev = self.nodes[hops[k - 1].node] if k > 0 and source == "stage" else None
        if prev is not None and not prev.alive:
            return False
        self.view.now = self.now
        kv_tokens = req.prompt + req.output
        patch = self.policy.replacement(hops, k, kv_tokens, self.specs, self.assignment, self.view)
        if not patch:
            return False
        kvb = self.model.kv_bytes_per_token_layer * kv_tokens
        on_chain = {h.node for h in hops}
        boundary = hops[k].start
        for h in patch:
            span = self.assignment.get(h.node)
            if (h.node in on_chain or h.start != boundary or h.end <= h.start or span is None
                    or not span[0] <= h.start or h.end > span[1] or not self.view.ready[h.node]
                    or self.view.kv_free[h.node] < kvb * (h.end - h.start)):
                raise PolicyError(f"{self.policy.name}: invalid replacement {patch} for {hops[k]}")
            boundary = h.end
        if boundary != hops[k].end:
            raise PolicyError(f"{self.policy.name}: replacement {patch} does not cover {hops[k]}")
        req.replays += 1
        lost.requests.pop(req.id, None)
        req.holds = [(n, need) for n, need in req.holds if n != lost.spec.id]
        for h in patch:
            need = kvb * (h.end - h.start)
            self.view.kv_free[h.node] -= need
            self.view.resident[h.node] += 1
            self.nodes[h.node].requests[req.id] = req
            req.holds.append((h.node, need))
        req.epoch += 1  # whatever was in flight on the chain is lost with the node
        req.hops = hops[:k] + list(patch) + hops[k + 1:]
        req.replay_end = k + len(patch)
        item = [(req, req.epoch, k, req.prompt + req.generated, 0)]
        dest = self.nodes[patch[0].node]
        if prev is None:  # token ids from the origin, or a client's copy: no stage's uplink
            self.deliver(dest, item)
        else:
            # the stage resends on its uplink after its decode messages and prompts, which push the
            # resend back while it waits (the live stage sends it in parts between them)
            hidden = self.model.hidden_state_bytes(1)
            send = (req.prompt + req.generated) * hidden / (prev.spec.uplink_mbps * 1e6 / 8)
            t = max(self.now, prev.bulk_free, prev.replay_free) + send
            prev.replay_free = t
            if self.now >= self.cfg.warmup_s:
                self.sent_s[prev.spec.id] += send
            self.push(t + self.half_rtt[prev.region][dest.region], DELIVER, dest, item)
        return True

    def node_leaves(self, spec: NodeSpec) -> None:
        node = self.nodes.get(spec.id)
        if node is None or not node.alive:
            return
        node.alive = False
        node.queue = []
        self.view.prompt_queue_s[spec.id] = 0.0
        self.view.ready[spec.id] = False
        self.view.kv_free[spec.id] = 0.0
        del self.specs[spec.id]
        for req in list(node.requests.values()):
            if not self.replay(req, node):
                self.break_request(req)
        new = self.policy.on_leave(spec.id, dict(self.specs), dict(self.assignment))
        self.assignment.pop(spec.id, None)
        self.apply_assignment(new)
        if self.pending:
            self.admit_pending()

    def node_joins(self, spec: NodeSpec) -> None:
        self.add_node(spec)
        new = self.policy.on_join(spec, dict(self.specs), dict(self.assignment))
        self.apply_assignment(new)

    # run -----------------------------------------------------------------------------------
    def run(self) -> SimResult:
        cfg = self.cfg
        wall0 = time.perf_counter()
        for spec in cfg.initial_nodes:
            self.add_node(spec)
        t0 = time.perf_counter()
        initial = self.policy.allocate(dict(self.specs))
        alloc_ms = (time.perf_counter() - t0) * 1000
        self.apply_assignment(initial, initial=True)

        rng = random.Random(cfg.seed)
        t = 0.0
        rate = cfg.workload.arrival_rate_per_s
        stop = cfg.duration_s
        while rate > 0:
            t += rng.expovariate(rate)
            if t >= stop:
                break
            prompt, output = sample_request(rng, cfg.workload)
            req = Request(len(self.requests), t, prompt, output, t >= cfg.warmup_s)
            self.requests.append(req)
            self.push(t, ARRIVAL, req)
        for ev in cfg.membership:
            if ev.time < stop:
                self.push(ev.time, ev.kind, ev.node)
        self.push(REBALANCE_PERIOD_S, REBALANCE)

        heap = self.heap
        pop = heapq.heappop
        events = 0
        while heap:
            t, _, kind, a, b = pop(heap)
            if t > stop:
                break
            self.now = t
            events += 1
            if kind == DELIVER:
                self.deliver(a, b)
            elif kind == STEP_DONE:
                self.step_done(a, b[0], b[1])
            elif kind == ARRIVAL:
                if not self.pending:
                    if self.try_admit(a) is not True:
                        self.pending.append(a)
                else:
                    self.pending.append(a)
                    self.admit_pending()
            elif kind == LEAVE:
                self.node_leaves(a)
            elif kind == JOIN:
                self.node_joins(a)
                if self.pending:
                    self.admit_pending()
            elif kind == READY:
                if a.alive and b == a.load_token:
                    self.view.ready[a.spec.id] = True
                    if self.pending:
                        self.admit_pending()
            elif kind == REBALANCE:
                self.view.now = t
                new = self.policy.rebalance(dict(self.specs), dict(self.assignment), self.view)
                if new is not None:
                    self.apply_assignment(new)
                self.push(t + REBALANCE_PERIOD_S, REBALANCE)
        self.events = events
        return self.result(alloc_ms, time.perf_counter() - wall0)

    def result(self, alloc_ms: float, wall_s: float) -> SimResult:
        """Measured over the window [warmup, duration]: tokens produced in it; TTFT of requests that
        arrived early enough to get their first token within the TTFT objective (none: infinite);
        TPOT of every measured request that produced two tokens or more and did not fail, over the
        tokens it has so far: an answer still streaming at the window's end counts too, or a window
        shorter than a slow chain's answers would hide that chain (on the volunteer swarm at
        capacity 12% of the completed requests but 31% of all were over 0.5 s per token)."""
        cfg = self.cfg
        end = cfg.duration_s
        measured = [r for r in self.requests if r.measured]
        completed = [r for r in measured if r.done_t is not None and not r.failed]
        failed = sum(1 for r in measured if r.failed)
        ttft = []
        for r in measured:
            if r.failed or r.arrival > end - cfg.slo.ttft_p99_s:
                continue
            ttft.append(r.first_t - r.arrival if r.first_t is not None else math.inf)
        tpot = [(r.last_t - r.first_t) / (r.generated - 1) for r in measured if not r.failed and r.generated > 1]
        window = end - cfg.warmup_s
        unfinished = sum(1 for r in measured if r.done_t is None)
        return SimResult(
            completed=len(completed), failed=failed, unfinished=unfinished, measured=len(measured),
            output_tok_s=self.window_tokens / window, ttft_s=ttft, tpot_s=tpot,
            route_ms=[x * 1000 for x in self.route_s], alloc_ms=alloc_ms,
            reroutes=sum(r.reroutes for r in measured), events=self.events, wall_s=wall_s, usage=self.usage(),
            replays=sum(r.replays for r in measured))

    def usage(self) -> list[dict]:
        """Where the time goes, per hardware group over the measured window: the share of time busy
        with steps, the share of FLOP/s used, the share of uplink time spent sending, and the share
        of KV cache reserved at the end."""
        window = self.cfg.duration_s - self.cfg.warmup_s
        groups: dict[tuple, list[Node]] = {}
        for node in self.nodes.values():
            s = node.spec
            groups.setdefault((s.region, s.memory_bytes, s.tflops, s.bandwidth_gbs, s.uplink_mbps), []).append(node)
        rows = []
        for (region, memory, tflops, bandwidth, uplink), nodes in sorted(groups.items()):
            ids = [n.spec.id for n in nodes]
            cap = sum(n.kv_cap for n in nodes if n.alive and n.span)
            free = sum(self.view.kv_free[i] for i, n in zip(ids, nodes) if n.alive and n.span)
            rows.append({
                "region": region, "memory_gb": round(memory / 1e9, 3), "tflops": tflops,
                "bandwidth_gbs": bandwidth, "uplink_mbps": uplink, "nodes": len(nodes),
                "serving": sum(1 for n in nodes if n.alive and n.span),
                "busy": round(sum(self.busy_s[i] for i in ids) / (len(ids) * window), 4),
                "flops_used": round(sum(self.flops_done[i] for i in ids) / (len(ids) * tflops * 1e12 * window), 4),
                "uplink_used": round(sum(self.sent_s[i] for i in ids) / (len(ids) * window), 4),
                "kv_reserved": round(1 - free / cap, 4) if cap > 0 else 0.0,
            })
        return rows

def simulate(cfg: SimConfig, policy_name: str) -> SimResult:
    ctx = SwarmContext(cfg.model, cfg.rtt, cfg.workload, cfg.slo)
    return Simulator(cfg, make_policy(policy_name, ctx)).run()


def meets_slo(result: SimResult, slo: Slo) -> bool:
    if result.measured == 0:
        return True
    bad = result.failed / result.measured
    return (bad <= slo.max_failed_fraction and percentile(result.ttft_s, 99) <= slo.ttft_p99_s
            and percentile(result.tpot_s, 50) <= slo.tpot_p50_s)
