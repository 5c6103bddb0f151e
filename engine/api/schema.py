"""Validation of OpenAI-style chat completion requests, with OpenAI's error shape."""

from __future__ import annotations

from dataclasses import dataclass

MAX_MESSAGES = 512
MAX_STOP_STRINGS = 4
ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    stream: bool


def parse_chat_request(body, context: int, default_max_tokens: int = 512) -> ChatRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or len(messages) > MAX_MESSAGES:
        raise ApiError(400, f"'messages' must be a list of 1 to {MAX_MESSAGES} messages.", "messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}] needs a role among {', '.join(ROLES)}.", "messages")
        content = m.get("content")
        if isinstance(content, list):  # the parts form: keep the text parts
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported.", "messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string.", "messages")
        clean.append({"role": m["role"], "content": content})
    if body.get("n", 1) != 1:
        raise ApiError(400, "Only n=1 is supported.", "n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is None:
        max_tokens = default_max_tokens
    if not _is_int(max_tokens) or not 1 <= max_tokens <= context:
        raise ApiError(400, f"'max_tokens' must be an integer from 1 to {context}.", "max_tokens")
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if not _is_number(temperature) or not 0 <= temperature <= 2:
        raise ApiError(400, "'temperature' must be a number from 0 to 2.", "temperature")
    top_p = body.get("top_p", 1.0)
    if top_p is None:
        top_p = 1.0
    if not _is_number(top_p) or not 0 < top_p <= 1:
        raise ApiError(400, "'top_p' must be a number in (0, 1].", "top_p")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise ApiError(400, "'seed' must be an integer.", "seed")
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if (not isinstance(stop, list) or len(stop) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stop)):
        raise ApiError(400, f"'stop' must be a string or a list of up to {MAX_STOP_STRINGS} strings.", "stop")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false.", "stream")
    return ChatRequest(clean, max_tokens, float(temperature), float(top_p), seed, tuple(stop), stream)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)
