"""How long the user has left the computer alone (no keyboard or mouse), per OS.

Used by "contribute only when the computer is idle". Returns None where it cannot be known; the
app then contributes as if the computer were idle, and Settings says so.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys

log = logging.getLogger(__name__)


def idle_seconds() -> float | None:
    try:
        if sys.platform == "win32":
            return _windows()
        if sys.platform == "darwin":
            return _macos()
        return _linux()
    except Exception as exc:  # never let a probe break the app
        log.debug("idle time unknown: %s", exc)
        return None


def should_serve(contribute: bool, only_when_idle: bool, idle_s: float | None, idle_minutes: float) -> bool:
    if not contribute:
        return False
    if not only_when_idle or idle_s is None:
        return True
    return idle_s >= idle_minutes * 60


def _windows() -> float:
    import ctypes
    from ctypes import wintypes

    class LASTINPUTINFO(ctypes.Structure):
        _fields_ = [("cbSize", wintypes.UINT), ("dwTime", wintypes.DWORD)]

    info = LASTINPUTINFO(cbSize=ctypes.sizeof(LASTINPUTINFO))
    if not ctypes.windll.user32.GetLastInputInfo(ctypes.byref(info)):
        raise OSError("GetLastInputInfo failed")
    return (ctypes.windll.kernel32.GetTickCount() - info.dwTime) / 1000.0


def _macos() -> float:
    out = subprocess.run(["ioreg", "-c", "IOHIDSystem", "-d", "4"], capture_output=True, text=True,
                         timeout=5).stdout
    for line in out.splitlines():
        if '"HIDIdleTime"' in line:
            return int(line.rsplit("=", 1)[1].strip()) / 1e9
    raise OSError("no HIDIdleTime")


def _linux() -> float | None:
    # GNOME / KDE and others: the freedesktop screensaver's idle time over D-Bus (milliseconds)
    for service, path, iface, method in (
            ("org.gnome.Mutter.IdleMonitor", "/org/gnome/Mutter/IdleMonitor/Core",
             "org.gnome.Mutter.IdleMonitor", "GetIdletime"),
            ("org.freedesktop.ScreenSaver", "/org/freedesktop/ScreenSaver", "org.freedesktop.ScreenSaver",
             "GetSessionIdleTime")):
        if shutil.which("gdbus"):
            proc = subprocess.run(["gdbus", "call", "--session", "--dest", service, "--object-path", path,
                                   "--method", f"{iface}.{method}"], capture_output=True, text=True, timeout=5)
            numbers = re.findall(r"\b(\d+)\b", proc.stdout)  # "(uint64 12345,)"
            if proc.returncode == 0 and numbers:
                return int(numbers[-1]) / 1000.0
    if shutil.which("xprintidle"):
        proc = subprocess.run(["xprintidle"], capture_output=True, text=True, timeout=5)
        if proc.returncode == 0 and proc.stdout.strip().isdigit():
            return int(proc.stdout.strip()) / 1000.0
    return None
