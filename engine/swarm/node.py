"""`potluck node`: one process per machine.

Every node has an identity (data dir), a measured profile, a transport, and an API for its local
user; it is the origin of that user's requests. A node started with --host also holds the
scheduler role; a serving node loads the layers the scheduler assigns it (in the background) and
reports them in its heartbeats. Handlers that Lattica calls only check, record and enqueue.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine.model.errors import CheckpointError
from engine.profile import time_prefill_steps
from engine.scheduler.model import ModelShape
from engine.scheduler.perf import prefill_chunk_tokens
from engine.swarm import q8
from engine.swarm.membership import NoRoute, SwarmScheduler
from engine.swarm.origin import RouteUnavailable
from engine.swarm.peer import Peer
from engine.swarm.protocol import Hop, max_frame_bytes, parse_route
from engine.swarm.transport import PeerError, Transport
from engine.swarm.wire import Message, WireError

log = logging.getLogger(__name__)

SWARM_PROTOCOL = "main"
LOAD_RETRY_S = 30.0  # after a failed shard load (disk full, download error)

MEMBER_ONLY = {"stage.forward", "stage.token", "stage.error", "stage.release", "stage.repair", "stage.status",
               "sched.heartbeat", "sched.leave", "sched.route", "sched.swarm"}


@dataclass
class NodeOptions:
    host: bool
    model: str | None
    join: str | None
    listen: tuple[str, int]
    api: tuple[str, int]
    data_dir: Path
    max_memory_gb: float | None = None
    client_only: bool = False
    backend: str = "auto"  # auto, torch or mlx: see engine.backends.choose
    device: str = "auto"
    heartbeat_s: float = 1.0
    evict_after_s: float = 5.0
    token_timeout_s: float = 30.0
    wire: str = "exact"  # with host: hidden states between stages in the model's dtype, or "q8" (engine/swarm/q8.py)


class Node:
    def __init__(self, opts: NodeOptions):
        from engine.api.server import ApiServer
        from engine.backends.choose import pick_backend
        from engine.model.resolve import resolve_model
        from engine.model.spec import ModelSpec
        from engine.model.tokenizer import load_tokenizer, stop_token_ids
        from engine.profile import load_or_measure

        self.opts = opts
        self.backend = pick_backend(opts.backend)
        self.stopping = threading.Event()
        self.profile = load_or_measure(opts.data_dir / "cache", opts.device, self.backend)
        self.serves = not opts.client_only
        self.assigned: tuple[int, int] | None = None
        self.ready_range: tuple[int, int] | None = None
        self.members: set[str] = set()
        self.members_version = -1
        self.recent = collections.deque(maxlen=32)  # routes and timings of this node's recent requests
        self.scheduler: SwarmScheduler | None = None
        self._loader: threading.Thread | None = None
        self._role_lock = threading.Lock()
        self.served_requests = 0  # requests whose layers this node ran (each hop counts its own)
        self._tokens_before = 0  # tokens served by shards this node no longer holds
        self._failed_load, self._failed_at = None, 0.0
        self.host_peer = opts.join.rsplit("/p2p/", 1)[-1] if opts.join else None

        self.peer = Peer(self._transport, self._route_for, token_timeout_s=opts.token_timeout_s,
                         replacement_for=self._replacement_for)
        self.peer.handlers.update({"sched.join": self._on_join, "sched.heartbeat": self._on_heartbeat,
                                   "sched.leave": self._on_leave, "sched.route": self._on_route,
                                   "sched.swarm": self._on_swarm})
        self.peer_id = self.peer.peer_id
        forward = self.peer.handlers["stage.forward"]

        def counted_forward(message: Message):
            reply = forward(message)
            if message.body.get("kind") == "prefill" and not message.body.get("offset"):  # a prompt's first part
                self.served_requests += 1
            return reply

        self.peer.handlers["stage.forward"] = counted_forward
        if opts.host:
            self.host_peer = self.peer_id
            self.model_ref = opts.model
            self.model_dir = resolve_model(opts.model, weights=False)
            spec = ModelSpec.from_checkpoint(self.model_dir)
            self.wire_dtype = spec.dtype
            self.wire_codec = "q8_0" if opts.wire == "q8" else None
            if self.wire_codec and not q8.supports(spec.hidden_size):
                raise CheckpointError(f"--wire q8 sends hidden states in blocks of {q8.BLOCK} values, and this "
                                      f"model's hidden size ({spec.hidden_size}) is not a multiple of "
                                      f"{q8.BLOCK}: host it with --wire exact.")
            shape = ModelShape(**spec.as_scheduler_shape(), wire=self.wire_codec or "exact")
            self.scheduler = SwarmScheduler(shape, opts.model,
                                            spec.max_position_embeddings, evict_after_s=opts.evict_after_s)
        joined = self._join()
        if not opts.host:
            self.model_ref, self.wire_dtype = joined["model"], joined["wire_dtype"]
            self.wire_codec = joined.get("wire_codec")
            if self.wire_codec not in (None, "q8_0"):
                raise CheckpointError(f"The swarm's host sends hidden states as {self.wire_codec!r}, which this "
                                      "version of Potluck cannot read: update Potluck on this computer.")
            self.model_dir = resolve_model(self.model_ref, weights=False)
            spec = ModelSpec.from_checkpoint(self.model_dir)
        self.spec = spec
        self.peer.transport.max_frame_bytes = max_frame_bytes(spec)
        self.context = spec.max_position_embeddings
        self.model_name = Path(self.model_ref).name if Path(self.model_ref).is_dir() else self.model_ref
        self.tokenizer = load_tokenizer(self.model_dir)
        self.stop_ids = stop_token_ids(self.model_dir, self.tokenizer)
        self.token, self.token_file = _api_token(opts.data_dir)
        self.api = ApiServer(self, *opts.api)
        self.api.start()
        self._heartbeats = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        self._heartbeats.start()

    # ---- transport and membership ----

    def _transport(self, on_message) -> Transport:
        def guarded(message: Message):
            if message.type in MEMBER_ONLY and not self._is_member(message.sender):
                raise WireError("not a member of this swarm: join it first")
            return on_message(message)

        boot = [self.opts.join] if self.opts.join else None
        lan = os.environ.get("POTLUCK_LAN_DISCOVERY") == "1"  # set by the desktop app's setting
        return Transport(self.opts.data_dir / "identity", self.opts.listen, SWARM_PROTOCOL, guarded, bootstrap=boot,
                         lan_discovery=lan)

    def _is_member(self, peer_id: str) -> bool:
        if self.scheduler is not None:
            return peer_id in self.scheduler.members or peer_id == self.peer_id
        return peer_id in self.members or peer_id in (self.peer_id, self.host_peer)

    def _memory_offer(self) -> float:
        if not self.serves:
            return 0.0
        free = 0.8 * self.profile.memory_free_bytes
        return min(free, self.opts.max_memory_gb * 1e9) if self.opts.max_memory_gb else free

    def _join(self) -> dict:
        body = {"serves": self.serves, "memory_bytes": self._memory_offer(), "profile": self.profile.as_dict()}
        body["profile"].pop("layer_ms", None)
        deadline = time.monotonic() + 30
        while True:
            try:
                return self.peer.transport.send(self.host_peer, "sched.join", body, timeout=5)
            except PeerError as exc:
                if time.monotonic() > deadline or "refused" in str(exc):
                    raise CheckpointError(f"Could not join the swarm at {self.opts.join}: {exc}. Check the "
                                          "address and that the host node is running.") from None
                time.sleep(0.2)  # the connection to the bootstrap peer is still being set up

    # ---- the scheduler role (host only) ----

    def _scheduler(self) -> SwarmScheduler:
        if self.scheduler is None:
            raise WireError("this node is not the swarm's scheduler")
        return self.scheduler

    def _on_join(self, message: Message) -> dict:
        body = message.body
        self._scheduler().join(message.sender, body["serves"], max(float(body["memory_bytes"]), 0.0),
                               _bounded_profile(body["profile"]))
        return {"model": self.model_ref, "wire_dtype": self.wire_dtype, "wire_codec": self.wire_codec,
                "version": self.scheduler.version}

    def _on_heartbeat(self, message: Message) -> dict:
        body, scheduler = message.body, self._scheduler()
        ready = body.get("ready")
        ready_range = tuple(ready) if isinstance(ready, list) and len(ready) == 2 else None
        member = scheduler.heartbeat(message.sender, ready_range, body["resident"], body["kv_free_bytes"],
                                     body["served_tokens"], body["utilization"], body.get("prompt_queue_s", 0.0))
        if member is None:
            raise WireError("not a member of this swarm: join it first")
        member.step_ms = float(body["step_ms"])
        reply = {"assignment": scheduler.assignment_of(message.sender), "version": scheduler.version}
        if body["known_version"] != scheduler.version:
            reply["members"] = sorted(scheduler.members)
        return reply

    def _on_leave(self, message: Message) -> None:
        self._scheduler().leave(message.sender)

    def _on_route(self, message: Message) -> dict:
        body = message.body
        avoid = {p for p in body["avoid"] if isinstance(p, str)}
        try:
            if "lost" in body:  # a node to take over one hop of a request's route
                if "route" not in body:
                    raise WireError("asking for a node to take over a hop needs the route")
                route = parse_route(body["route"], self.spec)
                if not 0 <= body["lost"] < len(route):
                    raise WireError(f"lost must name a hop of the route (0 to {len(route) - 1})")
                route = [self._scheduler().replacement(route, body["lost"], body["kv_tokens"], avoid)]
            else:
                route = self._scheduler().route(body["prompt_tokens"], body["kv_tokens"], avoid)
        except NoRoute as exc:
            raise WireError(str(exc)) from None
        return {"route": [[h.peer_id, h.start, h.end] for h in route]}

    def _on_swarm(self, message: Message) -> dict:
        return {"swarm": self._scheduler().snapshot()}

    # ---- this node's own life: heartbeats, loading its layers ----

    def _heartbeat_loop(self) -> None:
        missed = 0
        while not self.stopping.wait(self.opts.heartbeat_s if missed == 0 else min(self.opts.heartbeat_s, 0.5)):
            stage = self.peer.stage
            body = {"resident": len(stage.requests) if stage else 0,
                    "kv_free_bytes": self._kv_free(), "served_tokens": stage.served_tokens if stage else 0,
                    "utilization": stage.utilization() if stage else 0.0, "step_ms": stage.step_ms if stage else 0.0,
                    "prompt_queue_s": stage.prompt_queue_s() if stage else 0.0, "known_version": self.members_version}
            if self.ready_range:
                body["ready"] = list(self.ready_range)
            try:
                reply = self.peer.transport.send(self.host_peer, "sched.heartbeat", body, timeout=5)
                missed = 0
            except PeerError as exc:
                missed += 1
                log.warning("heartbeat to the scheduler failed (%d in a row): %s", missed, exc)
                if "join it first" in str(exc) and not self.stopping.is_set():
                    self._rejoin()
                continue
            if "members" in reply and isinstance(reply["members"], list):
                self.members = {p for p in reply["members"] if isinstance(p, str)}
                self.members_version = int(reply.get("version", -1))
            if self.scheduler is not None:
                for gone in self.scheduler.evict_stale():
                    log.warning("evicted %s: no heartbeat for %.0f s", gone[-8:], self.opts.evict_after_s)
            assignment = reply.get("assignment")
            self._assign(tuple(assignment) if isinstance(assignment, list) and len(assignment) == 2 else None)

    def _rejoin(self) -> None:
        try:
            self._join()
            self.members_version = -1
        except CheckpointError as exc:
            log.warning("%s", exc)

    def _kv_free(self) -> float:
        stage = self.peer.stage
        if stage is None or not self.assigned:
            return 0.0
        held = stage.runner.cache.bytes_held()
        if self.profile.backend != "cuda":  # the hidden states kept for replays share this memory
            held += stage.kept_bytes()
        return max(self._memory_offer() - self.spec.shard_bytes(*self.assigned) - held, 0.0)

    def _assign(self, target: tuple[int, int] | None) -> None:
        """Called on every heartbeat: make the served layers follow the assignment."""
        self.assigned = target
        if target is None:
            if self.ready_range is not None:
                self.ready_range = None
                self._count_tokens_of_old_stage()
                self.peer.stop_serving()
            return
        if target == self.ready_range or (self._loader is not None and self._loader.is_alive()):
            return  # serving it already, or a load is running (a later heartbeat retries if it was stale)
        if self._failed_load == target and time.monotonic() - self._failed_at < LOAD_RETRY_S:
            return
        self._loader = threading.Thread(target=self._load, args=(target,), name="shard-loader", daemon=True)
        self._loader.start()

    def _load(self, target: tuple[int, int]) -> None:
        from engine.backends.choose import make_runner
        from engine.model.resolve import resolve_model

        try:
            path = resolve_model(self.model_ref, layers=target)
            runner = make_runner(self.backend, path, *target, device=self.opts.device)
        except Exception as exc:
            log.error("could not load layers %s (retrying in %.0f s): %s", target, LOAD_RETRY_S, exc)
            self._failed_load, self._failed_at = target, time.monotonic()
            return
        if self.assigned != target:
            return  # reassigned while loading
        self._count_tokens_of_old_stage()
        self.peer.serve(runner, self.wire_dtype, self._prefill_chunk_tokens(runner), wire_codec=self.wire_codec)
        self.ready_range = target
        log.info("serving layers %d-%d", target[0], target[1] - 1)

    def _prefill_chunk_tokens(self, runner) -> int:
        """Prompt tokens per step for this machine: from its measured profile (as the scheduler's
        simulator assumes), and at least what keeps the shard's own per-step cost, timed here,
        a small share of each step (it matters on CPUs)."""
        flops = max(self.profile.matmul_tflops_half, 1e-3) * 1e12
        fixed, per_token = time_prefill_steps(runner)
        chunk = prefill_chunk_tokens(flops, max(self.profile.bandwidth_gbs, 1e-3) * 1e9,
                                     ModelShape(**runner.spec.as_scheduler_shape()), fixed, per_token)
        log.info("prefill in chunks of %d tokens (a step costs %.1f ms + %.3f ms per token here)",
                 chunk, fixed * 1e3, per_token * 1e3)
        return chunk

    def _count_tokens_of_old_stage(self) -> None:
        if self.peer.stage is not None:
            self._tokens_before += self.peer.stage.served_tokens

    def set_serving(self, serves: bool) -> dict:
        """Switch this node's role at run time (the app's "Contribute compute" toggle): join the
        swarm again with the new role under the same peer id; the scheduler replaces the member and
        re-allocates, and the next heartbeat loads or drops this node's layers. The node goes on
        running as a client either way, so its user's chat keeps working."""
        with self._role_lock:
            if serves != self.serves:
                old = self.serves
                self.serves = serves
                try:
                    self._join()
                except CheckpointError:
                    self.serves = old
                    raise
                self.members_version = -1
        return self.health()

    # ---- what the API and the origin ask ----

    def _route_for(self, prompt_tokens: int, kv_tokens: int, avoid: set[str]) -> list[Hop]:
        body = {"prompt_tokens": prompt_tokens, "kv_tokens": min(kv_tokens, self.context), "avoid": sorted(avoid)}
        try:
            reply = self.peer.transport.send(self.host_peer, "sched.route", body, timeout=10)
        except PeerError as exc:
            raise RouteUnavailable(str(exc).split("refused sched.route: ")[-1]) from None
        return [Hop(p, s, e) for p, s, e in reply["route"]]

    def _replacement_for(self, route: list[Hop], lost: int, kv_tokens: int, avoid: set[str]) -> Hop:
        body = {"prompt_tokens": 0, "kv_tokens": min(kv_tokens, self.context), "avoid": sorted(avoid),
                "route": [[h.peer_id, h.start, h.end] for h in route], "lost": lost}
        try:
            reply = self.peer.transport.send(self.host_peer, "sched.route", body, timeout=10)
        except PeerError as exc:
            raise RouteUnavailable(str(exc).split("refused sched.route: ")[-1]) from None
        if len(reply["route"]) != 1:
            raise RouteUnavailable("the scheduler named no single node for the lost hop")
        return Hop(*reply["route"][0])

    def new_result(self):
        from engine.swarm.chat import ChatResult

        return ChatResult()

    def chat(self, request, result):
        from engine.api.schema import ApiError
        from engine.swarm.chat import run_chat

        pieces = run_chat(self.peer.origin, self.tokenizer, self.stop_ids, request, result)

        def guarded():
            try:
                yield from pieces
            except RouteUnavailable as exc:
                raise ApiError(503, f"The swarm cannot answer right now: {exc}", kind="service_unavailable") \
                    from None
            finally:
                pieces.close()
                if result.routes:
                    self.recent.append({"at": time.time(), "routes": result.routes, "ttft_s": result.ttft_s,
                                        "tokens_per_s": result.tokens_per_s,
                                        "completion_tokens": result.completion_tokens})
        return guarded()

    def health(self) -> dict:
        stage = self.peer.stage
        return {"status": "ok", "peer_id": self.peer_id, "model": self.model_name, "scheduler": self.host_peer,
                "backend": self.backend, "wire": self.wire_codec or self.wire_dtype,
                "serves": self.serves, "serving": list(self.ready_range) if self.ready_range else None,
                "assigned": list(self.assigned) if self.assigned else None,
                "num_layers": self.spec.num_layers, "served_requests": self.served_requests,
                "served_tokens": self._tokens_before + (stage.served_tokens if stage else 0),
                "resident_requests": len(stage.requests) if stage else 0}

    def swarm(self) -> dict:
        if self.scheduler is not None:
            snapshot = self.scheduler.snapshot()
        else:
            try:
                snapshot = self.peer.transport.send(self.host_peer, "sched.swarm", {}, timeout=5)["swarm"]
            except PeerError as exc:
                from engine.api.schema import ApiError

                raise ApiError(503, f"The swarm's scheduler cannot be reached: {exc}",
                               kind="service_unavailable") from None
        snapshot["this_node"] = self.health()
        snapshot["recent_requests"] = list(self.recent)
        snapshot["refused_messages"] = dict(self.peer.transport.refused)
        snapshot["recoveries"] = self.peer.origin.recoveries
        snapshot["replays"] = self.peer.origin.replays  # recoveries that replayed one hop
        return snapshot

    # ---- lifetime ----

    def ready_line(self) -> str:
        info = {"peer_id": self.peer_id, "multiaddr": self.peer.transport.multiaddr, "api": self.api.url,
                "token_file": str(self.token_file)}
        return "READY " + json.dumps(info)

    def wait(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())
        parent_alive = _parent_watch()
        while not self.stopping.wait(0.5):
            if not parent_alive():
                log.warning("the app that started this node has gone: stopping")
                break

    def close(self) -> None:
        self.stopping.set()
        if not self.opts.host:
            try:
                self.peer.transport.send(self.host_peer, "sched.leave", {}, timeout=3)
            except PeerError:
                pass
        self.api.close()
        self.peer.close()


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _api_token(data_dir: Path) -> tuple[str, Path]:
    path = data_dir / "api-token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token, path
    token = secrets.token_urlsafe(32)
    path.touch(mode=0o600)
    path.write_text(token)
    return token, path


def _parent_watch():
    """With $POTLUCK_PARENT_PID (set by the desktop app), a function that says whether that process
    still runs: a node never outlives the app that started it, even when the app crashes."""
    pid = os.environ.get("POTLUCK_PARENT_PID", "")
    if not pid.isdigit():
        return lambda: True
    import psutil

    try:
        parent = psutil.Process(int(pid))
    except psutil.Error:
        return lambda: False
    return lambda: parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE


def _bounded_profile(profile: dict) -> dict:
    """Keep the numbers the scheduler and /swarm show; drop anything else a peer sends."""
    keep = ("backend", "vendor", "device_name", "memory_total_bytes", "memory_free_bytes", "memory_usable_bytes",
            "cpu_cores",
            "matmul_tflops_fp32", "matmul_tflops_half", "bandwidth_gbs")
    return {k: profile[k] for k in keep if isinstance(profile.get(k), (str, int, float))
            and not isinstance(profile.get(k), bool) and len(str(profile[k])) <= 128}
