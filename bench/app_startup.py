"""How fast Potluck's desktop app starts: launch -> tray icon on screen -> first streamed token.

Each run launches `potluck app` as a real process (`python -m app.cli app`) with POTLUCK_BENCH=1,
which makes the app print its milestones on stdout (app/bench_probe.py): APP_READY when the tray
icon is placed in the tray (or, with no tray, when the main window is painted) and FIRST_TOKEN when
the first words of a chat answer arrive. The app hosts the embedded demo model (or --model) alone,
asks one question as soon as the model's layers are loaded, and quits after the answer.

The display: Xvfb with the trayer tray host when both are installed (the icon is then a real tray
icon), else Qt's offscreen platform (no tray: the main window is what appears).

The reference, in the same run and on the same display: a bare PySide6 program that creates a
QApplication and shows a tray icon (or a window), measured the same way: the floor for any PySide6
app on this machine. All figures are medians over --runs runs (default 3). Runs share one data
dir, as launches on a volunteer's computer do: the first run is a first launch (the node measures
the hardware), the later ones find it cached. The last line is one JSON object:
{"icon_s", "first_token_s", "reference_icon_s", ...}. Target: icon under 2 s.

    python bench/app_startup.py [--model CHECKPOINT_DIR] [--runs 3] [--display auto|xvfb|offscreen]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_ICON_S = 2.0
ICON_TIMEOUT_S = 120.0
TOKEN_TIMEOUT_S = 900.0
PROMPT = "Tell me about the potluck dinner."

# The floor: the least a PySide6 program does to put an icon in the tray (or a window on screen),
# timed exactly as app/bench_probe.py times Potluck.
REFERENCE = r"""
import json, sys, time
from PySide6.QtCore import QEvent, QObject, QTimer
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import QApplication, QSystemTrayIcon, QWidget

app = QApplication(sys.argv[:1])

def done(tray):
    print("APP_READY " + json.dumps({"t": time.time(), "tray": tray}), flush=True)
    QTimer.singleShot(0, app.quit)

if QSystemTrayIcon.isSystemTrayAvailable():
    pixmap = QPixmap(32, 32)
    pixmap.fill(QColor("#2e9e5b"))
    icon = QSystemTrayIcon(QIcon(pixmap))
    icon.show()
    timer = QTimer(interval=5)
    timer.timeout.connect(lambda: (icon.geometry().width() > 0 and (timer.stop(), done(True))))
    timer.start()
else:
    class Painted(QObject):
        def eventFilter(self, watched, event):
            if event.type() == QEvent.Type.Paint and not getattr(self, "seen", False):
                self.seen = True
                done(False)
            return False
    window = QWidget()
    window.resize(520, 220)
    painted = Painted()
    window.installEventFilter(painted)
    window.show()
app.exec()
"""

WAIT_FOR_TRAY = r"""
import sys, time
from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QApplication, QSystemTrayIcon
app = QApplication(sys.argv[:1])
end = time.monotonic() + 20
while not QSystemTrayIcon.isSystemTrayAvailable() and time.monotonic() < end:
    loop = QEventLoop()
    QTimer.singleShot(20, loop.quit)
    loop.exec()
sys.exit(0 if QSystemTrayIcon.isSystemTrayAvailable() else 1)
"""


def log(text: str) -> None:
    print(f"app_startup: {text}", file=sys.stderr, flush=True)


class Display:
    """Xvfb + trayer (a desktop with a system tray), or Qt's offscreen platform."""

    def __init__(self, wanted: str):
        self.procs: list[subprocess.Popen] = []
        self.env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        have_x = bool(shutil.which("Xvfb") and shutil.which("trayer"))
        if wanted == "xvfb" and not have_x:
            raise SystemExit("app_startup: --display xvfb needs Xvfb and trayer (Debian packages xvfb, trayer)")
        self.kind = "offscreen"
        if wanted in ("auto", "xvfb") and have_x and self._start_xvfb():
            self.kind = "xvfb+trayer"
        else:
            self.env["QT_QPA_PLATFORM"] = "offscreen"

    def _start_xvfb(self) -> bool:
        read, write = os.pipe()
        xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x900x24", "-nolisten", "tcp"],
                                pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(write)
        self.procs.append(xvfb)
        with os.fdopen(read) as f:
            number = f.readline().strip()  # Xvfb writes its display number once it accepts clients
        if not number:
            return False
        self.env.update(DISPLAY=f":{number}", QT_QPA_PLATFORM="xcb")
        self.procs.append(subprocess.Popen(
            ["trayer", "--edge", "top", "--align", "right", "--widthtype", "pixel", "--width", "200", "--height",
             "32", "--transparent", "false"], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        ok = subprocess.run([sys.executable, "-c", WAIT_FOR_TRAY], env=self.env, timeout=60).returncode == 0
        if not ok:
            log("trayer did not provide a system tray; using the offscreen platform")
            self.close()
            self.env.pop("DISPLAY", None)
        return ok

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


class Milestones:
    """Reads a child's stdout on a thread: milestone lines (WORD {json}) and a tail of the rest."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.seen: dict[str, dict] = {}
        self.tail: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            word, _, rest = line.strip().partition(" ")
            with self._changed:
                if word in ("APP_READY", "FIRST_TOKEN", "TURN_END") and rest.startswith("{"):
                    self.seen.setdefault(word, json.loads(rest))
                else:
                    self.tail = (self.tail + [line.rstrip()])[-40:]
                self._changed.notify_all()
        with self._changed:
            self.seen.setdefault("EXIT", {"t": time.time()})
            self._changed.notify_all()

    def wait(self, word: str, timeout: float) -> dict | None:
        with self._changed:
            self._changed.wait_for(lambda: word in self.seen or "EXIT" in self.seen, timeout)
            return self.seen.get(word)


def stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM (the app quits cleanly and stops its node), then a kill of the whole group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def reference_run(env: dict) -> dict:
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-c", REFERENCE], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    seen = Milestones(proc)
    ready = seen.wait("APP_READY", ICON_TIMEOUT_S)
    stop(proc, 10)
    if ready is None:
        raise SystemExit(f"app_startup: the reference program showed nothing: {seen.tail[-10:]}")
    return {"icon_s": ready["t"] - started, "tray": ready["tray"]}


def app_run(env: dict, data_dir: Path, ask: bool) -> dict:
    env = {**env, "POTLUCK_BENCH": "1", "PYTHONUNBUFFERED": "1"}
    if ask:
        env["POTLUCK_BENCH_PROMPT"] = PROMPT
    command = [sys.executable, "-m", "app.cli", "app", "--data-dir", str(data_dir)]
    started = time.time()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = Milestones(proc)
    try:
        ready = seen.wait("APP_READY", ICON_TIMEOUT_S)
        if ready is None:
            raise SystemExit("app_startup: Potluck showed no tray icon or window:\n  " + "\n  ".join(seen.tail[-20:]))
        result = {"icon_s": ready["t"] - started, "tray": ready["tray"]}
        if ask:
            first = seen.wait("FIRST_TOKEN", TOKEN_TIMEOUT_S)
            end = seen.wait("TURN_END", TOKEN_TIMEOUT_S)
            if first is None or not end or end.get("state") != "done":
                problem = (end or {}).get("error") or "no answer"
                raise SystemExit(f"app_startup: the chat did not answer ({problem}):\n  "
                                 + "\n  ".join(seen.tail[-20:]))
            result["first_token_s"] = first["t"] - started
            if first.get("node_ready_t"):
                result["node_ready_s"] = first["node_ready_t"] - started
            if first.get("model_ready_t"):
                result["model_ready_s"] = first["model_ready_t"] - started
            proc.wait(timeout=120)  # the app quits by itself after the answer
    finally:
        stop(proc)
    return result


def median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="checkpoint folder to host (default: the embedded demo model)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--display", choices=["auto", "xvfb", "offscreen"], default="auto")
    args = parser.parse_args(argv)

    from app.resources import demo_model_dir
    from app.settings import Settings

    model = Path(args.model).resolve() if args.model else demo_model_dir()
    skipped = None
    if model is None:
        skipped = "the demo model is not built (resources/demo-model): pass --model CHECKPOINT_DIR"
        log(f"no first token: {skipped}")
    display = Display(args.display)
    log(f"display: {display.kind}; model: {model or 'none'}; {args.runs} runs each")
    runs, references = [], []
    try:
        with tempfile.TemporaryDirectory(prefix="potluck-app-startup-") as tmp:
            data_dir = Path(tmp) / "home"
            settings = Settings(data_dir)  # host alone, contributing; any free API port
            settings.save(settings.load().with_(host_model=str(model) if model else "", api="127.0.0.1:0"))
            del settings
            for i in range(args.runs):
                references.append(reference_run(display.env))
                runs.append(app_run(display.env, data_dir, ask=model is not None))
                log(f"run {i + 1}: reference icon {references[-1]['icon_s']:.2f} s; Potluck "
                    + ", ".join(f"{k} {v:.2f} s" for k, v in runs[-1].items() if k.endswith("_s")))
    finally:
        display.close()

    icon = median(runs, "icon_s")
    result = {
        "icon_s": icon,
        "first_token_s": median(runs, "first_token_s"),
        "reference_icon_s": median(references, "icon_s"),
        "icon_over_reference_s": round(icon - median(references, "icon_s"), 3),
        "node_ready_s": median(runs, "node_ready_s"),
        "model_ready_s": median(runs, "model_ready_s"),
        "first_launch_first_token_s": round(runs[0]["first_token_s"], 3) if "first_token_s" in runs[0] else None,
        "icon_target_s": TARGET_ICON_S,
        "icon_under_target": icon < TARGET_ICON_S,
        "tray": all(r["tray"] for r in runs),
        "display": display.kind,
        "model": "demo" if model is not None and model == demo_model_dir() else (str(model) if model else None),
        "first_token_skipped": skipped,
        "runs": args.runs,
        "icon_runs_s": [round(r["icon_s"], 3) for r in runs],
        "first_token_runs_s": [round(r["first_token_s"], 3) for r in runs if "first_token_s" in r],
        "reference_runs_s": [round(r["icon_s"], 3) for r in references],
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
