"""A node's identity: the Ed25519 key Lattica keeps in the data dir, and message signatures.

Lattica's handlers do not learn which peer called them, so every Potluck message is signed with
the sender's libp2p key and names its sender. An Ed25519 peer id ("12D3KooW...") embeds its public
key, so a receiver verifies a signature from the peer id alone, with no key exchange; a node
cannot speak for another. The key file is libp2p's protobuf PrivateKey: 08 01 (Ed25519) 12 40,
then the 32-byte seed and the 32-byte public key.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

KEY_FILE = "p2p.key"
_KEY_PREFIX = bytes([0x08, 0x01, 0x12, 0x40])
_PEER_ID_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])  # identity multihash of an Ed25519 key
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class Identity:
    def __init__(self, key: Ed25519PrivateKey):
        self._key = key
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.peer_id = b58encode(_PEER_ID_PREFIX + public)

    @classmethod
    def load_or_create(cls, key_dir: str | Path) -> "Identity":
        """The identity in key_dir (Lattica's with_key_path), made on first use; stable across restarts."""
        path = Path(key_dir) / KEY_FILE
        if path.exists():
            raw = path.read_bytes()
            if len(raw) != 68 or not raw.startswith(_KEY_PREFIX):
                raise ValueError(f"{path} is not an Ed25519 libp2p key: move it away to make a new identity")
            return cls(Ed25519PrivateKey.from_private_bytes(raw[4:36]))
        key = Ed25519PrivateKey.generate()
        seed = key.private_bytes_raw()
        public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_KEY_PREFIX + seed + public)
        os.replace(tmp, path)
        return cls(key)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def verify(peer_id: str, data: bytes, signature: bytes) -> bool:
    public = public_key_of(peer_id)
    if public is None:
        return False
    try:
        public.verify(signature, data)
        return True
    except InvalidSignature:
        return False


@functools.lru_cache(maxsize=4096)
def public_key_of(peer_id: str) -> Ed25519PublicKey | None:
    try:
        raw = b58decode(peer_id)
    except ValueError:
        return None
    if len(raw) != 38 or not raw.startswith(_PEER_ID_PREFIX):
        return None
    return Ed25519PublicKey.from_public_bytes(raw[6:])


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def b58decode(text: str) -> bytes:
    if not text or len(text) > 128:
        raise ValueError("bad base58 length")
    n = 0
    for char in text:
        digit = _B58.find(char)
        if digit < 0:
            raise ValueError(f"not base58: {char!r}")
        n = n * 58 + digit
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body
