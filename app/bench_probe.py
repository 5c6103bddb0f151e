"""Startup milestones for bench/app_startup.py: off unless $POTLUCK_BENCH=1.

When on, the app prints one line per milestone to stdout, a word and a JSON object, with `t` the
wall-clock time (time.time()) so that the benchmark, which noted the time just before it launched
the app, can subtract without counting pipe latency:

    APP_READY {"t": ..., "tray": true}   the tray icon is on screen (placed in the tray: it has a
                                         size), or, without a tray, the main window was painted
    FIRST_TOKEN {"t": ..., "node_ready_t": ..., "model_ready_t": ...}
                                         the first words of an answer arrived in the chat
    TURN_END {"t": ..., "state": "done", "error": null, "answer_chars": ...}

With $POTLUCK_BENCH_PROMPT=TEXT the app also asks TEXT in the chat as soon as the swarm holds every
layer of the model (greedy, $POTLUCK_BENCH_MAX_TOKENS tokens, default 16), then quits when the
answer ends. Without it the app runs on as usual (the benchmark stops it with SIGTERM).
"""

from __future__ import annotations

import json
import os
import sys
import time

from PySide6.QtCore import QEvent, QObject, QTimer

from app.chat_backend import ChatOptions
from app.status_model import swarm_picture

ENV = "POTLUCK_BENCH"
CHECK_MS = 5  # how often the tray icon's placement is looked at
POLL_MS = 100  # how often the node is asked whether the model is ready, while waiting to ask


def enabled() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def say(word: str, **fields) -> None:
    print(f"{word} {json.dumps({'t': time.time(), **fields})}", file=sys.stdout, flush=True)


class BenchProbe(QObject):
    def __init__(self, potluck, prompt: str | None = None, max_tokens: int | None = None):
        super().__init__(potluck)
        self.potluck = potluck
        self.prompt = prompt if prompt is not None else os.environ.get(f"{ENV}_PROMPT") or None
        self.max_tokens = max_tokens or int(os.environ.get(f"{ENV}_MAX_TOKENS") or 16)
        self.shown = self.asked = False
        self.node_ready_t = self.model_ready_t = None
        self._check = QTimer(self, interval=CHECK_MS)
        self._check.timeout.connect(self._check_tray)
        self._poll = QTimer(self, interval=POLL_MS)
        self._poll.timeout.connect(potluck.controller.poll)
        if potluck.tray is not None:
            self._check.start()
        else:
            potluck.main_window.installEventFilter(self)
        if self.prompt:
            potluck.controller.node_ready.connect(self._node_ready)
            potluck.controller.swarm_changed.connect(self._swarm_changed)
            potluck.session.answer_started.connect(self._first_token)
            potluck.session.turn_finished.connect(self._turn_end)

    def eventFilter(self, watched, event) -> bool:
        if event.type() == QEvent.Type.Paint and not self.shown:
            self._shown()
        return False

    def _check_tray(self) -> None:
        icon = self.potluck.tray.icon
        if icon.isVisible() and icon.geometry().width() > 0:
            self._check.stop()
            self._shown()

    def _shown(self) -> None:
        self.shown = True
        say("APP_READY", tray=self.potluck.tray is not None)

    def _node_ready(self, _info) -> None:
        self.node_ready_t = time.time()
        self._poll.start()

    def _swarm_changed(self, swarm) -> None:
        if self.asked or not swarm or not swarm_picture(swarm).covered:  # every layer loaded somewhere
            return
        self.asked = True
        self._poll.stop()
        self.model_ready_t = time.time()
        self.potluck.session.send(self.prompt, ChatOptions(temperature=0.0, max_tokens=self.max_tokens))

    def _first_token(self) -> None:
        say("FIRST_TOKEN", node_ready_t=self.node_ready_t, model_ready_t=self.model_ready_t)

    def _turn_end(self, state: str) -> None:
        turn = self.potluck.session.conversation.turns[-1]
        say("TURN_END", state=state, error=turn.error, answer_chars=len(turn.answer))
        self.potluck.quit()
