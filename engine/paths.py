"""Where a node keeps its identity key, settings, caches and logs."""

from __future__ import annotations

import os
from pathlib import Path


def data_dir(explicit: str | None = None) -> Path:
    """--data-dir, else $POTLUCK_HOME, else the platform's user data dir."""
    if explicit:
        path = Path(explicit)
    elif os.environ.get("POTLUCK_HOME"):
        path = Path(os.environ["POTLUCK_HOME"])
    else:
        from platformdirs import user_data_dir

        path = Path(user_data_dir("Potluck", appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path
