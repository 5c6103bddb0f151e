"""Where the app finds what it ships with: icons, the model catalog, the demo model.

Installed, these live in the package `potluck_resources`: the Briefcase bundle gets it from
installers/build.py (which stages resources/ under that name) and a wheel gets it from the
`package-dir` mapping in pyproject.toml. So they are found through importlib.resources, wherever
the installer put the app. Only when that package is missing (a checkout run without installing)
does the lookup fall back to the checkout's resources/ folder.

No Qt and nothing heavy (the lookup itself is engine.paths.resources_dir, which the engine's
catalog uses too), so the self-test and any script can use it.
"""

from __future__ import annotations

from pathlib import Path

from engine.paths import resources_dir as engine_resources_dir

PACKAGE = "potluck_resources"
ICON_NAME = "potluck"


class ResourceError(RuntimeError):
    pass


def resources_dir() -> Path:
    """The folder of bundled resources: the installed package, else the checkout's resources/."""
    path = engine_resources_dir()
    if path.is_dir():
        return path
    raise ResourceError(f"Potluck's resources are missing: neither the package {PACKAGE!r} nor the folder "
                        f"{path} exists. Reinstall Potluck (or run `pip install -e .` in a checkout).")


def resource(*parts: str) -> Path:
    """A file or folder among the resources, e.g. resource("catalog.toml"); it must exist."""
    path = resources_dir().joinpath(*parts)
    if not path.exists():
        raise ResourceError(f"Potluck's resource {'/'.join(parts)} is missing from {resources_dir()}. "
                            "Reinstall Potluck, or rebuild it if you are running a development copy.")
    return path


def catalog_file() -> Path:
    return resource("catalog.toml")


def demo_model_dir() -> Path | None:
    """The embedded demo model, or None while it is not built (no config.json yet)."""
    path = resources_dir() / "demo-model"
    return path if (path / "config.json").is_file() else None


def icon_file(size: int | None = None) -> Path:
    """The app icon as PNG: the 1024 px source, or a `potluck-<size>.png` when one is shipped."""
    icons = resources_dir() / "icons"
    if size is not None and (icons / f"{ICON_NAME}-{size}.png").is_file():
        return icons / f"{ICON_NAME}-{size}.png"
    return resource("icons", f"{ICON_NAME}.png")


