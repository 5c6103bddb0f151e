"""A chat conversation as plain data, and how it reads on screen (Markdown).

The chat window shows `Conversation.to_markdown()`; the next request sends `messages()`. Answers
that failed or were stopped before any text stay on screen but are not sent back to the model. A
problem may come with offers: links such as `potluck:solo` ("chat in solo mode instead") that the
chat window hands back to the app.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from app.chat_backend import Hop, TurnStats

STREAMING, DONE, STOPPED, FAILED = "streaming", "done", "stopped", "failed"
LINK_SCHEME = "potluck"  # links the app acts on itself: potluck:solo, potluck:settings


@dataclass
class Turn:
    question: str
    answer: str = ""
    state: str = STREAMING
    error: str | None = None  # what happened and what to do, in plain words
    stats: TurnStats | None = None
    footer: str = ""  # route and timings, filled when the answer ends
    offers: list[tuple[str, str]] = field(default_factory=list)  # (action, words): links under a problem


@dataclass
class Conversation:
    turns: list[Turn] = field(default_factory=list)

    @property
    def current(self) -> Turn | None:
        return self.turns[-1] if self.turns and self.turns[-1].state == STREAMING else None

    def ask(self, question: str) -> Turn:
        turn = Turn(question)
        self.turns.append(turn)
        return turn

    def messages(self) -> list[dict]:
        """The conversation as OpenAI messages, ending with the current question."""
        out = []
        for turn in self.turns:
            out.append({"role": "user", "content": turn.question})
            if turn.state in (DONE, STOPPED) and turn.answer:
                out.append({"role": "assistant", "content": turn.answer})
            elif turn is not self.turns[-1]:
                out.pop()  # a question that got no answer: leave it out
        return out

    def to_markdown(self) -> str:
        parts = []
        for turn in self.turns:
            parts.append(f"**You**\n\n{escape_markdown(turn.question)}")
            answer = turn.answer
            if turn.state == STREAMING:
                answer = (answer + " ▍") if answer else "*…waiting for the first words…*"
            parts.append(f"**Potluck**\n\n{answer}" if answer else "**Potluck**")
            if turn.state == STOPPED:
                parts.append("*Stopped.*")
            if turn.error:
                parts.append(f"> **Problem:** {escape_markdown(turn.error)}")
                if turn.offers:
                    parts.append("> " + " · ".join(f"[{escape_markdown(words)}]({LINK_SCHEME}:{action})"
                                                   for action, words in turn.offers))
            if turn.footer:
                parts.append(f"*{escape_markdown(turn.footer)}*")
            parts.append("---")
        return "\n\n".join(parts)


_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def escape_markdown(text: str) -> str:
    """Show `text` as typed: no Markdown effects, line breaks kept."""
    lines = [_SPECIAL.sub(r"\\\1", line) for line in text.strip().splitlines()]
    return "  \n".join(lines)


def describe_route(routes: list[list[Hop]], own_peer_id: str = "") -> str:
    """"this computer (layers 0-3) → …k3Xq (layers 4-7)"; the last route when the swarm re-routed."""
    if not routes:
        return ""
    hops = [f"{'this computer' if h.peer_id == own_peer_id else short_peer(h.peer_id)} "
            f"(layers {h.start}-{h.end - 1})" for h in routes[-1]]
    text = " → ".join(hops)
    if len(routes) > 1:
        text += f" (re-routed {len(routes) - 1}× after a computer dropped out)"
    return text


def short_peer(peer_id: str) -> str:
    return "node …" + peer_id[-6:]


def describe_stats(stats: TurnStats, own_peer_id: str = "") -> str:
    parts = []
    route = describe_route(stats.routes, own_peer_id)
    if route:
        parts.append(f"Route: {route}")
    if stats.ttft_s is not None:
        parts.append(f"first token {stats.ttft_s:.2f} s")
    if stats.tokens_per_s is not None:
        parts.append(f"{stats.tokens_per_s:.1f} tokens/s")
    if stats.finish_reason == "length":
        parts.append("stopped at the length limit (Options → Max length)")
    return " · ".join(parts)
