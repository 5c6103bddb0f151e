"""The tray icon really shows in a desktop with a system tray: Xvfb with the `trayer` tray host
(Debian packages xvfb and trayer; skipped where they are missing). The app runs in a child process
on that display (this one is offscreen); it chats once and saves screenshots of the chat and status
windows. With POTLUCK_SCREENSHOTS=DIR the screenshots are also copied there (the README's come
from this test: POTLUCK_SCREENSHOTS=resources/docs)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.network]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def desktop(tmp_path):
    """An X display with a tray host: yields the DISPLAY value."""
    if not (shutil.which("Xvfb") and shutil.which("trayer")):
        pytest.skip("needs Xvfb and trayer (Debian packages xvfb and trayer) for a display with a system tray")
    read, write = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-screen", "0", "1280x900x24", "-nolisten", "tcp"],
                            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    with os.fdopen(read) as f:
        number = f.readline().strip()  # Xvfb writes its display number once it accepts clients
    if not number:
        xvfb.kill()
        pytest.skip("Xvfb did not start")
    display = f":{number}"
    env = {**os.environ, "DISPLAY": display}
    tray = subprocess.Popen(["trayer", "--edge", "top", "--align", "right", "--widthtype", "pixel", "--width",
                             "200", "--height", "32", "--transparent", "false"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield display
    finally:
        for proc in (tray, xvfb):
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_the_tray_icon_is_really_shown_and_the_windows_render(desktop, make_checkpoint, tmp_path):
    from app.resources import demo_model_dir

    env = {**os.environ, "DISPLAY": desktop, "QT_QPA_PLATFORM": "xcb"}
    model = demo_model_dir() or make_checkpoint("llama")  # the real first run: the demo model
    proc = subprocess.run([sys.executable, "-m", "tests.test_app_xvfb", str(model), str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
    result = json.loads(lines[-1])
    assert result["tray_available"] and result["tray_visible"], result
    assert result["tray_width"] > 0 and result["answered"], result
    for name in ("app-chat.png", "app-status.png"):
        assert (tmp_path / name).stat().st_size > 5000
    wanted = os.environ.get("POTLUCK_SCREENSHOTS")
    if wanted:
        for name in ("app-chat.png", "app-status.png"):
            shutil.copy(tmp_path / name, Path(wanted) / name)


def main(checkpoint: str, out: str) -> int:
    """In the child, on the Xvfb display: the real app, first run, on the demo model (or a checkpoint
    standing in for it)."""
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication, QSystemTrayIcon

    import app.settings
    from app.main import PotluckApp

    app.settings.default_model = lambda: Path(checkpoint)
    qapp = QApplication([])  # noqa: F841 (kept alive for the whole run)

    def spin_until(condition, seconds):
        """Run the event loop until condition() holds (checked every 20 ms) or time is up."""
        end = time.monotonic() + seconds
        while not condition() and time.monotonic() < end:
            loop = QEventLoop()
            QTimer.singleShot(20, loop.quit)
            loop.exec()
        return condition()

    spin_until(QSystemTrayIcon.isSystemTrayAvailable, 10)  # trayer may still be claiming the tray
    potluck = PotluckApp(Path(out) / "home", node_extra_args=("--heartbeat", "0.3"))
    result = {"tray_available": QSystemTrayIcon.isSystemTrayAvailable(), "tray_visible": False, "tray_width": 0,
              "answered": False}

    try:
        potluck.start()
        if potluck.tray is not None:
            result["tray_visible"] = spin_until(lambda: potluck.tray.icon.isVisible()
                                                and potluck.tray.icon.geometry().width() > 0, 30)
            result["tray_width"] = potluck.tray.icon.geometry().width()
        spin_until(lambda: potluck.controller.status.serving is not None, 300)
        window = potluck.chat_window
        window.max_tokens.setValue(60)
        window.temperature.setValue(0.0)
        window.send_requested.emit("Tell me about the package manager.", window.options())
        spin_until(lambda: not potluck.session.busy, 300)
        result["answered"] = potluck.session.conversation.turns[-1].state == "done"
        potluck.open_status()
        spin_until(lambda: potluck.status_window.picture.picture.covered, 60)
        spin_until(lambda: False, 0.5)  # let the windows lay out and paint
        window.grab().save(str(Path(out) / "app-chat.png"))
        potluck.status_window.grab().save(str(Path(out) / "app-status.png"))
    finally:
        potluck.quit()
        spin_until(lambda: potluck.done, 60)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
