"""One chat turn at the origin: chat template -> token ids -> the swarm -> text pieces.

Stop strings are matched on the text; while the text's tail could still begin a stop string,
that tail is held back, so a streamed answer never shows part of a stop string.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from engine.api.schema import ChatRequest
from engine.model.tokenizer import StreamingDetokenizer, chat_prompt_ids
from engine.sampling import SamplingParams


@dataclass
class ChatResult:
    finish_reason: str = "length"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    routes: list[list[dict]] = field(default_factory=list)  # every route used (more than one after a recovery)


def run_chat(origin, tokenizer, stop_token_ids: frozenset[int], request: ChatRequest,
             result: ChatResult) -> Iterator[str]:
    """Yield text pieces; fills `result` as it goes. Closing the iterator cancels the request."""
    prompt = chat_prompt_ids(tokenizer, request.messages)
    result.prompt_tokens = len(prompt)
    params = SamplingParams(max_tokens=request.max_tokens, temperature=request.temperature, top_p=request.top_p,
                            seed=request.seed, stop_token_ids=stop_token_ids)
    detok = StreamingDetokenizer(tokenizer)
    shown = 0  # characters of detok.text already yielded
    hold = max((len(s) for s in request.stop), default=1) - 1
    start = time.perf_counter()
    first_at = None

    def on_route(route):
        result.routes.append([{"peer_id": h.peer_id, "start": h.start, "end": h.end} for h in route])

    tokens = origin.generate(prompt, params, on_route=on_route)
    try:
        for token in tokens:
            first_at = first_at or time.perf_counter()
            result.completion_tokens += 1
            detok.add(token)
            text = detok.text
            cut = _first_stop(text, request.stop, shown)
            if cut is not None:
                if cut > shown:
                    yield text[shown:cut]
                result.finish_reason = "stop"
                return
            safe = len(text) - hold if request.stop else len(text)
            if safe > shown:
                yield text[shown:safe]
                shown = safe
        if result.completion_tokens < request.max_tokens:
            result.finish_reason = "stop"
        if len(detok.text) > shown:
            yield detok.text[shown:]
    finally:
        tokens.close()  # releases the request's caches along the route
        end = time.perf_counter()
        if first_at is not None:
            result.ttft_s = round(first_at - start, 4)
            if result.completion_tokens > 1 and end > first_at:
                result.tokens_per_s = round((result.completion_tokens - 1) / (end - first_at), 2)


def _first_stop(text: str, stops: tuple[str, ...], shown: int) -> int | None:
    hits = [i for s in stops if (i := text.find(s, max(0, shown - len(s)))) >= 0]
    return min(hits) if hits else None
