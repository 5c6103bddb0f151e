"""Run blocking work (HTTP calls, file writes) off the UI thread; get the result back on it.

`Tasks.submit(fn, on_done, on_error)` runs `fn()` on a QThreadPool; the callbacks run on the
thread that owns the Tasks object (the UI thread), through queued signals.
"""

from __future__ import annotations

import logging
import traceback

from PySide6.QtCore import QObject, QThreadPool, Signal

log = logging.getLogger(__name__)


class _Relay(QObject):
    done = Signal(object)
    failed = Signal(object)


class Tasks(QObject):
    def __init__(self, max_threads: int = 4, parent: QObject | None = None):
        super().__init__(parent)
        self.pool = QThreadPool(self)
        self.pool.setMaxThreadCount(max_threads)
        self._relays: set[_Relay] = set()

    def submit(self, fn, on_done=None, on_error=None) -> None:
        relay = _Relay(self)  # lives on this object's thread: its signals are delivered there
        self._relays.add(relay)

        def finish(callback, value):
            self._relays.discard(relay)
            relay.deleteLater()
            if callback is not None:
                callback(value)

        relay.done.connect(lambda value: finish(on_done, value))
        relay.failed.connect(lambda exc: finish(on_error if on_error else _log_error, exc))

        def run():
            try:
                value = fn()
            except Exception as exc:  # handed to on_error on the UI thread
                exc.__traceback_text__ = traceback.format_exc()
                relay.failed.emit(exc)
                return
            relay.done.emit(value)

        # A plain callable, not QRunnable.create(run): the pool deletes an auto-delete QRunnable in
        # C++ behind PySide's back, and its stale wrapper was later handed out for a new object at
        # the same address (a QLocalSocket came back as a "QRunnable").
        self.pool.start(run)

    @property
    def pending(self) -> int:
        return len(self._relays)

    def wait(self, msecs: int = 5000) -> bool:
        return self.pool.waitForDone(msecs)


def _log_error(exc: Exception) -> None:
    log.error("background task failed: %s\n%s", exc, getattr(exc, "__traceback_text__", ""))
