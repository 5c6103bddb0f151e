"""The app's logic, without any window: it runs the local node, watches it, and keeps the user's
wishes (contribute or not, which swarm) true.

- The node process is started from the preferences (first run: host a swarm alone with the demo
  model), restarted with a back-off if it dies, and restarted when a setting it was started with
  changes.
- Every second /health and /swarm are fetched on a worker thread; the answer becomes a
  `NodeStatus` (tray, main window) and a swarm snapshot (status window).
- "Contribute compute" switches the running node's role through its API (POST /role), so chat
  keeps working while the role changes; "only when idle" flips the role as the user comes and goes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal

from app.api_client import ApiFailure, NodeApi, NodeUnavailable, StreamBroken
from app.api_client import warm_up as api_warm_up
from app.autostart import set_start_at_login
from app.idle import idle_seconds, should_serve
from app.node_process import NodeConfig, NodeProcess
from app.settings import Preferences, Settings, is_demo_model
from app.status_model import NodeStatus, summarize
from app.tasks import Tasks

log = logging.getLogger(__name__)

RESTART_DELAYS_S = (1, 2, 5, 10, 30)
STABLE_AFTER_S = 60  # a node that ran this long resets the restart back-off
JOIN_RETRY_S = 30  # a joining node that could not reach the host tries again


class AppController(QObject):
    status_changed = Signal(object)  # NodeStatus
    swarm_changed = Signal(object)  # the latest /swarm answer (dict) or None
    node_ready = Signal(object)  # the node's READY info
    preferences_changed = Signal(object)  # Preferences
    notice = Signal(str)  # a one-off message worth showing (tray balloon, status bar)
    finished = Signal()  # shutdown is complete: the node process is gone

    def __init__(self, data_dir: str | Path, settings: Settings | None = None, *, node_extra_args=(),
                 poll_interval_ms: int = 1000, parent: QObject | None = None):
        super().__init__(parent)
        self.data_dir = Path(data_dir)
        self.settings = settings or Settings(self.data_dir)
        self.first_run = not self.settings.configured()
        self.prefs: Preferences = self.settings.load()
        if self.first_run:
            self.settings.save(self.prefs)  # host alone with the demo model, contributing
        self.node_extra_args = tuple(node_extra_args)
        self.tasks = Tasks(4, self)
        self.node = NodeProcess(self)
        self.node.ready.connect(self._on_ready)
        self.node.failed.connect(self._on_failed)
        self.node.exited.connect(self._on_exited)
        self.node.stopped.connect(self._on_stopped)
        self.api: NodeApi | None = None
        self.ready_info: dict | None = None
        self.health: dict | None = None
        self.swarm: dict | None = None
        self.swarm_error = ""
        self.problem = ""
        self.idle_s: float | None = None
        self.status: NodeStatus = summarize("stopped", None)
        self.shutting_down = False
        self._polling = False
        self._role_busy = False
        self._restart_after_stop = False
        self._restarts = 0
        self._ready_at = 0.0
        self._poll_timer = QTimer(self, interval=poll_interval_ms)
        self._poll_timer.timeout.connect(self.poll)
        self._restart_timer = QTimer(self, singleShot=True)
        self._restart_timer.timeout.connect(self._start_node)

    # ---- what the windows ask ----

    def start(self) -> None:
        self._start_node()
        self._poll_timer.start()
        self.tasks.submit(api_warm_up)  # the node's API client, imported while the node starts

    @property
    def contributing_wanted(self) -> bool:
        return should_serve(self.prefs.contribute, self.prefs.contribute_only_when_idle, self.idle_s,
                            self.prefs.idle_minutes)

    @property
    def uses_demo_model(self) -> bool:
        if self.prefs.swarm_mode == "join":
            return is_demo_model((self.swarm or {}).get("model"))
        return is_demo_model(self.prefs.model)

    def set_contribute(self, on: bool) -> None:
        if on == self.prefs.contribute:
            return
        self.prefs = self.settings.update(contribute=on)
        self.preferences_changed.emit(self.prefs)
        log.info("contribute compute: %s", "on" if on else "off")
        self._reconcile_role()
        self._publish()

    def apply_preferences(self, prefs: Preferences) -> None:
        old, self.prefs = self.prefs, prefs
        self.settings.save(prefs)
        self.preferences_changed.emit(prefs)
        if prefs.start_at_login != old.start_at_login:
            self.tasks.submit(lambda: set_start_at_login(prefs.start_at_login),
                              on_error=lambda exc: self.notice.emit(f"Could not change starting at login: {exc}"))
        if prefs.node_fields() != old.node_fields():
            log.info("swarm settings changed: restarting the node")
            self.restart_node()
        else:
            self._reconcile_role()
            self._publish()

    def restart_node(self) -> None:
        self._restart_timer.stop()
        if self.node.running():
            self._restart_after_stop = True
            self._set_api(None)
            self.node.stop()
            self._publish()
        else:
            self._start_node()

    def shutdown(self) -> None:
        """Stop polling and stop the node (it leaves the swarm); `finished` follows."""
        if self.shutting_down:
            return
        self.shutting_down = True
        log.info("shutting down")
        self._poll_timer.stop()
        self._restart_timer.stop()
        self._set_api(None)
        self.node.stop()

    def poll(self) -> None:
        if self.api is None or self._polling or self.shutting_down:
            return
        self._polling = True
        api, idle_wanted = self.api, self.prefs.contribute_only_when_idle
        self.tasks.submit(lambda: _fetch(api, idle_wanted), on_done=self._polled, on_error=self._poll_failed)

    # ---- the node process ----

    def _config(self) -> NodeConfig:
        return NodeConfig.from_preferences(self.prefs, self.data_dir, client_only=not self.contributing_wanted,
                                           extra_args=self.node_extra_args)

    def _start_node(self) -> None:
        if self.shutting_down or self.node.running():
            return
        self.problem, self.health, self.swarm, self.swarm_error = "", None, None, ""
        self.node.start(self._config())
        self._publish()

    def _on_ready(self, info: dict) -> None:
        self.ready_info = info
        try:
            self._set_api(NodeApi.from_ready(info))
        except OSError as exc:
            self._on_failed(f"Potluck could not read its node's API token ({exc}). Quit Potluck and start it again.")
            return
        self._ready_at = time.monotonic()
        self.problem = ""
        self.node_ready.emit(info)
        self._publish()
        self.poll()

    def _on_failed(self, message: str) -> None:
        log.error("node failed to start: %s", message)
        self._set_api(None)
        self.problem = message
        self._publish()
        if self.prefs.swarm_mode == "join" and not self.shutting_down and "not complete" not in message:
            self._restart_timer.start(JOIN_RETRY_S * 1000)

    def _on_exited(self, message: str) -> None:
        log.error("%s", message)
        self._set_api(None)
        if time.monotonic() - self._ready_at > STABLE_AFTER_S:
            self._restarts = 0
        delay = RESTART_DELAYS_S[min(self._restarts, len(RESTART_DELAYS_S) - 1)]
        self._restarts += 1
        self.problem = f"{message} Potluck restarts it in {delay} s."
        self._publish()
        if not self.shutting_down:
            self._restart_timer.start(delay * 1000)

    def _on_stopped(self) -> None:
        if self.shutting_down:
            log.info("node stopped; the app can exit")
            self.finished.emit()
        elif self._restart_after_stop:
            self._restart_after_stop = False
            self._start_node()
        else:
            self._publish()

    def _set_api(self, api: NodeApi | None) -> None:
        old, self.api = self.api, api
        if api is None:
            self.health = None
        if old is not None and old is not api:
            self.tasks.submit(old.close)

    # ---- polling and the role ----

    def _polled(self, result: dict) -> None:
        self._polling = False
        if result["api"] is not self.api:
            return  # the node was restarted meanwhile
        self.health, self.swarm, self.swarm_error = result["health"], result["swarm"], result["swarm_error"]
        self.idle_s = result["idle_s"]
        self._reconcile_role()
        self._publish()
        self.swarm_changed.emit(self.swarm)

    def _poll_failed(self, exc: Exception) -> None:
        self._polling = False
        if not isinstance(exc, (NodeUnavailable, StreamBroken)):
            log.warning("status poll failed: %s", exc)

    def _reconcile_role(self) -> None:
        if self.api is None or self.health is None or self._role_busy:
            return
        wanted = self.contributing_wanted
        if bool(self.health.get("serves")) == wanted:
            return
        self._role_busy = True
        api = self.api
        log.info("asking the node to %s", "serve layers" if wanted else "stop serving layers")
        self.tasks.submit(lambda: api.set_serving(wanted), on_done=self._role_done, on_error=self._role_failed)

    def _role_done(self, health: dict) -> None:
        self._role_busy = False
        if self.api is not None:
            self.health = health
            self._reconcile_role()  # the wish may have changed meanwhile
        self._publish()
        self.poll()

    def _role_failed(self, exc: Exception) -> None:
        self._role_busy = False
        message = exc.message if isinstance(exc, ApiFailure) else str(exc)
        log.warning("role change failed: %s", message)
        if self.api is not None:
            self.notice.emit(f"Could not change this computer's role in the swarm: {message}. Potluck tries again.")
            QTimer.singleShot(5000, self._reconcile_role)

    def _publish(self) -> None:
        problem = self.problem
        if not problem and self.swarm_error and self.health is not None:
            problem = (f"This computer cannot reach the swarm's host: {self.swarm_error.rstrip('.')}. Check that "
                       "the host is running and its address in Settings.")
        waiting = self.prefs.contribute and not self.contributing_wanted
        phase = "stopping" if self._restart_after_stop else self.node.state
        status = summarize(phase, self.health if self.api else None, self.swarm, problem, self.prefs.contribute,
                           waiting, demo=self.uses_demo_model)
        if status != self.status:
            self.status = status
            self.status_changed.emit(status)


def _fetch(api: NodeApi, idle_wanted: bool) -> dict:
    """On a worker thread: what the node says about itself and the swarm."""
    health = api.health()
    swarm, swarm_error = None, ""
    try:
        swarm = api.swarm()
    except ApiFailure as exc:
        swarm_error = exc.message
    return {"api": api, "health": health, "swarm": swarm, "swarm_error": swarm_error,
            "idle_s": idle_seconds() if idle_wanted else None}
