"""What answers the chat window: a small interface, and its implementation over the local node.

The chat window never knows where answers come from. A backend turns a conversation into a
`ChatStream`: iterating it (on a worker thread) yields text pieces and then one `TurnStats`;
`cancel()` (from any thread) makes the iteration end soon. Failures raise `ChatError`, whose text
says what happened and what to do, in plain words.

`SwarmChatBackend` asks the local node's OpenAI-compatible API (so the swarm answers). Solo mode
(a whole GGUF model through llama.cpp) is app/solo_backend.py's `SoloChatBackend`, with the same
two methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from app.api_client import ApiFailure, NodeApi, NodeUnavailable, StreamBroken


@dataclass(frozen=True)
class ChatOptions:
    system_prompt: str = ""
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None


@dataclass(frozen=True)
class Hop:
    peer_id: str
    start: int  # first layer
    end: int  # one past the last layer


@dataclass
class TurnStats:
    routes: list[list[Hop]] = field(default_factory=list)  # more than one when the swarm re-routed mid-answer
    ttft_s: float | None = None
    tokens_per_s: float | None = None
    completion_tokens: int = 0
    finish_reason: str | None = None


class ChatError(Exception):
    """A failed turn, for the user: what happened, and what to do about it."""

    def __init__(self, what: str, todo: str = ""):
        super().__init__(f"{what} {todo}".strip())
        self.what, self.todo = what, todo


@runtime_checkable
class ChatStream(Protocol):
    def __iter__(self) -> Iterator[str | TurnStats]: ...

    def cancel(self) -> None: ...


@runtime_checkable
class ChatBackend(Protocol):
    name: str  # shown in the chat window: "the swarm", "solo: model.gguf"

    def stream(self, messages: list[dict], options: ChatOptions) -> ChatStream: ...


def with_system_prompt(messages: list[dict], system_prompt: str) -> list[dict]:
    if system_prompt.strip():
        return [{"role": "system", "content": system_prompt.strip()}, *messages]
    return list(messages)


# ---- the swarm, through the local node ----

NOT_RUNNING = ChatError("Potluck's node on this computer is not running right now (it may be starting or "
                        "restarting).", "Wait a few seconds and send your message again; if it keeps happening, "
                        "open Status to see what went wrong.")


class SwarmChatBackend:
    """`api()` returns the live node's API, or None while the node is not ready; `why_not()` the
    reason it is not (the app's current problem, in plain words), or "" while it is starting."""

    name = "the swarm"

    def __init__(self, api: Callable[[], NodeApi | None], why_not: Callable[[], str] = lambda: ""):
        self._api, self._why_not = api, why_not

    def stream(self, messages: list[dict], options: ChatOptions) -> "SwarmChatStream":
        api = self._api()
        if api is None and self._why_not():
            raise ChatError(self._why_not())
        return SwarmChatStream(api, with_system_prompt(messages, options.system_prompt), options)


class SwarmChatStream:
    def __init__(self, api: NodeApi | None, messages: list[dict], options: ChatOptions):
        self._api, self._messages, self._options = api, messages, options
        self._stream = None
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True
        if self._stream is not None:
            self._stream.cancel()

    def __iter__(self) -> Iterator[str | TurnStats]:
        if self._api is None:
            raise NOT_RUNNING
        o = self._options
        self._stream = self._api.chat_stream(self._messages, temperature=o.temperature, top_p=o.top_p,
                                             max_tokens=o.max_tokens, seed=o.seed)
        if self._cancelled:
            return
        stats = TurnStats()
        try:
            for chunk in self._stream:
                for choice in chunk.get("choices") or []:
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text
                    if choice.get("finish_reason"):
                        stats.finish_reason = choice["finish_reason"]
                details = chunk.get("potluck")
                if details:
                    stats.routes = [[Hop(h["peer_id"], int(h["start"]), int(h["end"])) for h in route]
                                    for route in details.get("routes") or []]
                    stats.ttft_s, stats.tokens_per_s = details.get("ttft_s"), details.get("tokens_per_s")
                if chunk.get("usage"):
                    stats.completion_tokens = int(chunk["usage"].get("completion_tokens") or 0)
        except NodeUnavailable:
            raise NOT_RUNNING from None
        except StreamBroken:
            raise ChatError("The connection to Potluck's node on this computer broke off in the middle of the "
                            "answer (the node stopped).", "Potluck restarts it by itself: send your message "
                            "again in a few seconds.") from None
        except ApiFailure as exc:
            raise explain_failure(exc) from None
        if not self._cancelled:
            yield stats


# the engine speaks to command-line users; the app's users know these places instead
APP_WORDS = (("raise --max-memory", "raise the GPU memory cap in Settings"),
             ("--max-memory", "the GPU memory cap in Settings"), ("(max_tokens)", "(Options → Max length)"))


def explain_failure(exc: ApiFailure) -> ChatError:
    message = exc.message.rstrip(".") + "."
    for cli, app in APP_WORDS:
        message = message.replace(cli, app)
    if exc.status == 401:
        return ChatError("The app could not sign in to its own node (the API token changed).",
                         "Quit Potluck and start it again.")
    if exc.status == 503 and "too small" in message:
        return ChatError(message, "Turn on Contribute compute, add another computer to the swarm, or pick a "
                                  "smaller model in Settings.")
    if exc.status == 503:
        return ChatError(message, "Wait a moment and send your message again. If it keeps failing, open Status "
                                  "to see which computers are in the swarm, or turn on Contribute compute.")
    if exc.status == 400:
        return ChatError(f"The node refused the request: {message}",
                         "Change the answer settings under Options (for example a smaller Max length), "
                         "or start a New chat if the conversation is too long.")
    if exc.status == 504:
        return ChatError("The swarm did not answer in time.", "Send your message again; if it keeps happening, "
                                                              "open Status to check the swarm.")
    return ChatError(f"The swarm failed to answer: {message}", "Send your message again in a moment.")
