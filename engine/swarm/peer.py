"""A swarm peer: one transport, the stage it serves (if any), and the origin of its user's requests.

Messages are dispatched by type; the handlers run on Lattica's thread and only check and enqueue.
Membership and the scheduler role sit on top of this (node.py).
"""

from __future__ import annotations

from collections.abc import Callable

from engine.swarm.origin import Origin
from engine.swarm.protocol import Hop
from engine.swarm.stage import StageWorker
from engine.swarm.transport import Transport
from engine.swarm.wire import Message, WireError


class Peer:
    def __init__(self, transport_factory: Callable[[Callable[[Message], dict | None]], Transport],
                 route_for: Callable[[int, int, set[str]], list[Hop]], **origin_options):
        self.handlers: dict[str, Callable[[Message], dict | None]] = {
            "stage.forward": lambda m: self._serving().accept(m), "stage.release": self._release,
            "stage.repair": lambda m: self._serving().repair(m), "stage.status": lambda m: self._serving().status(m),
            "stage.token": self._to_origin, "stage.error": self._to_origin, "ping": lambda m: None,
        }
        self.transport = transport_factory(self._dispatch)
        self.peer_id = self.transport.peer_id
        self.stage: StageWorker | None = None
        self.origin = Origin(self.transport.send, route_for, self.peer_id, **origin_options)

    def serve(self, runner, wire_dtype: str | None = None, prefill_chunk_tokens: int = 256,
              wire_codec: str | None = None) -> None:
        """Start serving a shard (replacing any previous one)."""
        old, self.stage = self.stage, StageWorker(runner, self.transport.send, self.peer_id, wire_dtype,
                                                  prefill_chunk_tokens=prefill_chunk_tokens, wire_codec=wire_codec)
        if old is not None:
            old.close()

    def stop_serving(self) -> None:
        old, self.stage = self.stage, None
        if old is not None:
            old.close()

    def close(self) -> None:
        self.stop_serving()
        self.transport.close()

    def _dispatch(self, message: Message) -> dict | None:
        handler = self.handlers.get(message.type)
        if handler is None:
            raise WireError(f"this node does not handle {message.type}")
        return handler(message)

    def _serving(self) -> StageWorker:
        if self.stage is None:
            raise WireError("this node serves no layers right now")
        return self.stage

    def _release(self, message: Message) -> None:
        if self.stage is not None:
            self.stage.release(message.body["request_id"])

    def _to_origin(self, message: Message) -> None:
        self.origin.accept(message)
