"""Lattica behind a small interface: signed messages as raw-bytes unary calls.

Pitfalls of Lattica 1.0 this module exists to contain (../shared/notes/lattica.md):
- streams can deadlock a node: only unary calls are used;
- a slow handler blocks the node's swarm loop: `deliver` must validate, enqueue and return;
- a call whose handler raises is retried 3 times: the handler never raises, it replies with an
  error, and duplicate deliveries are dropped by (sender, message id);
- its own RPC layer and DHT values are pickled: only the raw-bytes paths are used;
- mDNS and UPnP default to on and listeners to 0.0.0.0: both are set explicitly here.
Replies are small JSON objects ({"ok": true, ...} or {"ok": false, "error": ...}); the connection is
noise-encrypted to the peer id that was dialled, so replies need no signature of their own.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path

from engine.swarm import protocol  # noqa: F401  (declares the swarm's message types)
from engine.swarm import wire
from engine.swarm.identity import Identity, verify
from engine.swarm.wire import Message, Tensor, WireError

log = logging.getLogger(__name__)

SERVICE = "PotluckPeer"
METHOD = f"{SERVICE}.deliver"
MAX_REPLY_BYTES = 64 * 1024


class PeerError(RuntimeError):
    """A call to a peer failed: it refused the message, did not answer in time, or is gone."""


class Transport:
    """One node's endpoint. `on_message(message) -> dict | None` runs on Lattica's thread: it must
    only check and enqueue; what it returns is merged into the reply."""

    def __init__(self, key_dir: str | Path, listen: tuple[str, int], swarm: str,
                 on_message: Callable[[Message], dict | None], bootstrap: list[str] | None = None,
                 lan_discovery: bool = False, max_frame_bytes: int = wire.MAX_FRAME_BYTES):
        from lattica import ConnectionHandler, Lattica, rpc_method

        self.identity = Identity.load_or_create(key_dir)
        self.on_message = on_message
        self.max_frame_bytes = max_frame_bytes
        self.refused: Counter[str] = Counter()
        self._seen: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self._lock = threading.Lock()
        host, port = listen
        addr = f"/ip4/{host}/tcp/{port}"
        builder = (Lattica.builder().with_listen_addrs([addr]).with_external_addrs([addr])
                   .with_mdns(lan_discovery).with_upnp(lan_discovery)
                   .with_key_path(str(key_dir)).with_storage_path(str(key_dir))
                   .with_dht_db_path(str(Path(key_dir) / "dht")).with_protocol(f"/potluck/{swarm}/1"))
        if bootstrap:
            builder = builder.with_bootstraps(bootstrap)
        self.node = builder.build()
        if self.node.peer_id() != self.identity.peer_id:
            raise RuntimeError("Lattica's peer id does not match the key in the data dir")
        self.multiaddr = f"{addr}/p2p/{self.identity.peer_id}"
        deliver = self._deliver

        class PotluckPeer(ConnectionHandler):
            @rpc_method
            def deliver(self):  # names the method; the raw handler below serves it
                raise NotImplementedError

            def _handle_deliver(self, data: bytes) -> bytes:
                return deliver(data)

        self._service = PotluckPeer(self.node)

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    # ---- sending ----

    def send(self, peer_id: str, message_type: str, body: dict, tensors: dict[str, Tensor] | None = None,
             timeout: float = 10.0, message_id: str | None = None) -> dict:
        """Deliver a message and return the peer's reply; raises PeerError on refusal or timeout."""
        message = Message(message_type, message_id or uuid.uuid4().hex, self.peer_id, body, tensors or {},
                          time.time())
        frame = wire.encode(message, self.identity.sign)
        if peer_id == self.peer_id:  # to ourselves: same checks, no network
            return self._parse_reply(peer_id, message_type, self._deliver(frame))
        try:
            # Lattica's future takes whole seconds
            raw = self.node.get_client(peer_id).call(METHOD, frame).result(max(1, math.ceil(timeout)))
        except Exception as exc:  # Lattica raises RuntimeError, TimeoutError, concurrent futures errors
            raise PeerError(f"peer {peer_id[-8:]} did not take {message_type}: {exc}") from None
        return self._parse_reply(peer_id, message_type, raw)

    @staticmethod
    def _parse_reply(peer_id: str, message_type: str, raw: bytes) -> dict:
        try:
            reply = json.loads(raw)
        except (TypeError, ValueError):
            raise PeerError(f"peer {peer_id[-8:]} sent a reply that is not JSON") from None
        if not isinstance(reply, dict) or not reply.get("ok"):
            error = reply.get("error") if isinstance(reply, dict) else None
            raise PeerError(f"peer {peer_id[-8:]} refused {message_type}: {error or 'no reason given'}")
        return reply

    def rtt(self, peer_id: str) -> float | None:
        try:
            return float(self.node.get_peer_rtt(peer_id))
        except Exception:
            return None

    # ---- receiving ----

    def _deliver(self, data: bytes) -> bytes:
        try:
            message = wire.decode(bytes(data), verify, self.max_frame_bytes)
        except WireError as exc:
            return self._refuse(str(exc))
        key = (message.sender, message.id)
        with self._lock:
            if key in self._seen:  # a retry of a message already handled: same answer, no new work
                return _reply(self._seen[key])
        try:
            extra = self.on_message(message) or {}
            reply = {"ok": True, **extra}
        except WireError as exc:  # the node's own checks (not a member, wrong shape...)
            return self._refuse(str(exc))
        except Exception as exc:  # never raise into Lattica: it would retry the call 3 times
            log.exception("handler failed on %s", message.type)
            reply = {"ok": False, "error": f"internal error: {exc}"}
        with self._lock:
            self._seen[key] = reply
            while len(self._seen) > 10_000:
                self._seen.popitem(last=False)
        return _reply(reply)

    def _refuse(self, reason: str) -> bytes:
        self.refused[reason.split(":")[0][:60]] += 1
        return _reply({"ok": False, "error": reason})

    def close(self) -> None:
        try:
            self.node.close()
        except RuntimeError:
            pass


def _reply(reply: dict) -> bytes:
    data = json.dumps(reply, separators=(",", ":")).encode()
    if len(data) > MAX_REPLY_BYTES:
        data = json.dumps({"ok": False, "error": "reply too large"}).encode()
    return data
