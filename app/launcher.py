"""How the app starts another `potluck ...` process (the node, the self-test's node).

Standard library only, so the headless self-test can use it before Qt is imported.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path


def potluck_command() -> list[str]:
    """How to start another `potluck ...` process from this one.

    $POTLUCK_NODE_COMMAND when set (the installed app's launcher sets it); else, from a Python
    interpreter (a checkout, a venv, `briefcase dev`), `python -m app.cli`; else sys.executable alone: in an installed Briefcase app that is the app's
    own launcher (Potluck.exe, Potluck.app/Contents/MacOS/Potluck, /usr/bin/potluck), which runs
    `potluck` with the arguments it is given and would take `-m app.cli` for some of them.
    """
    override = os.environ.get("POTLUCK_NODE_COMMAND", "").strip()
    if override:
        return [part.strip('"') for part in shlex.split(override, posix=os.name != "nt")]
    if Path(sys.executable).name.lower().startswith("python"):
        return [sys.executable, "-m", "app.cli"]
    return [sys.executable]
