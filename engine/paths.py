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


def resources_dir() -> Path:
    """The folder of what Potluck ships with: catalog, icons, scenarios, the demo model.

    Installed (a wheel or a Briefcase bundle), resources/ is the package `potluck_resources`
    (pyproject.toml maps it), found through importlib.resources wherever the installer put it. In
    a checkout run without installing, it is the checkout's resources/ folder.
    """
    import importlib.resources

    try:
        root = importlib.resources.files("potluck_resources")
    except (ModuleNotFoundError, NotADirectoryError):  # the latter: a namespace package, Python 3.11
        root = None
    if not isinstance(root, Path):  # a namespace package answers joinpath with real paths
        probe = root.joinpath("catalog.toml") if root is not None else None
        root = probe.parent if isinstance(probe, Path) else None
    if root is not None and root.is_dir():
        return root
    return Path(__file__).resolve().parents[1] / "resources"
