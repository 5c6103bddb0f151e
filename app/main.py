"""The desktop app: a tray icon (or, without a tray, a main window), the chat, status and settings
windows, all wired to one AppController. The chat answers from the swarm through the local node,
or, in solo mode, from a GGUF model file on this computer (app/solo_backend.py), without the node.

`PotluckApp` builds and wires everything without entering an event loop (tests drive it with
pytest-qt); `run()` is the whole program: logging, single instance, QApplication, event loop.
"""

from __future__ import annotations

import logging
import logging.handlers
import signal
import sys
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QApplication, QSystemTrayIcon

from app import bench_probe
from app.chat_backend import ChatOptions, SwarmChatBackend
from app.chat_session import ChatSession
from app.chat_window import ChatWindow
from app.controller import AppController
from app.icons import app_icon
from app.main_window import MainWindow
from app.settings import Preferences
from app.settings_dialog import SettingsDialog
from app.single_instance import SingleInstance
from app.solo_backend import SoloChatBackend, failure_offers, solo_model_problem
from app.status_model import model_title
from app.status_window import StatusWindow
from app.tray import Tray

log = logging.getLogger(__name__)

QUIT_TIMEOUT_MS = 25_000  # the node has 15 s to leave the swarm, then it is killed


def chat_options(prefs: Preferences) -> ChatOptions:
    return ChatOptions(system_prompt=prefs.system_prompt, temperature=prefs.temperature, top_p=prefs.top_p,
                       max_tokens=prefs.max_tokens)


class PotluckApp(QObject):
    quit_finished = Signal()  # the node is stopped: the program may exit

    def __init__(self, data_dir: str | Path, *, no_tray: bool = False, tray_available: bool | None = None,
                 node_extra_args=(), poll_interval_ms: int = 1000):
        super().__init__()
        self.controller = AppController(data_dir, node_extra_args=node_extra_args, poll_interval_ms=poll_interval_ms,
                                        parent=self)
        prefs = self.controller.prefs
        self.swarm_backend = SwarmChatBackend(lambda: self.controller.api, lambda: self.controller.problem)
        self.solo_backend: SoloChatBackend | None = None  # solo mode: a GGUF file answers, not the swarm
        self.session = ChatSession(self.swarm_backend, self)
        self.session.failure_offers = lambda: failure_offers(self.controller.prefs)
        self.chat_window = ChatWindow(chat_options(prefs))
        self._swarm_source = "Answers come from the swarm."
        self.status_window = StatusWindow()
        self.settings_dialog: SettingsDialog | None = None
        if tray_available is None:
            tray_available = QSystemTrayIcon.isSystemTrayAvailable()
        self.uses_tray = bool(tray_available) and not no_tray
        self.tray = Tray(self) if self.uses_tray else None
        self.main_window = None if self.uses_tray else MainWindow()
        self.quitting = False
        self.done = False
        self._save_options = QTimer(self, singleShot=True, interval=600)
        self._save_options.timeout.connect(self._remember_options)
        self._wire()

    def _wire(self) -> None:
        c = self.controller
        for view in self._views():
            view.contribute_toggled.connect(c.set_contribute)
            view.open_chat.connect(self.open_chat)
            view.open_status.connect(self.open_status)
            view.open_settings.connect(self.open_settings)
            view.quit_requested.connect(self.quit)
            view.set_contribute(c.prefs.contribute)
        c.status_changed.connect(self._show_status)
        c.preferences_changed.connect(self._preferences_changed)
        c.swarm_changed.connect(self.status_window.show_swarm)
        c.node_ready.connect(self._node_ready)
        c.notice.connect(self._notice)
        c.finished.connect(self._finished)
        s, w = self.session, self.chat_window
        w.send_requested.connect(s.send)
        w.stop_requested.connect(s.stop)
        w.new_chat_requested.connect(s.new_chat)
        w.options_changed.connect(lambda _: self._save_options.start())
        s.changed.connect(lambda: w.render(s.conversation.to_markdown()))
        s.busy_changed.connect(w.set_busy)
        w.action_requested.connect(self._chat_action)
        self._choose_backend(c.prefs)

    def _views(self):
        return [v for v in (self.tray, self.main_window) if v is not None]

    # ---- actions ----

    def start(self) -> None:
        log.info("Potluck starting (data dir %s, %s)", self.controller.data_dir,
                 "tray" if self.uses_tray else "no tray: main window")
        if self.tray is not None:  # first what the user waits for, then the node
            self.tray.show()
        else:
            self.main_window.show()
        self.controller.start()
        if self.tray is not None and self.controller.first_run:
            self.open_chat()  # something to see on the very first launch

    def open_chat(self) -> None:
        self.chat_window.raise_to_front()

    def open_status(self) -> None:
        self.status_window.show_status(self.controller.status)
        self.status_window.show_swarm(self.controller.swarm)
        self.status_window.raise_to_front()
        self.controller.poll()

    def open_settings(self) -> None:
        if self.settings_dialog is None:
            self.settings_dialog = SettingsDialog(self.controller.prefs)
            self.settings_dialog.applied.connect(self._apply_settings)
        else:
            self.settings_dialog.load(self.controller.prefs)
        self.settings_dialog.show()
        self.settings_dialog.raise_()
        self.settings_dialog.activateWindow()

    def _apply_settings(self, prefs: Preferences) -> None:
        """The dialog's choices; the chat window's options stay as they are now."""
        current = self.controller.prefs
        self.controller.apply_preferences(prefs.with_(system_prompt=current.system_prompt,
                                                      temperature=current.temperature, top_p=current.top_p,
                                                      max_tokens=current.max_tokens))

    def use_solo_mode(self, on: bool = True) -> None:
        """Chat with the solo model file (on) or the swarm (off); remembered in the settings."""
        prefs = self.controller.prefs
        if prefs.solo_mode != on:
            self.controller.apply_preferences(prefs.with_(solo_mode=on))

    def show_main(self) -> None:
        """Another launch asked for this one: show the main window, or the chat."""
        if self.main_window is not None:
            self.main_window.raise_to_front()
        else:
            self.open_chat()

    def quit(self) -> None:
        if self.quitting:
            return
        self.quitting = True
        self.session.stop()
        self._drop_solo()
        for window in (self.chat_window, self.status_window, self.settings_dialog):
            if window is not None:
                window.hide()
        if self.tray is not None:
            self.tray.hide()
        self.controller.shutdown()
        QTimer.singleShot(QUIT_TIMEOUT_MS, self._finished)

    # ---- what the controller says ----

    def _show_status(self, status) -> None:
        for view in (*self._views(), self.status_window):
            view.show_status(status)
        self._show_demo_note()

    def _preferences_changed(self, prefs: Preferences) -> None:
        for view in self._views():
            view.set_contribute(prefs.contribute)
        self._choose_backend(prefs)

    def _node_ready(self, info: dict) -> None:
        self.session.own_peer_id = info.get("peer_id", "")
        self.status_window.show_address(info.get("multiaddr", ""))
        model = self.controller.prefs.model if self.controller.prefs.swarm_mode == "host" else "the swarm's model"
        title = model_title(Path(model).name, self.controller.uses_demo_model)
        self._swarm_source = f"Answers come from the swarm · {title}"
        if not self.controller.prefs.uses_solo:
            self.chat_window.set_source(self._swarm_source)

    # ---- where chat answers come from ----

    def _choose_backend(self, prefs: Preferences) -> None:
        """Solo mode (a GGUF file on this computer) or the swarm; the node runs on either way, so
        contributing does not depend on where chat answers come from."""
        if prefs.uses_solo:
            path = Path(prefs.solo_model.strip()).expanduser()
            if self.solo_backend is None or self.solo_backend.path != path:
                self._drop_solo()
                self.solo_backend = SoloChatBackend(path)
                if solo_model_problem(path) is None:
                    self.controller.tasks.submit(self.solo_backend.warm_up)  # loads off the UI thread
            self.session.set_backend(self.solo_backend)
            self.chat_window.set_source(f"Answers come from {path.name} on this computer (solo mode, no swarm)",
                                        solo=True)
        else:
            self._drop_solo()
            self.session.set_backend(self.swarm_backend)
            self.chat_window.set_source(self._swarm_source)
        self._show_demo_note()

    def _drop_solo(self) -> None:
        backend, self.solo_backend = self.solo_backend, None
        if backend is not None:
            if self.session.backend is backend:
                self.session.set_backend(self.swarm_backend)
            self.controller.tasks.submit(backend.close)  # frees its memory once a running turn ends

    def _show_demo_note(self) -> None:
        self.chat_window.set_demo(self.controller.uses_demo_model and not self.controller.prefs.uses_solo)

    def _chat_action(self, action: str) -> None:
        """A link under a problem in the chat: switch to solo mode and ask again, or open Settings."""
        if action == "solo":
            self.use_solo_mode(True)
            if not self.controller.prefs.uses_solo:  # an old link, and the model file was cleared since
                self.open_settings()
                return
            question = self.session.last_failed_question()
            if question:
                self.session.send(question, self.chat_window.options())
        elif action == "settings":
            self.open_settings()

    def _notice(self, message: str) -> None:
        log.info("notice: %s", message)
        if self.tray is not None:
            self.tray.notify(message)

    def _remember_options(self) -> None:
        o = self.chat_window.options()
        self.controller.prefs = self.controller.settings.update(
            system_prompt=o.system_prompt, temperature=o.temperature, top_p=o.top_p, max_tokens=o.max_tokens)

    def _finished(self) -> None:
        if self.done:
            return  # once only: the controller's signal or the time-out, whichever comes first
        self.done = True
        if self._save_options.isActive():
            self._save_options.stop()
            self._remember_options()
        log.info("Potluck quit")
        self.quit_finished.emit()


def setup_logging(data_dir: Path) -> Path:
    logs = Path(data_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / "app.log"
    root = logging.getLogger()
    if not any(getattr(h, "baseFilename", None) == str(path) for h in root.handlers):
        handler = logging.handlers.RotatingFileHandler(path, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    return path


def run(*, no_tray: bool = False, data_dir: str | None = None, argv: list[str] | None = None,
        node_extra_args=()) -> int:
    """The desktop app's whole life; returns the exit code. Works headless (QT_QPA_PLATFORM=offscreen)."""
    from engine.paths import data_dir as resolve_data_dir

    home = resolve_data_dir(data_dir)
    setup_logging(home)
    qapp = QApplication.instance() or QApplication(argv or sys.argv[:1])
    qapp.setApplicationName("Potluck")
    qapp.setOrganizationName("Potluck")
    qapp.setWindowIcon(app_icon())
    qapp.setQuitOnLastWindowClosed(False)  # the tray keeps running; without a tray, closing the window quits
    instance = SingleInstance(home)
    if instance.notify_running():
        print("Potluck is already running: its window was brought to the front.", file=sys.stderr)
        return 0
    instance.listen()
    app = PotluckApp(home, no_tray=no_tray, node_extra_args=node_extra_args)
    probe = None
    if bench_probe.enabled():  # bench/app_startup.py: startup milestones on stdout
        probe = bench_probe.BenchProbe(app)
    instance.activated.connect(app.show_main)
    app.quit_finished.connect(qapp.quit)
    qapp.aboutToQuit.connect(app.controller.node.stop_now)  # never leave the node behind
    # Ctrl+C / SIGTERM: quit cleanly. Python runs signal handlers only between bytecodes: wake it up.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: QTimer.singleShot(0, app.quit))
    wake = QTimer(interval=300)
    wake.timeout.connect(lambda: None)
    wake.start()
    app.start()
    code = qapp.exec()
    instance.close()
    del probe
    return code



