"""The node's OpenAI-compatible HTTP API: local only, behind a bearer token.

Endpoints: POST /v1/chat/completions (streaming and not), GET /v1/models, GET /health (no token:
readiness checks), GET /swarm, POST /role ({"serves": bool}: the desktop app's contribute toggle).
Errors use OpenAI's shape. Built on the standard library's threading HTTP server: one thread per
connection is plenty for a local API with a handful of clients.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from engine.api.schema import ApiError, parse_chat_request

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20


class ApiServer:
    """`node` provides: model_name, context, token, chat(request, result) -> iterator of text,
    new_result(), health() -> dict, swarm() -> dict, set_serving(bool) -> dict."""

    def __init__(self, node, host: str, port: int):
        self.node = node
        handler = type("Handler", (_Handler,), {"node": node})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="api", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    node = None
    protocol_version = "HTTP/1.1"
    server_version = "Potluck"

    def log_message(self, fmt, *args):
        log.debug("api: " + fmt, *args)

    # ---- routing ----

    def do_GET(self):
        self._serve({"/health": self._health, "/v1/models": self._models, "/swarm": self._swarm})

    def do_POST(self):
        self._serve({"/v1/chat/completions": self._chat, "/role": self._role})

    def _serve(self, routes):
        path = self.path.split("?", 1)[0]
        try:
            handler = routes.get(path)
            if handler is None:
                raise ApiError(404, f"No route {self.command} {path}.", kind="not_found_error")
            if path != "/health":
                self._authorize()
            handler()
        except ApiError as exc:
            self.close_connection = True  # the body may be unread: never parse it as the next request
            self._json(exc.status, exc.body())
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # the node keeps serving whatever one request does
            log.exception("API request failed")
            self.close_connection = True
            self._json(500, ApiError(500, f"Internal error: {exc}", kind="server_error").body())

    def _authorize(self):
        given = self.headers.get("Authorization", "")
        expected = f"Bearer {self.node.token}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise ApiError(401, "Missing or wrong API token: send 'Authorization: Bearer <token>' with the "
                           "token from the node's token file.", kind="authentication_error")

    # ---- endpoints ----

    def _health(self):
        self._json(200, self.node.health())

    def _models(self):
        self._json(200, {"object": "list", "data": [
            {"id": self.node.model_name, "object": "model", "created": 0, "owned_by": "potluck"}]})

    def _swarm(self):
        self._json(200, self.node.swarm())

    def _role(self):
        body = self._body()
        if not isinstance(body, dict) or not isinstance(body.get("serves"), bool):
            raise ApiError(400, "Send {\"serves\": true} to serve layers or {\"serves\": false} to be a client only.",
                           "serves")
        from engine.model.errors import CheckpointError

        try:
            self._json(200, self.node.set_serving(body["serves"]))
        except CheckpointError as exc:
            raise ApiError(503, str(exc), kind="service_unavailable") from None

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            raise ApiError(413, f"Request body of {length} bytes is over the limit of {MAX_BODY_BYTES}.")
        try:
            return json.loads(self.rfile.read(length) or b"null")
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ApiError(400, "The request body is not valid JSON.") from None

    def _chat(self):
        body = self._body()
        request = parse_chat_request(body, self.node.context)
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        result = self.node.new_result()
        pieces = self.node.chat(request, result)
        if request.stream:
            self._stream(pieces, result, completion_id, created)
            return
        text = "".join(pieces)
        self._json(200, {
            "id": completion_id, "object": "chat.completion", "created": created, "model": self.node.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": result.finish_reason}],
            "usage": _usage(result), "potluck": _details(result)})

    def _stream(self, pieces, result, completion_id, created):
        def chunk(delta, finish=None, **extra):
            return {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                    "model": self.node.model_name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}

        first = next(pieces, None)  # errors before the first token still get a proper status code
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            self._event(chunk({"role": "assistant", "content": ""}))
            if first is not None:
                self._event(chunk({"content": first}))
                for piece in pieces:
                    self._event(chunk({"content": piece}))
            self._event(chunk({}, result.finish_reason, usage=_usage(result), potluck=_details(result)))
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except Exception as exc:
            if not isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                self._event({"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}})
            raise
        finally:
            pieces.close()  # the client went away or we are done: free the caches along the route

    def _event(self, payload):
        self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        self.wfile.flush()

    def _json(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)


def _usage(result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


def _details(result) -> dict:
    return {"routes": result.routes, "ttft_s": result.ttft_s, "tokens_per_s": result.tokens_per_s}
