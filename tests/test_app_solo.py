"""Solo mode in the desktop app (offscreen, pytest-qt): the chat answers from a GGUF model file on
this computer through llama.cpp, no node involved. The GGUF is a tiny genuine llama model made here
(engine.model.random_gguf.make_gguf). The demo model is pointed at a missing folder, so the app's
node can never start: whatever answers, answers without it."""

import importlib.util
import struct
import threading
from pathlib import Path

import pytest
from PySide6.QtCore import Qt, QUrl

import app.solo_backend as solo_backend
from app.chat_backend import ChatOptions, TurnStats
from app.conversation import DONE, FAILED, STOPPED
from app.settings import Preferences, Settings
from app.settings_dialog import SettingsDialog
from app.solo_backend import SoloChatBackend, failure_offers, solo_model_problem

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("gguf") is None,
    reason='solo mode needs llama-cpp-python (pip install "potluck[solo]"); making a GGUF needs gguf (dev extra)')

WAIT_MS = 120_000  # a shared 2-core machine: generous, never a gate on speed


@pytest.fixture(scope="module")
def gguf(tmp_path_factory) -> Path:
    from engine.model.random_gguf import make_gguf

    return make_gguf(tmp_path_factory.mktemp("solo") / "tiny-llama.gguf", seed=0)


@pytest.fixture
def no_demo_model(tmp_path, monkeypatch):
    """The app's node cannot start (no demo model): chat must not need it."""
    monkeypatch.setattr("app.settings.default_model", lambda: tmp_path / "no-demo-model")


def make_app(qtbot, home: Path, **prefs):
    from app.main import PotluckApp

    if prefs:
        settings = Settings(home)
        settings.save(settings.load().with_(**prefs))
    potluck = PotluckApp(home, tray_available=False)
    qtbot.addWidget(potluck.main_window)
    qtbot.addWidget(potluck.chat_window)
    potluck.start()
    return potluck


def close_app(qtbot, potluck) -> None:
    if not potluck.done:
        with qtbot.waitSignal(potluck.quit_finished, timeout=WAIT_MS):
            potluck.quit()
    potluck.controller.tasks.wait(WAIT_MS)  # the solo model is freed on a worker thread
    if potluck.settings_dialog is not None:
        potluck.settings_dialog.close()


def send(qtbot, potluck, text: str, max_tokens: int = 24) -> None:
    window = potluck.chat_window
    window.max_tokens.setValue(max_tokens)
    window.temperature.setValue(0.0)
    qtbot.keyClicks(window.input, text)
    qtbot.keyClick(window.input, Qt.Key.Key_Return)


def last_turn(potluck):
    return potluck.session.conversation.turns[-1]


class GatedLlama:
    """The real llama.cpp model, except that after `free` tokens of an answer the next one waits
    until the test opens the gate: so Stop lands mid-answer on any machine, however fast."""

    def __init__(self, llm, free: int = 2):
        self._llm, self.free, self.gate = llm, free, threading.Event()
        self.reached = threading.Event()  # the answer is held at the gate
        self.closed = threading.Event()  # the held answer's tokens were closed
        self.at_gate = self.at_close = None  # llama.cpp's token count then

    def __getattr__(self, name):
        return getattr(self._llm, name)

    def generate(self, *args, **kwargs):
        tokens = self._llm.generate(*args, **kwargs)
        gated = not self.reached.is_set()

        def held():
            try:
                for i, token in enumerate(tokens):
                    if gated and i == self.free:
                        self.at_gate = self._llm.n_tokens
                        self.reached.set()
                        self.gate.wait(WAIT_MS / 1000)
                    yield token
            finally:
                tokens.close()
                if gated:
                    self.at_close = self._llm.n_tokens
                    self.closed.set()

        return held()


@pytest.fixture
def gated(monkeypatch):
    """Solo models load as GatedLlama: the list of those loaded."""
    loaded = []
    real_load = solo_backend._load

    def load(path, n_ctx):
        loaded.append(GatedLlama(real_load(path, n_ctx)))
        return loaded[-1]

    monkeypatch.setattr(solo_backend, "_load", load)
    yield loaded
    for llm in loaded:
        llm.gate.set()


# ---- the backend itself ----

def test_solo_backend_streams_pieces_then_stats_without_a_route(gguf):
    backend = SoloChatBackend(gguf, n_ctx=512)
    assert backend.name == "solo: tiny-llama.gguf" and not backend.loaded  # nothing loaded on construction
    events = list(backend.stream([{"role": "user", "content": "Tell me a story"}],
                                 ChatOptions(system_prompt="Be brief.", temperature=0.0, max_tokens=16)))
    *pieces, stats = events
    assert len(pieces) >= 3 and all(isinstance(p, str) and p for p in pieces)
    assert isinstance(stats, TurnStats) and stats.routes == []
    assert stats.ttft_s is not None and stats.ttft_s >= 0 and stats.tokens_per_s and stats.tokens_per_s > 0
    assert stats.completion_tokens == len(pieces) and backend.loaded
    again = list(backend.stream([{"role": "user", "content": "Tell me a story"}],
                                ChatOptions(system_prompt="Be brief.", temperature=0.0, max_tokens=16)))
    assert again[:-1] == pieces  # greedy, same model: the same answer
    backend.close()
    assert not backend.loaded


def test_failure_offers_follow_the_solo_settings(gguf, tmp_path):
    assert failure_offers(Preferences()) == [
        ("settings", "Chat without the swarm: choose a model file for solo mode in Settings")]
    assert failure_offers(Preferences(solo_model=str(gguf))) == [
        ("solo", "Chat with tiny-llama.gguf on this computer instead (solo mode)")]
    assert failure_offers(Preferences(solo_model=str(tmp_path / "gone.gguf")))[0][0] == "settings"
    assert failure_offers(Preferences(solo_mode=True, solo_model=str(gguf)))[0][0] == "settings"
    assert solo_model_problem(gguf) is None and "Choose a model file" in solo_model_problem("")


# ---- in the app ----

def test_solo_mode_answers_in_the_chat_window_without_the_node(qtbot, gguf, tmp_path, no_demo_model, gated):
    potluck = make_app(qtbot, tmp_path / "home", solo_mode=True, solo_model=str(gguf))
    try:
        assert isinstance(potluck.session.backend, SoloChatBackend)
        assert "tiny-llama.gguf on this computer (solo mode" in potluck.chat_window.source.text()
        assert not potluck.chat_window.demo_note.isVisible()
        potluck.open_chat()
        send(qtbot, potluck, "Tell me a story", max_tokens=40)
        # the answer is held after a few tokens: those must already be on screen, still streaming
        qtbot.waitUntil(lambda: bool(gated) and gated[0].reached.is_set(), timeout=WAIT_MS)
        qtbot.waitUntil(lambda: "▍" in potluck.chat_window.transcript.toPlainText()
                        and last_turn(potluck).answer != "", timeout=WAIT_MS)
        assert potluck.session.busy and potluck.chat_window.stop_button.isEnabled()
        gated[0].gate.set()
        qtbot.waitUntil(lambda: not potluck.session.busy, timeout=WAIT_MS)
        turn = last_turn(potluck)
        assert turn.state == DONE and turn.answer, turn.error
        text = potluck.chat_window.transcript.toPlainText()
        assert "first token" in text and "tokens/s" in text and "Route:" not in text
        assert turn.stats.routes == [] and turn.stats.completion_tokens > 1
        assert not potluck.controller.node.running()  # no node: it could not even start
        assert potluck.controller.status.state == "error"
    finally:
        close_app(qtbot, potluck)


def test_stop_ends_a_solo_answer_and_the_model_answers_again(qtbot, gguf, tmp_path, no_demo_model, gated):
    potluck = make_app(qtbot, tmp_path / "home", solo_mode=True, solo_model=str(gguf))
    try:
        send(qtbot, potluck, "Tell me a long story", max_tokens=200)
        qtbot.waitUntil(lambda: bool(gated) and gated[0].reached.is_set(), timeout=WAIT_MS)
        qtbot.waitUntil(lambda: last_turn(potluck).answer != "", timeout=WAIT_MS)
        with qtbot.waitSignal(potluck.session.turn_finished) as finished:
            qtbot.mouseClick(potluck.chat_window.stop_button, Qt.MouseButton.LeftButton)
        assert finished.args == [STOPPED]
        stopped_answer = last_turn(potluck).answer
        assert potluck.chat_window.send_button.isEnabled()
        assert "Stopped." in potluck.chat_window.transcript.toPlainText()
        llm = gated[0]
        llm.gate.set()  # the held token arrives: the stream sees it was cancelled and stops iterating
        qtbot.waitUntil(llm.closed.is_set, timeout=WAIT_MS)
        assert llm.at_close - llm.at_gate <= 1, "llama.cpp went on decoding after Stop"
        send(qtbot, potluck, "Hello again", max_tokens=8)  # the stopped turn gave the model back
        qtbot.waitUntil(lambda: not potluck.session.busy, timeout=WAIT_MS)
        assert last_turn(potluck).state == DONE, last_turn(potluck).error
        turns = potluck.session.conversation.turns
        assert turns[0].state == STOPPED and turns[0].answer == stopped_answer  # nothing late was added
    finally:
        close_app(qtbot, potluck)


def test_a_bad_model_file_is_a_plain_inline_error(qtbot, gguf, tmp_path, no_demo_model):
    damaged = tmp_path / "damaged.gguf"
    damaged.write_bytes(b"GGUF" + struct.pack("<I", 3) + bytes(range(256)) * 8)  # a header, then nonsense
    potluck = make_app(qtbot, tmp_path / "home", solo_mode=True, solo_model=str(damaged))
    try:
        send(qtbot, potluck, "hello?")
        qtbot.waitUntil(lambda: last_turn(potluck).state == FAILED, timeout=WAIT_MS)
        error = last_turn(potluck).error
        assert "damaged.gguf" in error and "Settings → Solo mode" in error and "Traceback" not in error
        assert "Problem:" in potluck.chat_window.transcript.toPlainText()
        assert 'href="potluck:settings"' in potluck.chat_window.transcript.toHtml()

        # not a model at all: the Settings dialog refuses it, and the chat says so too
        text_file = tmp_path / "notes.gguf"
        text_file.write_text("my shopping list")
        potluck.controller.apply_preferences(potluck.controller.prefs.with_(solo_model=str(text_file)))
        send(qtbot, potluck, "hello again?")
        qtbot.waitUntil(lambda: last_turn(potluck).state == FAILED, timeout=WAIT_MS)
        assert "is not a GGUF model file" in last_turn(potluck).error
        assert potluck.session.conversation.turns[0].error == error  # the first problem stays where it was

        missing = tmp_path / "moved-away.gguf"
        potluck.controller.apply_preferences(potluck.controller.prefs.with_(solo_model=str(missing)))
        send(qtbot, potluck, "and now?")
        qtbot.waitUntil(lambda: last_turn(potluck).state == FAILED, timeout=WAIT_MS)
        assert f"No model file at {missing}" in last_turn(potluck).error
        potluck.chat_window.transcript.anchorClicked.emit(QUrl("potluck:settings"))  # the user clicks the link
        assert potluck.settings_dialog is not None and potluck.settings_dialog.isVisible()
        assert potluck.settings_dialog.solo_mode.isChecked()
        assert potluck.settings_dialog.solo_model.text() == str(missing)
    finally:
        close_app(qtbot, potluck)


def test_an_unreachable_swarm_offers_solo_mode_and_asks_again_there(qtbot, gguf, tmp_path, no_demo_model):
    potluck = make_app(qtbot, tmp_path / "home", solo_model=str(gguf))  # chosen, but solo mode is off
    try:
        qtbot.waitUntil(lambda: potluck.controller.status.state == "error", timeout=WAIT_MS)
        send(qtbot, potluck, "Tell me a story")
        turn = last_turn(potluck)
        assert turn.state == FAILED and "demo model is missing" in turn.error
        assert turn.offers == [("solo", "Chat with tiny-llama.gguf on this computer instead (solo mode)")]
        assert 'href="potluck:solo"' in potluck.chat_window.transcript.toHtml()
        assert "Chat with tiny-llama.gguf on this computer instead" in potluck.chat_window.transcript.toPlainText()

        potluck.chat_window.transcript.anchorClicked.emit(QUrl("potluck:solo"))  # the user clicks the link
        assert Settings(potluck.controller.data_dir).load().solo_mode  # remembered
        qtbot.waitUntil(lambda: not potluck.session.busy, timeout=WAIT_MS)
        turns = potluck.session.conversation.turns
        assert len(turns) == 2 and turns[1].question == "Tell me a story"
        assert turns[1].state == DONE and turns[1].answer, turns[1].error
        assert "solo mode" in potluck.chat_window.source.text()
    finally:
        close_app(qtbot, potluck)


def test_without_a_model_file_the_problem_points_to_settings(qtbot, tmp_path, no_demo_model):
    potluck = make_app(qtbot, tmp_path / "home")
    try:
        qtbot.waitUntil(lambda: potluck.controller.status.state == "error", timeout=WAIT_MS)
        send(qtbot, potluck, "hello?")
        assert last_turn(potluck).offers[0][0] == "settings"
        assert "choose a model file for solo mode in Settings" in potluck.chat_window.transcript.toPlainText()
        potluck.chat_window.transcript.anchorClicked.emit(QUrl("potluck:settings"))
        assert potluck.settings_dialog.isVisible()
    finally:
        close_app(qtbot, potluck)


def test_solo_settings_persist_across_a_restart_of_the_app(qtbot, gguf, tmp_path, no_demo_model, monkeypatch):
    home = tmp_path / "home"
    potluck = make_app(qtbot, home)
    try:
        assert potluck.session.backend is potluck.swarm_backend
        potluck.open_settings()
        dialog = potluck.settings_dialog
        chosen = []
        monkeypatch.setattr("app.settings_dialog.QFileDialog.getOpenFileName",
                            lambda *args, **kwargs: chosen.append(args) or (str(gguf), "GGUF model files (*.gguf)"))
        dialog._browse_solo()  # what "Choose file…" runs
        assert chosen and dialog.solo_model.text() == str(gguf) and dialog.solo_mode.isChecked()
        dialog._save()
        assert isinstance(potluck.session.backend, SoloChatBackend) and potluck.solo_backend.path == gguf
        assert "solo mode" in potluck.chat_window.source.text()
    finally:
        close_app(qtbot, potluck)

    saved = Settings(home).load()
    assert saved.solo_mode and saved.solo_model == str(gguf)
    again = make_app(qtbot, home)  # the app restarted
    try:
        assert isinstance(again.session.backend, SoloChatBackend) and again.solo_backend.path == gguf
        again.open_settings()
        assert again.settings_dialog.solo_mode.isChecked() and again.settings_dialog.solo_model.text() == str(gguf)
        again.settings_dialog.solo_mode.setChecked(False)  # back to the swarm
        again.settings_dialog._save()
        assert again.session.backend is again.swarm_backend and again.solo_backend is None
        assert not Settings(home).load().solo_mode and Settings(home).load().solo_model == str(gguf)
    finally:
        close_app(qtbot, again)


def test_settings_dialog_refuses_a_file_that_is_not_a_model(qtbot, tmp_path):
    not_a_model = tmp_path / "photo.gguf"
    not_a_model.write_bytes(b"\x89PNG\r\n\x1a\n")
    dialog = SettingsDialog(Preferences())
    qtbot.addWidget(dialog)
    dialog.solo_mode.setChecked(True)
    emitted = []
    dialog.applied.connect(emitted.append)
    dialog._save()
    assert not emitted and "Choose a model file (.gguf) for solo mode" in dialog.error.text()
    dialog.solo_model.setText(str(not_a_model))
    dialog._save()
    assert not emitted and "is not a GGUF model file" in dialog.error.text()
    dialog.solo_mode.setChecked(False)  # a bad path is kept but harmless while solo mode is off
    dialog._save()
    assert emitted and not emitted[0].solo_mode and emitted[0].solo_model == str(not_a_model)
