"""Which compute backend runs a shard here: MLX on Apple Silicon, torch everywhere else.

`potluck generate`, `potluck node` and the node's shard loader all ask this module, so `auto`
means the same thing everywhere. Nothing heavy is imported until a runner is built.
"""

from __future__ import annotations

import functools
import importlib
import platform

from engine.model.errors import CheckpointError

BACKENDS = ("torch", "mlx")
MLX_INSTALL_HINT = ('install it with: pip install "potluck[mlx]" (mlx and mlx-lm; on Linux this brings the '
                    'CPU build, mlx[cpu])')


def apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


@functools.cache
def mlx_import_error() -> str | None:
    """None when mlx and mlx-lm import here, else why not."""
    try:
        importlib.import_module("mlx.core")
        importlib.import_module("mlx_lm")
    except Exception as exc:  # a broken native library raises OSError or RuntimeError, not ImportError
        return f"{type(exc).__name__}: {exc}"
    return None


@functools.cache
def torch_import_error() -> str | None:
    try:
        importlib.import_module("torch")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def pick_backend(requested: str = "auto") -> str:
    """auto: MLX on Apple Silicon when mlx and mlx-lm are installed, else torch."""
    if requested == "auto":
        return "mlx" if apple_silicon() and mlx_import_error() is None else "torch"
    if requested == "mlx":
        error = mlx_import_error()
        if error:
            raise CheckpointError(f"The MLX backend cannot start: mlx or mlx-lm does not import ({error}); "
                                  f"{MLX_INSTALL_HINT}, or use --backend torch.")
        return "mlx"
    if requested == "torch":
        error = torch_import_error()
        if error:
            hint = ", or use --backend mlx" if apple_silicon() else ""
            raise CheckpointError(f"The torch backend cannot start: torch does not import ({error}); "
                                  f'install it with: pip install "potluck[torch]"{hint}.')
        return "torch"
    raise CheckpointError(f"Unknown backend {requested!r}: use auto, torch or mlx.")


def make_runner(backend: str, checkpoint, start: int, end: int, device: str = "auto", dtype: str = "auto",
                **torch_options):
    """A ShardRunner for layers [start, end) on the chosen backend (see pick_backend); torch_options
    (cpu_kernels) apply to the torch runner only."""
    if backend == "mlx":
        from engine.backends.mlx_runner import MlxShardRunner

        return MlxShardRunner(checkpoint, start, end, device=device, dtype=dtype)
    if backend == "torch":
        from engine.backends.torch_runner import TorchShardRunner

        return TorchShardRunner(checkpoint, start, end, device=device, dtype=dtype, **torch_options)
    raise CheckpointError(f"Unknown backend {backend!r}: use torch or mlx.")
