"""Message types of the swarm and the checks that need more than a schema.

The push ring (DESIGN.md): the origin sends `stage.forward` (prefill, with the token ids) to the
first stage of a route; each stage runs its layers and sends `stage.forward` with hidden states to
the next, a prompt in parts as its chunks finish (`offset`: where the part starts in the prompt,
`prompt_tokens`: the whole prompt's length; without them a message is the whole prompt), so the
next stage starts on a long prompt while this one is still on its later chunks; the last stage
samples, sends `stage.token` to the origin and `stage.forward` (decode, one token id) to the first
stage. The origin ends a request with `stage.release` to every stage.
When a stage cannot reach the next one mid-answer it keeps the request and says how many positions'
hidden states it has sent (`stage.error`, `kept`); the origin may then have a node holding the same
layers take over that one hop: `stage.repair` gives every stage of the route the new route, and the
stage before the lost hop resends what it kept to the newcomer as a prompt (`resume_step`: the
decode step the chain lost), which passes on only the last position's hidden state (origin.py).
A node that dies holding the step leaves only silence: then the origin asks the stage before it
what it holds (`stage.status`).
Nodes talk to the host's scheduler role with `sched.*`. Every message type of the swarm is declared
here; the transport imports this module, so no node can lack one.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.model.spec import ModelSpec
from engine.sampling import SamplingParams
from engine.swarm.wire import WireError, schema

MAX_ROUTE_HOPS = 64
MAX_PREFILL_TOKENS = 16384

schema("stage.forward", request_id=(str, True), origin=(str, True), route=(list, True), hop=(int, True),
       kind=(str, True), step=(int, True), tokens=(list, False), sampling=(dict, False),
       offset=(int, False), prompt_tokens=(int, False), resume_step=(int, False), drawn=(int, False))
schema("stage.token", request_id=(str, True), step=(int, True), token=(int, False), finished=(str, False))
schema("stage.error", request_id=(str, True), error=(str, True), suspect=(str, False), kept=(int, False),
       step=(int, False))
schema("stage.repair", request_id=(str, True), route=(list, True), hop=(int, True), step=(int, True))
schema("stage.status", request_id=(str, True))  # the reply says what the stage holds: kept, step
schema("stage.release", request_id=(str, True))
schema("ping")

# the scheduler role (held by the host node)
schema("sched.join", serves=(bool, True), memory_bytes=((int, float), True), profile=(dict, True))
schema("sched.heartbeat", ready=(list, False), resident=(int, True), kv_free_bytes=((int, float), True),
       served_tokens=(int, True), utilization=((int, float), True), step_ms=((int, float), True),
       known_version=(int, True), prompt_queue_s=((int, float), False))
schema("sched.leave")
schema("sched.route", prompt_tokens=(int, True), kv_tokens=(int, True), avoid=(list, True),
       route=(list, False), lost=(int, False))  # with route and lost: a node to take over that hop
schema("sched.swarm")


@dataclass(frozen=True)
class Hop:
    peer_id: str
    start: int
    end: int


def max_frame_bytes(spec: ModelSpec) -> int:
    """The largest frame a node of this model accepts: a full prefill of hidden states in float32,
    plus room for the header and the signature."""
    return MAX_PREFILL_TOKENS * spec.hidden_size * 4 + (1 << 20)


def parse_route(route: list, spec: ModelSpec) -> list[Hop]:
    """A route must be a chain of contiguous layer ranges from 0 to the model's last layer."""
    if not 0 < len(route) <= MAX_ROUTE_HOPS:
        raise WireError(f"a route needs 1 to {MAX_ROUTE_HOPS} hops")
    hops = []
    for entry in route:
        if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str)
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in entry[1:])):
            raise WireError("a route hop is [peer_id, start, end]")
        hops.append(Hop(*entry))
    expected = 0
    for hop in hops:
        if hop.start != expected or hop.end <= hop.start:
            raise WireError("route hops must cover contiguous layer ranges")
        expected = hop.end
    if expected != spec.num_layers:
        raise WireError(f"route ends at layer {expected}, the model has {spec.num_layers}")
    return hops


def parse_sampling(body: dict, context: int) -> SamplingParams:
    raw = body.get("sampling")
    if not isinstance(raw, dict):
        raise WireError("a prefill needs sampling parameters")
    allowed = {"max_tokens", "temperature", "top_p", "seed", "stop_token_ids"}
    if set(raw) - allowed:
        raise WireError(f"unknown sampling field(s) {sorted(set(raw) - allowed)}")
    try:
        stops = raw.get("stop_token_ids", [])
        if not isinstance(stops, list) or len(stops) > 64 or not all(_is_int(t) for t in stops):
            raise ValueError("stop_token_ids must be a list of at most 64 token ids")
        seed = raw.get("seed")
        if seed is not None and not _is_int(seed):
            raise ValueError("seed must be an integer")
        max_tokens = raw.get("max_tokens", 128)
        if not _is_int(max_tokens) or max_tokens > context:
            raise ValueError(f"max_tokens must be an integer up to the context of {context}")
        temperature, top_p = raw.get("temperature", 0.0), raw.get("top_p", 1.0)
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (temperature, top_p)):
            raise ValueError("temperature and top_p must be numbers")
        return SamplingParams(max_tokens=max_tokens, temperature=float(temperature), top_p=float(top_p),
                              seed=seed, stop_token_ids=frozenset(stops))
    except ValueError as exc:
        raise WireError(f"bad sampling parameters: {exc}") from None


def sampling_body(params: SamplingParams) -> dict:
    return {"max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
            "seed": params.seed, "stop_token_ids": sorted(params.stop_token_ids)}


def check_tokens(tokens, spec: ModelSpec, exactly: int | None = None) -> list[int]:
    if not isinstance(tokens, list) or not tokens or len(tokens) > MAX_PREFILL_TOKENS:
        raise WireError(f"tokens must be a list of 1 to {MAX_PREFILL_TOKENS} token ids")
    if exactly is not None and len(tokens) != exactly:
        raise WireError(f"a decode step carries exactly {exactly} token")
    if not all(_is_int(t) and 0 <= t < spec.vocab_size for t in tokens):
        raise WireError(f"token ids must be integers in [0, {spec.vocab_size})")
    return tokens


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
