"""Run a subprocess as on a Mac, where the installer ships no torch (issue 8): `import torch` fails
there, and transformers (which mlx-lm imports) sees no torch and does without it."""

from __future__ import annotations

import os
from pathlib import Path

BLOCK_TORCH = 'import sys\nsys.modules["torch"] = None  # as if torch were not installed\n'


def env_without_torch(folder: Path) -> dict:
    """os.environ plus a PYTHONPATH whose sitecustomize makes every `import torch` fail."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(BLOCK_TORCH)
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}
