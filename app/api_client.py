"""The local node's HTTP API, over httpx. Blocking calls: the app makes them on worker threads.

`ChatStream` reads the node's server-sent events; `cancel()` may be called from another thread:
it shuts the socket down so that a read blocked on it returns at once, and the node, whose next
write fails, frees the request's caches along its route.

httpx is imported when first used (it costs a tenth of a second, which the tray icon need not wait
for); `warm_up()` imports it on a worker thread early.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

CHAT_TIMEOUT = dict(connect=5.0, read=300.0, write=30.0, pool=5.0)  # httpx.Timeout: the swarm may heal mid-answer


def warm_up() -> None:
    import httpx  # noqa: F401


class NodeUnavailable(Exception):
    """The node's API did not accept a connection (not running, starting, restarting)."""


class StreamBroken(Exception):
    """The connection to the node broke off in the middle of an answer."""


class ApiFailure(Exception):
    """The node answered with an error (OpenAI's error shape)."""

    def __init__(self, status: int, message: str, kind: str = "", param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


class NodeApi:
    def __init__(self, url: str, token: str, timeout: float = 10.0):
        import httpx

        self.url, self.token = url.rstrip("/"), token
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                                   timeout=timeout, trust_env=False)

    @classmethod
    def from_ready(cls, ready: dict) -> "NodeApi":
        """From the node's READY line: {"api": url, "token_file": path, ...}."""
        with open(ready["token_file"], encoding="utf-8") as f:
            return cls(ready["api"], f.read().strip())

    def close(self) -> None:
        self.client.close()

    def health(self) -> dict:
        return self._call("GET", "/health")

    def swarm(self) -> dict:
        return self._call("GET", "/swarm")

    def set_serving(self, serves: bool) -> dict:
        # joining again with the new role waits on the scheduler: allow for a slow host
        return self._call("POST", "/role", json={"serves": serves}, timeout=40.0)

    def chat_stream(self, messages: list[dict], *, temperature: float, top_p: float, max_tokens: int,
                    seed: int | None = None) -> "ChatStream":
        body = {"messages": messages, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens,
                "stream": True}
        if seed is not None:
            body["seed"] = seed
        return ChatStream(self.client, body)

    def _call(self, method: str, path: str, **kwargs) -> dict:
        import httpx

        try:
            response = self.client.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise NodeUnavailable(str(exc)) from None
        except httpx.HTTPError as exc:
            raise StreamBroken(str(exc) or type(exc).__name__) from None
        if response.status_code != 200:
            raise _failure(response)
        return response.json()


class ChatStream:
    """Iterate for the completion chunks (dicts); the last one carries usage and "potluck" details."""

    def __init__(self, client: httpx.Client, body: dict):
        self._client, self._body = client, body
        self._cancelled = threading.Event()
        self._response: httpx.Response | None = None
        self._lock = threading.Lock()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            response = self._response
        if response is not None:
            _shutdown(response)

    def __iter__(self) -> Iterator[dict]:
        import httpx

        try:
            with self._client.stream("POST", "/v1/chat/completions", json=self._body,
                                     timeout=httpx.Timeout(**CHAT_TIMEOUT)) as resp:
                with self._lock:
                    self._response = resp
                if self.cancelled:
                    return
                if resp.status_code != 200:
                    resp.read()
                    raise _failure(resp)
                for line in resp.iter_lines():
                    if self.cancelled:
                        return
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    payload = json.loads(data)
                    if "error" in payload:
                        error = payload["error"] or {}
                        raise ApiFailure(500, error.get("message") or "unknown error", error.get("type") or "")
                    yield payload
                # the body ends when the connection closes: without [DONE], the node went away mid-answer
                if not self.cancelled:
                    raise StreamBroken("the answer ended before the node said it was complete")
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            if not self.cancelled:
                raise NodeUnavailable(str(exc)) from None
        except httpx.ReadTimeout:
            if not self.cancelled:
                raise ApiFailure(504, "no answer within 300 seconds", "timeout") from None
        except (httpx.HTTPError, OSError, ValueError) as exc:
            if not self.cancelled:
                raise StreamBroken(str(exc) or type(exc).__name__) from None


def _failure(response: httpx.Response) -> ApiFailure:
    try:
        error = response.json()["error"]
        return ApiFailure(response.status_code, error["message"], error.get("type", ""), error.get("param"))
    except (ValueError, KeyError, TypeError):
        return ApiFailure(response.status_code, response.text[:300] or response.reason_phrase)


def _shutdown(response: httpx.Response) -> None:
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
