"""Choosing the torch device and dtype a shard runs on."""

from __future__ import annotations

import torch

from engine.model.errors import CheckpointError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(requested: str = "auto") -> torch.device:
    """auto picks CUDA, then Apple's MPS, then the CPU."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise CheckpointError(f"Unknown device {requested!r}: use auto, cpu, cuda, cuda:N or mps.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CheckpointError(
                f"Device {requested!r} was asked for, but this torch build sees no CUDA GPU. "
                "Use --device cpu, or install the CUDA build of torch and an NVIDIA driver."
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CheckpointError(f"There is no {requested}: this machine has {torch.cuda.device_count()} CUDA GPU(s).")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise CheckpointError(f"Device {requested!r} was asked for, but Apple's MPS is not available here.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise CheckpointError(f"Unsupported device {requested!r}: use auto, cpu, cuda, cuda:N or mps.")
    return device


def pick_dtype(requested: str, checkpoint_dtype: str, device: torch.device) -> torch.dtype:
    """auto keeps the checkpoint's dtype where the device runs it well.

    On CUDA without bfloat16 (before Ampere) a bfloat16 checkpoint runs in float16; on a CPU a
    float16 checkpoint runs in float32, since CPUs have no fast float16 matmul.
    """
    if requested == "auto":
        name = checkpoint_dtype
        if device.type == "cuda" and name == "bfloat16" and not torch.cuda.is_bf16_supported():
            name = "float16"
        elif device.type == "cpu" and name == "float16":
            name = "float32"
    else:
        name = requested
    if name not in DTYPES:
        raise CheckpointError(
            f"Potluck cannot run {name} on {device.type}: choose bfloat16, float16 or float32 (or auto)."
        )
    if device.type == "cuda" and name == "bfloat16" and not torch.cuda.is_bf16_supported():
        raise CheckpointError(
            f"This GPU ({torch.cuda.get_device_name(device)}) cannot run bfloat16: use --dtype float16 or auto."
        )
    return DTYPES[name]
