"""The chat's logic: one conversation, one turn at a time, streamed from a chat backend.

A turn's stream runs on its own worker thread; its pieces come back to the UI thread through
queued signals. Stop marks the turn stopped at once and cancels the stream in the background; any
late piece of a stopped turn is dropped. The window only displays `changed` and sends requests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from PySide6.QtCore import QObject, QTimer, Signal

from app.chat_backend import ChatBackend, ChatError, ChatOptions, TurnStats
from app.conversation import DONE, FAILED, STOPPED, Conversation, describe_stats

log = logging.getLogger(__name__)

RENDER_INTERVAL_MS = 50  # re-render a streaming answer at most this often


class _Relay(QObject):
    piece = Signal(int, str)
    finished = Signal(int, object)
    failed = Signal(int, str)


class ChatSession(QObject):
    changed = Signal()  # the conversation changed: re-render it
    busy_changed = Signal(bool)  # a turn started or ended
    turn_finished = Signal(str)  # "done", "stopped" or "failed"
    answer_started = Signal()  # the first words of the current answer arrived

    def __init__(self, backend: ChatBackend | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self.backend = backend
        self.conversation = Conversation()
        self.own_peer_id = ""  # routes show this peer as "this computer"
        # what a failed turn offers (links under the problem, e.g. solo mode): the app decides
        self.failure_offers: Callable[[], list[tuple[str, str]]] = lambda: []
        self._turn_id = 0
        self._stream = None
        self._relay = _Relay(self)
        self._relay.piece.connect(self._on_piece)
        self._relay.finished.connect(self._on_finished)
        self._relay.failed.connect(self._on_failed)
        self._render = QTimer(self, singleShot=True, interval=RENDER_INTERVAL_MS)
        self._render.timeout.connect(self.changed)

    @property
    def busy(self) -> bool:
        return self.conversation.current is not None

    def set_backend(self, backend: ChatBackend | None) -> None:
        """Later turns go to this backend; a turn already streaming finishes where it started."""
        self.backend = backend

    def last_failed_question(self) -> str | None:
        """The question of the last turn if it failed (to ask it again elsewhere)."""
        turns = self.conversation.turns
        return turns[-1].question if turns and turns[-1].state == FAILED else None

    def send(self, text: str, options: ChatOptions) -> bool:
        text = text.strip()
        if not text or self.busy:
            return False
        turn = self.conversation.ask(text)
        self._turn_id += 1
        turn_id = self._turn_id
        if self.backend is None:
            self._fail(turn, "Nothing can answer yet: Potluck is still starting.", "Wait a few seconds and send "
                                                                                  "your message again.")
            return True
        try:
            stream = self.backend.stream(self.conversation.messages(), options)
        except ChatError as exc:
            self._fail(turn, exc.what, exc.todo)
            return True
        self._stream = stream
        threading.Thread(target=self._run, args=(stream, turn_id), name=f"chat-turn-{turn_id}", daemon=True).start()
        self.busy_changed.emit(True)
        self.changed.emit()
        return True

    def stop(self) -> None:
        turn = self.conversation.current
        if turn is None:
            return
        turn.state = STOPPED
        stream, self._stream = self._stream, None
        self._turn_id += 1  # whatever the old stream still sends is dropped
        if stream is not None:
            threading.Thread(target=stream.cancel, name="chat-cancel", daemon=True).start()
        self._end(STOPPED)

    def new_chat(self) -> None:
        self.stop()
        self.conversation = Conversation()
        self.changed.emit()

    # ---- on the worker thread ----

    def _run(self, stream, turn_id: int) -> None:
        try:
            for event in stream:
                if isinstance(event, TurnStats):
                    self._relay.finished.emit(turn_id, event)
                    return
                self._relay.piece.emit(turn_id, event)
            self._relay.finished.emit(turn_id, TurnStats())
        except ChatError as exc:
            self._relay.failed.emit(turn_id, str(exc))
        except Exception as exc:  # a bug must not take the window down: show it and log it
            log.exception("chat turn failed")
            self._relay.failed.emit(turn_id, f"Something went wrong inside Potluck: {exc}. Send your message "
                                             "again; if it keeps happening, the log in the data folder says more.")

    # ---- back on the UI thread ----

    def _on_piece(self, turn_id: int, text: str) -> None:
        turn = self.conversation.current
        if turn_id != self._turn_id or turn is None:
            return
        first = not turn.answer
        turn.answer += text
        if first:
            self.answer_started.emit()
        if not self._render.isActive():
            self._render.start()

    def _on_finished(self, turn_id: int, stats: TurnStats) -> None:
        turn = self.conversation.current
        if turn_id != self._turn_id or turn is None:
            return
        turn.stats = stats
        turn.footer = describe_stats(stats, self.own_peer_id)
        turn.state = DONE
        self._stream = None
        self._end(DONE)

    def _on_failed(self, turn_id: int, message: str) -> None:
        turn = self.conversation.current
        if turn_id != self._turn_id or turn is None:
            return
        self._stream = None
        self._fail(turn, message, "")

    def _fail(self, turn, what: str, todo: str) -> None:
        turn.state, turn.error = FAILED, f"{what} {todo}".strip()
        try:
            turn.offers = list(self.failure_offers())
        except Exception:  # an offer is a nicety: never let it hide the problem
            log.exception("could not compute what to offer")
        self._end(FAILED)

    def _end(self, how: str) -> None:
        self._render.stop()
        self.busy_changed.emit(False)
        self.changed.emit()
        self.turn_finished.emit(how)
