"""The origin of a request: sends it into a route, streams tokens back, and survives failures.

The origin keeps the whole token history (prompt + generated ids). When a stage fails mid-answer
(a `stage.error`, or no token within the step timeout), it finds which hops stopped answering,
asks for a new route that avoids them, and prefills the history again under a fresh request id:
the answer goes on where it stopped (DESIGN.md, where we mean to beat the others, point 1).

Cheaper first, when the answer has begun and the stage before the lost hop still holds the request
(it says so in its `stage.error`; after a silence, because the lost node died holding the step,
the origin finds the one hop that no longer answers a ping and asks the stage before it what it
holds, `stage.status`): the scheduler names a node that serves the lost hop's layers,
every stage of the route learns the new route (`stage.repair`), and only that hop prefills the
history again: from the hidden states the stage before it kept, or, for the first hop, from the
token ids the origin keeps. The rest of the chain keeps its cache. Whatever does not fit that
(a prompt still being prefilled, no such node, a second failure) falls back to the whole re-route.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from engine.sampling import SamplingParams
from engine.swarm.protocol import MAX_PREFILL_TOKENS, Hop, sampling_body
from engine.swarm.transport import PeerError
from engine.swarm.wire import Message

log = logging.getLogger(__name__)


class RouteUnavailable(RuntimeError):
    """No chain of live nodes covers the model right now."""

    @property
    def may_heal(self) -> bool:
        """Nodes loading or a leaver being replaced heal by themselves; a swarm too small does not."""
        return "too small" not in str(self)


@dataclass
class Attempt:
    request_id: str
    route: list[Hop]
    events: "queue.Queue[Message]"
    params: SamplingParams
    drawn: int  # tokens the request sampled before this attempt


class Origin:
    """`route_for(prompt_tokens, kv_tokens, avoid) -> list[Hop]` asks the scheduler for a route whose
    nodes have KV cache free for kv_tokens (raises RouteUnavailable); `replacement_for(route, lost,
    kv_tokens, avoid) -> Hop` for a node to take over route[lost] (raises RouteUnavailable; without
    it every failure re-routes the whole request)."""

    def __init__(self, send, route_for: Callable[[int, int, set[str]], list[Hop]], peer_id: str,
                 first_token_timeout_s: float = 120.0, token_timeout_s: float = 30.0, max_attempts: int = 4,
                 heal_timeout_s: float = 120.0, admit_timeout_s: float = 15.0,
                 replacement_for: Callable[[list[Hop], int, int, set[str]], Hop] | None = None):
        self.send, self.route_for, self.peer_id = send, route_for, peer_id
        self.replacement_for = replacement_for
        self.heal_timeout_s, self.admit_timeout_s = heal_timeout_s, admit_timeout_s
        self.first_token_timeout_s, self.token_timeout_s = first_token_timeout_s, token_timeout_s
        self.max_attempts = max_attempts
        self._inboxes: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self.recoveries = 0  # failures survived, ...
        self.replays = 0  # ... of which by replaying one hop

    def accept(self, message: Message) -> None:
        """stage.token / stage.error, on Lattica's thread: hand to the waiting request."""
        with self._lock:
            inbox = self._inboxes.get(message.body["request_id"])
        if inbox is not None:
            inbox.put(message)

    def generate(self, prompt: list[int], params: SamplingParams, on_route=None) -> Iterator[int]:
        """Yield generated token ids. on_route(route) is told each route used (for /swarm, the UI)."""
        produced: list[int] = []
        avoid: set[str] = set()
        replayed = 0
        for attempt_no in range(self.max_attempts):
            remaining = params.max_tokens - len(produced)
            if remaining <= 0:
                return
            context = len(prompt) + len(produced)
            patience = self.heal_timeout_s if attempt_no else self.admit_timeout_s
            route = self._route(context, context + remaining, avoid, patience)
            if on_route:
                on_route(route)
            attempt = self._start(route, prompt + produced, replace(params, max_tokens=remaining), len(produced))
            got = 0  # tokens of this attempt
            try:
                while True:
                    try:
                        for token in self._stream(attempt, first=True, expected=got + 1):
                            produced.append(token)
                            got += 1
                            yield token
                        return
                    except _StageFailed as failure:
                        if replayed >= self.max_attempts or not self._replay_hop(
                                attempt, failure, prompt + produced, got, len(prompt) + params.max_tokens):
                            raise
                        replayed += 1
                        self.recoveries += 1
                        self.replays += 1
                        log.warning("request %s: %s; replayed one hop", attempt.request_id[:8], failure)
                        if on_route:
                            on_route(attempt.route)
            except _StageFailed as failure:
                self.recoveries += 1
                dead = self._unreachable(attempt.route) | ({failure.suspect} if failure.suspect else set())
                avoid |= dead  # none found: a hiccup; ask again without excluding anyone
                log.warning("request %s: %s; re-routing around %s", attempt.request_id[:8], failure,
                            [p[-8:] for p in dead])
            finally:
                self._finish(attempt)
        raise RouteUnavailable(f"the answer failed {self.max_attempts} times on different nodes")

    def _route(self, prompt_tokens: int, kv_tokens: int, avoid: set[str], patience_s: float) -> list[Hop]:
        """Keep asking, with back-off, for up to patience_s: a new request waits while the swarm's
        KV cache is momentarily full (the scheduler sees freed caches one heartbeat late); after a
        failure the swarm needs time to heal (evict the dead node, re-allocate, load)."""
        deadline = time.monotonic() + patience_s
        pause = 0.2
        while True:
            try:
                return self.route_for(prompt_tokens, kv_tokens, avoid)
            except RouteUnavailable as exc:
                if not exc.may_heal or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)  # waiting on other machines, which send no signal to wait on
            pause = min(pause * 1.5, 2.0)

    def _start(self, route: list[Hop], tokens: list[int], params: SamplingParams, drawn: int) -> Attempt:
        attempt = Attempt(uuid.uuid4().hex, route, queue.Queue(), params, drawn)
        with self._lock:
            self._inboxes[attempt.request_id] = attempt.events
        body = {"request_id": attempt.request_id, "origin": self.peer_id, "kind": "prefill", "step": 0,
                "route": [[h.peer_id, h.start, h.end] for h in route], "hop": 0, "tokens": tokens,
                "sampling": sampling_body(params), "drawn": drawn}
        try:
            self.send(route[0].peer_id, "stage.forward", body, None)
        except PeerError as exc:
            self._finish(attempt)
            raise _StageFailed(str(exc), route[0].peer_id) from None
        return attempt

    def _replay_hop(self, attempt: Attempt, failure: "_StageFailed", history: list[int], got: int,
                    kv_tokens: int) -> bool:
        """Have a new node take over the failed hop; False when the whole request must be re-routed."""
        route = attempt.route
        peers = [h.peer_id for h in route]
        if self.replacement_for is None or got == 0:
            return False
        if failure.suspect is None:  # silence: a node died holding the step; which, and who kept what?
            failure = self._locate(attempt, failure)
        if failure.suspect not in peers:
            return False
        lost = peers.index(failure.suspect)
        # the stage before the lost hop (for the first hop: the last stage) must hold the whole history
        # the origin has: a token still on its way here, or a step lost on the wire, and it does not
        if failure.sender != peers[lost - 1]:
            return False
        if lost > 0 and failure.kept != len(history):
            return False
        if lost == 0 and (failure.step != got or len(history) > MAX_PREFILL_TOKENS):
            return False
        try:
            hop = self.replacement_for(route, lost, kv_tokens, {failure.suspect})
        except RouteUnavailable:
            return False
        if hop.peer_id in peers or (hop.start, hop.end) != (route[lost].start, route[lost].end):
            return False
        new = route[:lost] + [hop] + route[lost + 1:]
        attempt.route = new  # from now on, _finish releases the newcomer too, and not the lost hop:
        # if that one only refused the step, it still holds the request (in the background: a dead
        # node answers nothing, and the answer should not wait for that)
        threading.Thread(target=self._release, args=(failure.suspect, attempt.request_id), daemon=True).start()
        body = {"request_id": attempt.request_id, "route": [[h.peer_id, h.start, h.end] for h in new],
                "hop": lost, "step": got}
        # the stage that replays hears last, once every other stage knows the newcomer
        order = [k for k in range(len(new)) if k not in (lost, lost - 1)] + ([lost - 1] if lost else [])
        try:
            for k in order:
                self.send(new[k].peer_id, "stage.repair", body, None)
            if lost == 0:
                self.send(hop.peer_id, "stage.forward", {
                    "request_id": attempt.request_id, "origin": self.peer_id, "kind": "prefill", "step": got,
                    "route": body["route"], "hop": 0, "tokens": history, "resume_step": got,
                    "sampling": sampling_body(attempt.params), "drawn": attempt.drawn + got}, None)
        except PeerError:
            return False
        return True

    def _locate(self, attempt: Attempt, failure: "_StageFailed") -> "_StageFailed":
        """After a timeout: the one hop that no longer answers, and what the stage before it holds
        (it did hand the step on, so it reports nothing by itself)."""
        peers = [h.peer_id for h in attempt.route]
        dead = self._unreachable(attempt.route)
        if len(dead) != 1:
            return failure
        suspect = dead.pop()
        before = peers[peers.index(suspect) - 1]
        try:
            held = self.send(before, "stage.status", {"request_id": attempt.request_id}, None, timeout=2.0)
        except PeerError:
            return failure
        return _StageFailed(str(failure), suspect, before, held.get("kept"), held.get("step"))

    def _stream(self, attempt: Attempt, first: bool, expected: int = 1) -> Iterator[int]:
        while True:
            timeout = self.first_token_timeout_s if first else self.token_timeout_s
            try:
                event = attempt.events.get(timeout=timeout)
            except queue.Empty:
                raise _StageFailed(f"no token for {timeout:.0f} s", None) from None
            first = False
            if event.type == "stage.error":
                raise _StageFailed(event.body["error"], event.body.get("suspect"), event.sender,
                                   event.body.get("kept"), event.body.get("step"))
            body = event.body
            if body["step"] < expected - (1 if body.get("finished") == "stop" else 0):
                continue  # a late duplicate
            if "token" in body:
                expected += 1
                yield body["token"]
            if body.get("finished"):
                return

    def _finish(self, attempt: Attempt) -> None:
        with self._lock:
            if self._inboxes.pop(attempt.request_id, None) is None:
                return
        for hop in attempt.route:
            self._release(hop.peer_id, attempt.request_id)

    def _release(self, peer_id: str, request_id: str) -> None:
        try:
            self.send(peer_id, "stage.release", {"request_id": request_id}, None, timeout=2.0)
        except PeerError:
            pass

    def _unreachable(self, route: list[Hop]) -> set[str]:
        dead = set()
        for hop in route:
            try:
                self.send(hop.peer_id, "ping", {}, None, timeout=2.0)
            except PeerError:
                dead.add(hop.peer_id)
        return dead


class _StageFailed(Exception):
    """kept / step: what the reporting stage holds (positions sent on; tokens sampled, on the last)."""

    def __init__(self, reason: str, suspect: str | None, sender: str | None = None, kept: int | None = None,
                 step: int | None = None):
        super().__init__(reason)
        self.suspect, self.sender, self.kept, self.step = suspect, sender, kept, step
