"""A node's stage of the push ring: checks incoming work, batches it, runs the shard, pushes on.

`accept` runs on Lattica's thread and only checks and enqueues (a slow handler would block the
node's network loop). One worker thread runs the model: each step it takes everything pending and
makes one forward pass per (kind, span) group, so concurrent requests decode together.

A stage keeps the hidden states it has sent on for each request (host memory, in the wire dtype:
16 KB per position for a 70B model in bf16, about 5 MB for a mean conversation; where host memory is the
device's, on a CPU or an Apple chip, the node counts it against its cache room), so that when the next
stage dies mid-answer only that hop needs to be replayed: the stage keeps the request, tells the
origin how many positions it holds, and on `stage.repair` resends them to the replacement, which
prefills them and passes on only the last position (engine/swarm/origin.py). The resend goes out
in parts of one prefill chunk from a thread of its own, between the worker's sends, so it delays
this node's decode messages by at most a part's upload.

Prompts are prefilled in chunks of at most `prefill_chunk_tokens` per step, so a long prompt does
not stall the decode tokens of every other request on this node for its whole forward pass; each
chunk's hidden states go on to the next stage as soon as it is done (a prompt part: `offset`,
`prompt_tokens`), so the stages of a chain work on one long prompt at the same time and its time to
first token is about the slowest stage's share rather than the sum of all stages'. The node sizes
the chunk from its measured profile (engine.scheduler.perf.prefill_chunk_tokens), and the swarm
simulator batches and forwards the same way.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from engine.backends.host import HOST_DTYPES
from engine.sampling import Sampler, SamplingParams, sample
from engine.swarm import q8
from engine.swarm.protocol import (MAX_PREFILL_TOKENS, Hop, check_tokens, parse_route, parse_sampling,
                                   sampling_body)
from engine.swarm.transport import PeerError
from engine.swarm.wire import Message, Tensor, WireError

log = logging.getLogger(__name__)



@dataclass
class StageRequest:
    route: list[Hop]
    hop: int
    origin: str
    next_step: int
    sampling: SamplingParams
    sampler: Sampler | None = None  # on the last stage
    prompt_tokens: int = 0  # the whole prompt's length ...
    received: int = 0  # ... and how much of it has arrived here (it may come in parts)
    produced: int = 0
    context_used: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    sent: list[np.ndarray] = field(default_factory=list)  # hidden states passed on, in position order
    sent_rows: int = 0
    resume_step: int | None = None  # set up by a replay: it passes on only its last position, as this step
    drawn: int = 0  # tokens the request sampled before this prompt: a seeded stream goes on from there
    stalled: bool = False  # the next stage is gone: its work waits for a repair (or the release)

    @property
    def span(self) -> tuple[int, int]:
        hop = self.route[self.hop]
        return hop.start, hop.end


@dataclass
class Work:
    request_id: str
    kind: str
    step: int
    inputs: np.ndarray  # [T] int64 token ids, or [T, H] hidden states in the wire dtype (engine.backends.host)
    offset: int = 0  # a prompt part: where inputs[0] sits in the prompt
    done: int = 0  # tokens of this part already run here (it takes several steps in chunks)


class StageWorker:
    """wire_dtype: the swarm-wide dtype of hidden states between stages (the host's choice); each
    stage computes in its own dtype and converts at its edges. wire_codec "q8_0" (also the host's
    choice) sends them in 8-bit blocks instead (engine/swarm/q8.py); a stage decodes them back to
    the wire dtype, and keeps what it sent for replays as it computed it.

    Backend-neutral: inputs go to the runner as numpy arrays and its outputs come back through
    runner.to_numpy, so an MLX node runs this without torch."""

    def __init__(self, runner, send, peer_id: str, wire_dtype: str | None = None, idle_timeout_s: float = 300.0,
                 prefill_chunk_tokens: int = 256, wire_codec: str | None = None):
        if prefill_chunk_tokens < 1:
            raise ValueError(f"prefill_chunk_tokens must be at least 1, got {prefill_chunk_tokens}")
        if wire_codec not in (None, "q8_0") or (wire_codec and not q8.supports(runner.spec.hidden_size)):
            raise ValueError(f"wire codec {wire_codec!r} does not fit hidden size {runner.spec.hidden_size}")
        self.wire_codec = wire_codec
        self.runner, self.send, self.peer_id = runner, send, peer_id
        self.prefill_chunk_tokens = prefill_chunk_tokens
        self._carried: list[Work] = []  # prompts with chunks still to run, first in the next step
        self.spec = runner.spec
        self.wire_dtype = wire_dtype or runner.dtype_name
        self.idle_timeout_s = idle_timeout_s
        self.requests: dict[str, StageRequest] = {}
        self.served_tokens = 0
        self.steps = 0
        self.step_ms = 0.0  # moving average of one forward pass
        self._busy_s, self._busy_since = 0.0, time.monotonic()
        self._queue: queue.Queue[Work | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="stage-worker", daemon=True)
        self._thread.start()

    # ---- on Lattica's thread: check and enqueue ----

    def accept(self, message: Message) -> None:
        body = message.body
        rid, kind, step = body["request_id"], body["kind"], body["step"]
        if kind not in ("prefill", "decode"):
            raise WireError(f"unknown step kind {kind!r}")
        with self._lock:
            state = self.requests.get(rid)
            if kind == "prefill" and state is None:
                route = parse_route(body["route"], self.spec)
                hop = body["hop"]
                if not 0 <= hop < len(route) or route[hop].peer_id != self.peer_id:
                    raise WireError("this node is not that hop of the route")
                if not self.runner.start <= route[hop].start < route[hop].end <= self.runner.end:
                    raise WireError(f"this node serves layers [{self.runner.start}, {self.runner.end}), "
                                    f"not [{route[hop].start}, {route[hop].end})")
                params = parse_sampling(body, self.spec.max_position_embeddings)
                resume, drawn = body.get("resume_step"), body.get("drawn", 0)
                if resume is not None and not 0 < resume <= params.max_tokens:
                    raise WireError(f"resume_step must be in [1, {params.max_tokens}], got {resume}")
                if not 0 <= drawn <= self.spec.max_position_embeddings:
                    raise WireError(f"drawn must be in [0, {self.spec.max_position_embeddings}], got {drawn}")
                sampler = Sampler(params, drawn) if route[hop].end == self.spec.num_layers else None
                state = StageRequest(route, hop, body["origin"], next_step=resume or 0, sampling=params,
                                     sampler=sampler, produced=resume or 0, resume_step=resume, drawn=drawn)
            elif state is None:
                raise WireError(f"unknown request {rid[:12]}: it was released or never prefilled here")
            if step != state.next_step:
                raise WireError(f"out-of-order step {step} for request {rid[:12]} (expected {state.next_step})")
            if message.sender not in (state.origin, state.route[state.hop - 1].peer_id if state.hop else None,
                                      state.route[-1].peer_id):
                raise WireError("this peer is not part of the request's route")
            inputs = self._inputs(message, state, kind)
            offset = self._take_part(state, body, inputs.shape[0]) if kind == "prefill" else 0
            if kind == "decode" or state.received == state.prompt_tokens:
                state.next_step += 1  # a prompt in parts stays step 0 until its last part
            state.last_seen = time.monotonic()
            self.requests[rid] = state
        self._queue.put(Work(rid, kind, step, inputs, offset))

    @staticmethod
    def _take_part(state: StageRequest, body: dict, size: int) -> int:
        """Check a prompt part against what has arrived and count it in; returns its offset. A
        message without offset / prompt_tokens carries the whole prompt."""
        offset = body.get("offset", 0)
        total = body.get("prompt_tokens", offset + size)
        if not 0 <= offset < offset + size <= total <= MAX_PREFILL_TOKENS:
            raise WireError(f"prompt part [{offset}, {offset + size}) does not fit a prompt of {total} tokens "
                            f"(at most {MAX_PREFILL_TOKENS})")
        if offset != state.received or (state.prompt_tokens and total != state.prompt_tokens):
            raise WireError(f"prompt part [{offset}, {offset + size}) of {total} tokens does not follow the "
                            f"{state.received} of {state.prompt_tokens} tokens received")
        state.prompt_tokens, state.received = total, offset + size
        return offset

    def _inputs(self, message: Message, state: StageRequest, kind: str) -> np.ndarray:
        one = 1 if kind == "decode" else None
        if state.span[0] == 0:
            tokens = check_tokens(message.body.get("tokens"), self.spec, exactly=one)
            if message.tensors:
                raise WireError("the first stage takes token ids, not tensors")
            return np.array(tokens, dtype=np.int64)
        if self.wire_codec:
            return self._decode_q8(message.tensors, exactly=one)
        hidden = message.tensors.get("hidden")
        if hidden is None or len(message.tensors) != 1:
            raise WireError("this stage takes exactly one tensor, 'hidden'")
        if hidden.dtype != self.wire_dtype:
            raise WireError(f"hidden states must be {self.wire_dtype}, got {hidden.dtype}")
        self._check_rows(hidden.shape, self.spec.hidden_size, one)
        return np.frombuffer(hidden.data, dtype=HOST_DTYPES[hidden.dtype]).reshape(hidden.shape)

    def _decode_q8(self, tensors: dict[str, Tensor], exactly: int | None) -> np.ndarray:
        codes, scales = tensors.get("hidden"), tensors.get("hidden_scale")
        if codes is None or scales is None or len(tensors) != 2:
            raise WireError("this swarm sends hidden states as q8_0: tensors 'hidden' and 'hidden_scale'")
        if codes.dtype != "int8" or scales.dtype != "float16":
            raise WireError(f"q8_0 hidden states are int8 codes with float16 scales, got {codes.dtype} and "
                            f"{scales.dtype}")
        size = self.spec.hidden_size
        self._check_rows(codes.shape, size, exactly)
        self._check_rows(scales.shape, size // q8.BLOCK, exactly, what="q8_0 scales")
        if scales.shape[0] != codes.shape[0]:
            raise WireError(f"{codes.shape[0]} rows of codes but {scales.shape[0]} rows of scales")
        scale_values = np.frombuffer(scales.data, dtype="<f2").reshape(scales.shape)
        if not (np.isfinite(scale_values) & (scale_values >= 0)).all():
            raise WireError("q8_0 scales must be finite and not negative")
        return q8.decode(np.frombuffer(codes.data, dtype=np.int8).reshape(codes.shape), scale_values,
                         self.wire_dtype)

    @staticmethod
    def _check_rows(shape: tuple, width: int, exactly: int | None, what: str = "hidden states") -> None:
        if len(shape) != 2 or shape[1] != width or not 1 <= shape[0] <= MAX_PREFILL_TOKENS:
            raise WireError(f"{what} must have shape [T, {width}] with 1 <= T <= "
                            f"{MAX_PREFILL_TOKENS}, got {list(shape)}")
        if exactly and shape[0] != exactly:
            raise WireError("a decode step carries the hidden state of exactly 1 token")

    def _wire_tensors(self, rows: np.ndarray) -> dict[str, Tensor]:
        if not self.wire_codec:
            return {"hidden": Tensor(self.wire_dtype, rows.shape, rows.tobytes())}
        codes, scales = q8.encode(rows)
        return {"hidden": Tensor("int8", codes.shape, codes.tobytes()),
                "hidden_scale": Tensor("float16", scales.shape, scales.tobytes())}

    def utilization(self) -> float:
        """Busy fraction of the model thread since the last call (heartbeats call it)."""
        now = time.monotonic()
        busy, span = self._busy_s, max(now - self._busy_since, 1e-6)
        self._busy_s, self._busy_since = 0.0, now
        return min(busy / span, 1.0)

    def prompt_queue_s(self) -> float:
        """Seconds of prompt work waiting here: the prompt tokens not yet run, in chunks, at the
        recent step time. Heartbeats report it; the router weighs it (engine.scheduler.potluck)."""
        with self._queue.mutex:
            waiting = list(self._queue.queue)
        waiting += list(self._carried)
        tokens = sum(w.inputs.shape[0] - w.done for w in waiting if w is not None and w.kind == "prefill")
        return tokens / self.prefill_chunk_tokens * self.step_ms / 1e3

    def kept_bytes(self) -> int:
        """Memory the hidden states kept for replays take (host memory)."""
        with self._lock:
            rows = sum(state.sent_rows for state in self.requests.values())
        return rows * self.spec.hidden_size * np.dtype(HOST_DTYPES[self.wire_dtype]).itemsize

    def status(self, message: Message) -> dict:
        """stage.status from the request's origin: what this stage holds of it (after a silence)."""
        rid = message.body["request_id"]
        with self._lock:
            state = self.requests.get(rid)
            if state is None or message.sender != state.origin:
                raise WireError(f"no request {rid[:12]} of yours here")
            return {"kept": state.sent_rows, "step": state.produced}

    def repair(self, message: Message) -> None:
        """stage.repair from the request's origin: the route with one hop replaced by a node serving
        the same layers. The stage just before that hop resends what it kept to the newcomer."""
        body = message.body
        rid, lost, step = body["request_id"], body["hop"], body["step"]
        with self._lock:
            state = self.requests.get(rid)
            if state is None:
                raise WireError(f"unknown request {rid[:12]}: it was released or never prefilled here")
            if message.sender != state.origin:
                raise WireError("only the request's origin may repair its route")
            route = parse_route(body["route"], self.spec)
            old = state.route
            if (len(route) != len(old) or not 0 <= lost < len(route) or lost == state.hop
                    or any(a != b for k, (a, b) in enumerate(zip(route, old)) if k != lost)
                    or (route[lost].start, route[lost].end) != (old[lost].start, old[lost].end)):
                raise WireError("a repair replaces exactly one other hop of the route, keeping its layers")
            replays = lost == state.hop + 1
            if replays and not 0 < step <= state.sampling.max_tokens:
                raise WireError(f"step must be in [1, {state.sampling.max_tokens}], got {step}")
            state.route = route
            state.last_seen = time.monotonic()
            state.stalled = False
            rows = list(state.sent) if replays else []
        if replays:
            threading.Thread(target=self._replay, args=(rid, state, rows, step), name="stage-replay",
                             daemon=True).start()

    def _replay(self, rid: str, state: StageRequest, rows: list[np.ndarray], step: int) -> None:
        """Resend the kept hidden states to the hop after this one, as a prompt in parts."""
        total = sum(r.shape[0] for r in rows)
        if not 0 < total <= MAX_PREFILL_TOKENS:
            self._fail(rid, f"cannot replay a history of {total} positions")
            return
        history = np.concatenate(rows)
        hop = state.hop + 1
        peer = state.route[hop].peer_id
        for offset in range(0, total, self.prefill_chunk_tokens):
            part = history[offset:offset + self.prefill_chunk_tokens]
            body = {"request_id": rid, "origin": state.origin, "kind": "prefill", "step": step,
                    "route": [[h.peer_id, h.start, h.end] for h in state.route], "hop": hop,
                    "offset": offset, "prompt_tokens": total, "resume_step": step}
            if offset == 0:
                body.update(sampling=sampling_body(state.sampling), drawn=state.drawn + step)
            error = self._push(peer, body, self._wire_tensors(part))
            if error:
                self._fail(rid, error, suspect=peer)
                return

    def release(self, request_id: str) -> bool:
        with self._lock:
            known = self.requests.pop(request_id, None) is not None
        self._queue.put(Work(request_id, "release", 0, np.empty(0)))
        return known

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    # ---- on the worker thread ----

    def _loop(self) -> None:
        while True:
            batch, self._carried = self._carried, []
            if not batch:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            started = time.monotonic()
            try:
                self._step(batch)
            except Exception:
                log.exception("stage step failed")
            took = time.monotonic() - started
            self._busy_s += took
            self.steps += 1
            self.step_ms = 0.9 * self.step_ms + 0.1 * took * 1e3 if self.steps > 1 else took * 1e3
            self._expire_idle()

    def _step(self, batch: list[Work]) -> None:
        groups: dict[tuple, list[tuple[Work, int]]] = {}  # -> (work, prompt tokens it runs now)
        budget = self.prefill_chunk_tokens
        prompts = set()  # requests with a prompt chunk in this step: a later part of theirs waits
        for work in batch:
            if work.kind == "release":
                self.runner.release(work.request_id)
                continue
            state = self.requests.get(work.request_id)
            if state is None:  # released while queued
                self.runner.release(work.request_id)
                continue
            if state.stalled:  # a prompt's later chunks, with nowhere to go
                continue
            if work.kind == "prefill":
                if budget == 0 or work.request_id in prompts:
                    self._carried.append(work)
                    continue
                take = min(budget, work.inputs.shape[0] - work.done)
                budget -= take
                prompts.add(work.request_id)
            else:
                take = 1
            groups.setdefault((work.kind, state.span), []).append((work, take))
        for (kind, span), works in groups.items():
            try:
                self._run(kind, span, works)
            except Exception as exc:
                log.exception("forward failed")
                for work, _ in works:
                    self._fail(work.request_id, f"stage {self.peer_id[-8:]} failed: {exc}")

    def _run(self, kind: str, span: tuple[int, int], chunks: list[tuple[Work, int]]) -> None:
        ids = [w.request_id for w, _ in chunks]
        lengths = [take for _, take in chunks]
        width = max(lengths)
        first = span[0] == 0
        shape = (len(chunks), width) if first else (len(chunks), width, self.spec.hidden_size)
        inputs = np.zeros(shape, dtype=np.int64 if first else HOST_DTYPES[self.wire_dtype])
        for row, (work, take) in enumerate(chunks):
            inputs[row, :take] = work.inputs[work.done:work.done + take]
        if kind == "prefill":
            out = self.runner.prefill(ids, inputs, lengths, span=span)
        else:
            out = self.runner.decode(ids, inputs, span=span)
        self.served_tokens += sum(lengths)
        last = span[1] == self.spec.num_layers
        out = self.runner.to_numpy(out) if last else self.runner.to_numpy(out, self.wire_dtype)
        complete = []  # on the last stage, rows that give a token: a decode, or the chunk that ends a prompt
        for row, (work, take) in enumerate(chunks):
            begin = work.offset + work.done
            work.done += take
            if work.done < work.inputs.shape[0]:
                self._carried.insert(0, work)  # a started prompt goes on before prompts not begun
            state = self.requests.get(work.request_id)
            if state is None:
                continue
            if not last:
                self._forward(work, state, out[row, :take], begin if kind == "prefill" else None)
            elif kind == "decode" or begin + take == state.prompt_tokens:
                complete.append(row)
        if complete:
            self._emit_tokens([chunks[row][0] for row in complete], out[complete])

    def _forward(self, work: Work, state: StageRequest, rows: np.ndarray, offset: int | None) -> None:
        """Hidden states on to the next stage: a decode token's, or a prompt chunk's (offset set).
        A replayed history is kept whole but passes on only its last position, as the lost step."""
        rows = rows.copy()
        state.sent.append(rows)
        state.sent_rows += rows.shape[0]
        kind, step = work.kind, work.step
        if state.resume_step is not None and offset is not None:
            if offset + rows.shape[0] < state.prompt_tokens:
                return
            rows, offset, kind, step = rows[-1:], None, "decode", state.resume_step
        body = {"request_id": work.request_id, "origin": state.origin, "kind": kind, "step": step,
                "route": [[h.peer_id, h.start, h.end] for h in state.route], "hop": state.hop + 1}
        if offset is not None:
            body.update(offset=offset, prompt_tokens=state.prompt_tokens)
            if offset == 0:  # the next stage sets the request up from its first part
                body.update(sampling=sampling_body(state.sampling), drawn=state.drawn)
        peer = state.route[state.hop + 1].peer_id
        error = self._push(peer, body, self._wire_tensors(rows))
        if error:
            self._fail(work.request_id, error, suspect=peer)

    def _emit_tokens(self, works: list[Work], logits: np.ndarray) -> None:
        states = [self.requests.get(w.request_id) for w in works]
        live = [(w, s, row) for row, (w, s) in enumerate(zip(works, states)) if s is not None]
        tokens = sample(logits[[row for _, _, row in live]], [s.sampler for _, s, _ in live])
        for (work, state, _), token in zip(live, tokens):
            params = state.sampler.params
            finished = None
            if state.sampler.is_stop(token):
                finished = "stop"
            else:
                state.produced += 1
                if state.produced >= params.max_tokens:
                    finished = "length"
            lost = None
            if finished is None:  # the next step first: it is on the critical path, the origin is not
                first = state.route[0]
                lost = self._push(first.peer_id, {
                    "request_id": work.request_id, "origin": state.origin, "kind": "decode",
                    "step": state.produced, "route": [[h.peer_id, h.start, h.end] for h in state.route],
                    "hop": 0, "tokens": [token]})
            body = {"request_id": work.request_id, "step": state.produced}
            if finished:
                body["finished"] = finished
            if finished != "stop":
                body["token"] = token
            error = self._push(state.origin, body, kind="stage.token")
            if error:
                self._fail(work.request_id, error, suspect=state.origin)
            elif lost:  # after the token: the origin needs it to replay the first hop
                self._fail(work.request_id, lost, suspect=state.route[0].peer_id)

    def _push(self, peer: str, body: dict, tensors=None, kind: str = "stage.forward") -> str | None:
        """Send; the reason it failed, if it did."""
        try:
            self.send(peer, kind, body, tensors)
        except PeerError as exc:
            return str(exc)
        return None

    def _fail(self, rid: str, error: str, suspect: str | None = None) -> None:
        """Tell the origin. A request whose next stage is gone stays here (its cache and the hidden
        states sent on), so that the origin can have just that hop replayed; else the origin releases it."""
        log.warning("request %s failed here: %s", rid[:8], error)
        state = self.requests.get(rid)
        if state is None or suspect is None or suspect == state.origin:
            self.release(rid)
        else:
            state.stalled = True
        if state is None or state.origin == suspect:
            return
        body = {"request_id": rid, "error": error, "kept": state.sent_rows, "step": state.produced,
                **({"suspect": suspect} if suspect else {})}
        try:
            self.send(state.origin, "stage.error", body, None)
        except PeerError:
            self.release(rid)

    def _expire_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [rid for rid, s in self.requests.items() if now - s.last_seen > self.idle_timeout_s]
        for rid in idle:
            self.release(rid)
