"""Hidden states on the wire in 8-bit blocks (the layout llama.cpp calls Q8_0).

Every run of BLOCK values along the hidden dimension travels as BLOCK int8 codes and one float16
scale (the block's largest magnitude / 127): 1.0625 bytes a value instead of bfloat16's 2. Prompts'
hidden states are what loads a volunteer's uplink (4 MB a hop for a mean prompt of a 70B model), so
halving them roughly halves the time a prompt spends on each hop. The cost is a rounding error of at
most half a step (scale / 2) per value, relative to the block's largest value: about 0.4% of it.
Blocks keep an outlier channel from coarsening more than its own 31 neighbours. The same blocks hold
the KV cache in llama.cpp's q8_0 mode, and the Petals paper compresses hidden states between stages
with 8-bit blockwise quantization. bench/q8_quality.py measures what it does to a trained model.

Arrays are host arrays (engine.backends.host): bfloat16 as uint16 words.
"""

from __future__ import annotations

import numpy as np

from engine.backends.host import BFLOAT16_WORDS, HOST_DTYPES

BLOCK = 32
FLOAT16_MAX = float(np.finfo(np.float16).max)


def supports(hidden_size: int) -> bool:
    return hidden_size % BLOCK == 0


def wire_bytes(tokens: int, hidden_size: int) -> int:
    return tokens * (hidden_size + 2 * hidden_size // BLOCK)


def to_float32(array: np.ndarray) -> np.ndarray:
    if array.dtype == BFLOAT16_WORDS:
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32)


def from_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values as a host array of dtype; to bfloat16 rounding to nearest, ties to even."""
    if HOST_DTYPES[dtype] != BFLOAT16_WORDS:
        return values.astype(HOST_DTYPES[dtype])
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def encode(hidden: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[T, H] host array -> (codes int8 [T, H], scales float16 [T, H / BLOCK])."""
    tokens, size = hidden.shape
    blocks = to_float32(hidden).reshape(tokens, size // BLOCK, BLOCK)
    largest = np.abs(blocks).max(axis=2)  # NaN and infinity carry through the maximum
    if not np.isfinite(largest).all():
        raise ValueError("hidden states hold NaN or infinity: the shard's output is broken")
    scales = np.minimum(largest / 127.0, FLOAT16_MAX).astype(np.float16)
    step = scales.astype(np.float32)
    inverse = np.divide(1.0, step, out=np.zeros_like(step), where=step > 0)[:, :, None]
    codes = np.clip(np.rint(blocks * inverse), -127, 127).astype(np.int8)
    return codes.reshape(tokens, size), scales


def decode(codes: np.ndarray, scales: np.ndarray, dtype: str) -> np.ndarray:
    """The inverse of encode, as a host array of dtype. Scales must be finite and >= 0."""
    tokens, size = codes.shape
    values = codes.reshape(tokens, size // BLOCK, BLOCK).astype(np.float32) * scales.astype(np.float32)[:, :, None]
    return from_float32(values.reshape(tokens, size), dtype)
