"""Start Potluck at login: an XDG autostart .desktop file on Linux, a LaunchAgent on macOS, a value
under the Run key of the Windows registry. Small plain functions; `home`, `env` and `platform` are
parameters so that tests write into a temporary folder."""

from __future__ import annotations

import os
import plistlib
import sys
from pathlib import Path

APP_ID = "org.potluck.Potluck"
RUN_KEY = r"Software\Microsoft\Windows\CurrentVersion\Run"
RUN_VALUE = "Potluck"


def launch_command() -> list[str]:
    """How to start the app again: the installed executable, or this Python with `-m app.cli`."""
    if os.environ.get("POTLUCK_APP_EXECUTABLE"):
        return [os.environ["POTLUCK_APP_EXECUTABLE"]]
    if Path(sys.executable).name.lower().startswith("python"):
        return [sys.executable, "-m", "app.cli", "app"]
    return [sys.executable]  # an installed app: its executable is its own launcher


# ---- Linux (XDG autostart) ----

def linux_autostart_path(home: Path | None = None, env: dict | None = None) -> Path:
    env = os.environ if env is None else env
    config = env.get("XDG_CONFIG_HOME") or str((home or Path.home()) / ".config")
    return Path(config) / "autostart" / f"{APP_ID}.desktop"


def linux_desktop_entry(command: list[str]) -> str:
    return ("[Desktop Entry]\n"
            "Type=Application\n"
            "Name=Potluck\n"
            "Comment=Share this computer's GPU with a Potluck swarm and chat with its model\n"
            f"Exec={' '.join(_desktop_quote(arg) for arg in command)}\n"
            "Icon=potluck\n"
            "Terminal=false\n"
            "Categories=Network;Utility;\n"
            "X-GNOME-Autostart-enabled=true\n")


def _desktop_quote(arg: str) -> str:
    """Quote one argument of an Exec line (Desktop Entry Specification, "The Exec key")."""
    reserved = set(' \t\n"\'\\><~|&;$*?#()`')
    if arg and not reserved & set(arg):
        return arg.replace("%", "%%")
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`").replace("$", "\\$")
    return '"' + escaped.replace("%", "%%") + '"'


# ---- macOS (LaunchAgent) ----

def macos_launch_agent_path(home: Path | None = None) -> Path:
    return (home or Path.home()) / "Library" / "LaunchAgents" / f"{APP_ID}.plist"


def macos_launch_agent(command: list[str]) -> bytes:
    return plistlib.dumps({"Label": APP_ID, "ProgramArguments": list(command), "RunAtLoad": True,
                           "ProcessType": "Interactive"})


# ---- all platforms ----

def set_start_at_login(enabled: bool, command: list[str] | None = None, *, platform: str = sys.platform,
                       home: Path | None = None, env: dict | None = None) -> str:
    """Add or remove the login item; returns where it lives (a path, or the registry key)."""
    command = command or launch_command()
    if platform.startswith("linux") or platform.startswith("freebsd"):
        path = linux_autostart_path(home, env)
        _write_or_remove(path, linux_desktop_entry(command).encode() if enabled else None)
        return str(path)
    if platform == "darwin":
        path = macos_launch_agent_path(home)
        _write_or_remove(path, macos_launch_agent(command) if enabled else None)
        return str(path)
    if platform == "win32":
        import subprocess
        import winreg  # noqa: only on Windows

        with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY, 0, winreg.KEY_SET_VALUE) as key:
            if enabled:
                winreg.SetValueEx(key, RUN_VALUE, 0, winreg.REG_SZ, subprocess.list2cmdline(command))
            else:
                try:
                    winreg.DeleteValue(key, RUN_VALUE)
                except FileNotFoundError:
                    pass
        return "HKEY_CURRENT_USER\\" + RUN_KEY
    raise OSError(f"Starting at login is not supported on {platform}.")


def start_at_login_enabled(*, platform: str = sys.platform, home: Path | None = None, env: dict | None = None) -> bool:
    if platform.startswith("linux") or platform.startswith("freebsd"):
        return linux_autostart_path(home, env).is_file()
    if platform == "darwin":
        return macos_launch_agent_path(home).is_file()
    if platform == "win32":
        import winreg  # noqa: only on Windows

        try:
            with winreg.OpenKey(winreg.HKEY_CURRENT_USER, RUN_KEY) as key:
                winreg.QueryValueEx(key, RUN_VALUE)
            return True
        except OSError:
            return False
    return False


def _write_or_remove(path: Path, data: bytes | None) -> None:
    if data is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
