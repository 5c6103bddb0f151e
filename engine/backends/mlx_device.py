"""Choosing the MLX device and dtype a shard runs on."""

from __future__ import annotations

import mlx.core as mx

from engine.model.errors import CheckpointError

MLX_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def pick_mlx_device(requested: str = "auto") -> mx.Device:
    """auto is MLX's default device: the GPU on Apple Silicon, the CPU elsewhere."""
    if requested == "auto":
        return mx.default_device()
    if requested == "cpu":
        return mx.Device(mx.cpu)
    if requested in ("gpu", "mps", "metal"):
        if not mx.metal.is_available():
            raise CheckpointError(f"Device {requested!r} was asked for, but MLX sees no Metal GPU here: "
                                  "use --device cpu (slow) or run on a Mac with Apple Silicon.")
        return mx.Device(mx.gpu)
    raise CheckpointError(f"The MLX backend runs on the Apple GPU or the CPU, not {requested!r}: "
                          "use --device auto, gpu or cpu (or --backend torch).")


def pick_mlx_dtype(requested: str, checkpoint_dtype: str, device: mx.Device) -> str:
    """auto keeps the checkpoint's dtype; on MLX's CPU device float16 runs as float32 (CPUs have
    no fast float16 matmul), as the torch backend does."""
    name = requested
    if requested == "auto":
        name = "float32" if device.type == mx.cpu and checkpoint_dtype == "float16" else checkpoint_dtype
    if name not in MLX_DTYPES:
        raise CheckpointError(f"Potluck cannot run {name} on MLX: choose bfloat16, float16 or float32 (or auto).")
    return name
