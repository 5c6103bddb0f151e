"""The wire format of messages between Potluck nodes. Never pickle.

A frame is:

    b"PLK" | version (1 byte) | header length (u32, little endian) | header (UTF-8 JSON)
          | tensor bytes, in the order the header lists them | Ed25519 signature (64 bytes)

The header is {"type", "id", "sender", "sent_at", "body", "tensors": [{"name", "dtype", "shape"}]}.
Each message type has a schema for its body (`SCHEMAS`); `decode` checks the frame, the schema and
the tensor sizes before anything else looks at the message, and raises WireError with a reason a
peer can be told. The signature covers everything before it and is checked against the public key
inside the sender's peer id (see identity.py), so a message cannot claim another sender.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

MAGIC = b"PLK"
VERSION = 1
MAX_HEADER_BYTES = 64 * 1024
MAX_FRAME_BYTES = 256 * 1024 * 1024
MAX_TENSORS = 8
SIGNATURE_BYTES = 64

DTYPE_SIZES = {"float32": 4, "bfloat16": 2, "float16": 2, "int64": 8, "int32": 4, "int8": 1}

# Body schemas: field -> (type or tuple of types, required). `int` excludes bool.
SCHEMAS: dict[str, dict[str, tuple[type | tuple, bool]]] = {}


class WireError(ValueError):
    """A message that is malformed, oversized, unsigned, or not what its type promises."""


@dataclass(frozen=True)
class Tensor:
    """A tensor as raw bytes: the receiver turns it into torch or MLX after validation.

    The bytes are C-ordered and little endian (the byte order of every platform Potluck runs on:
    x86-64 and arm64); bfloat16 travels as its raw 16-bit words, whichever backend made it."""
    dtype: str
    shape: tuple[int, ...]
    data: bytes

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


@dataclass(frozen=True)
class Message:
    type: str
    id: str
    sender: str
    body: dict
    tensors: dict[str, Tensor] = field(default_factory=dict)
    sent_at: float = 0.0


def schema(message_type: str, **fields) -> None:
    """Declare a message type: schema("token", request_id=(str, True), token=(int, True))."""
    SCHEMAS[message_type] = fields


def encode(message: Message, sign) -> bytes:
    """Serialise and sign (sign: bytes -> 64-byte signature)."""
    header = {
        "type": message.type, "id": message.id, "sender": message.sender, "sent_at": message.sent_at,
        "body": message.body,
        "tensors": [{"name": n, "dtype": t.dtype, "shape": list(t.shape)} for n, t in message.tensors.items()],
    }
    header_bytes = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(header_bytes)} bytes exceeds {MAX_HEADER_BYTES}")
    unsigned = b"".join([MAGIC, bytes([VERSION]), struct.pack("<I", len(header_bytes)), header_bytes,
                         *(t.data for t in message.tensors.values())])
    return unsigned + sign(unsigned)


def decode(frame: bytes, verify, max_frame_bytes: int = MAX_FRAME_BYTES) -> Message:
    """Parse, check and verify a frame (verify: (peer_id, data, signature) -> bool)."""
    if len(frame) > max_frame_bytes:
        raise WireError(f"frame of {len(frame)} bytes exceeds the limit of {max_frame_bytes}")
    if len(frame) < 8 + SIGNATURE_BYTES or frame[:3] != MAGIC:
        raise WireError("not a Potluck frame")
    if frame[3] != VERSION:
        raise WireError(f"unsupported protocol version {frame[3]} (this node speaks {VERSION}): update Potluck")
    (header_len,) = struct.unpack_from("<I", frame, 4)
    if header_len > MAX_HEADER_BYTES or 8 + header_len + SIGNATURE_BYTES > len(frame):
        raise WireError("header length out of bounds")
    try:
        header = json.loads(frame[8:8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WireError("header is not valid JSON") from None
    if not isinstance(header, dict):
        raise WireError("header is not an object")
    for key, kind in (("type", str), ("id", str), ("sender", str), ("sent_at", (int, float)), ("body", dict),
                      ("tensors", list)):
        if not isinstance(header.get(key), kind) or isinstance(header.get(key), bool):
            raise WireError(f"header field {key!r} missing or of the wrong type")
    if not 0 < len(header["id"]) <= 64 or not 0 < len(header["sender"]) <= 128:
        raise WireError("message id or sender out of bounds")
    if header["type"] not in SCHEMAS:
        raise WireError(f"unknown message type {header['type']!r}")
    _check_body(header["type"], header["body"])

    tensors, offset = {}, 8 + header_len
    payload_end = len(frame) - SIGNATURE_BYTES
    if len(header["tensors"]) > MAX_TENSORS:
        raise WireError(f"more than {MAX_TENSORS} tensors")
    for entry in header["tensors"]:
        name, dtype, shape = _tensor_entry(entry)
        size = math.prod(shape) * DTYPE_SIZES[dtype]
        if offset + size > payload_end:
            raise WireError(f"tensor {name!r} runs past the end of the frame")
        tensors[name] = Tensor(dtype, shape, frame[offset:offset + size])
        offset += size
    if offset != payload_end:
        raise WireError(f"{payload_end - offset} stray bytes after the tensors")
    if not verify(header["sender"], frame[:payload_end], frame[payload_end:]):
        raise WireError("bad signature: the message was not sent by the peer it names")
    return Message(header["type"], header["id"], header["sender"], header["body"], tensors, header["sent_at"])


def _check_body(message_type: str, body: dict) -> None:
    fields = SCHEMAS[message_type]
    unknown = set(body) - set(fields)
    if unknown:
        raise WireError(f"{message_type}: unknown field(s) {sorted(unknown)}")
    for name, (kind, required) in fields.items():
        if name not in body:
            if required:
                raise WireError(f"{message_type}: missing field {name!r}")
            continue
        value = body[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise WireError(f"{message_type}: field {name!r} has the wrong type")
        if not isinstance(value, kinds):
            raise WireError(f"{message_type}: field {name!r} has the wrong type")


def _tensor_entry(entry) -> tuple[str, str, tuple[int, ...]]:
    if not isinstance(entry, dict):
        raise WireError("tensor entry is not an object")
    name, dtype, shape = entry.get("name"), entry.get("dtype"), entry.get("shape")
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        raise WireError("tensor name missing or too long")
    if dtype not in DTYPE_SIZES:
        raise WireError(f"tensor {name!r}: unsupported dtype {dtype!r}")
    if (not isinstance(shape, list) or not 0 < len(shape) <= 4
            or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= 1 << 24 for d in shape)):
        raise WireError(f"tensor {name!r}: bad shape {shape!r}")
    return name, dtype, tuple(shape)
