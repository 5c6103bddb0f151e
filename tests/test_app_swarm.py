"""The desktop app against real `potluck node` processes (offscreen, pytest-qt).

TestAlone: a first run (nothing configured) hosts a swarm alone with the "demo model" (here the
test checkpoint), without a tray: the main window shows; chat streams with its route; Stop cancels
mid-answer; a killed node shows an inline error and the app restarts it; closing the window quits
and stops the node. TestJoined: the app joins a swarm hosted by another node process, and the
Contribute toggle switches its role there (and its tray state) while chat keeps working.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from PySide6.QtCore import Qt
from pytestqt.qtbot import QtBot

from app.conversation import DONE, FAILED, STOPPED
from app.main import PotluckApp
from app.settings import Settings
from tests.swarm_processes import NodeProcess

pytestmark = [pytest.mark.network]

WAIT_MS = 180_000  # a shared 2-core machine: generous, never a gate on speed
FAST = ("--heartbeat", "0.3")


def ready_node(snapshot: dict, peer_id: str) -> dict | None:
    return next((n for n in snapshot["nodes"] if n["peer_id"] == peer_id), None)


def send(qtbot, app: PotluckApp, text: str, max_tokens: int) -> None:
    window = app.chat_window
    window.max_tokens.setValue(max_tokens)
    window.temperature.setValue(0.0)
    qtbot.keyClicks(window.input, text)
    qtbot.keyClick(window.input, Qt.Key.Key_Return)
    assert app.session.busy


def last_turn(app: PotluckApp):
    return app.session.conversation.turns[-1]


def wait_for_first_words(qtbot, app: PotluckApp) -> None:
    qtbot.waitUntil(lambda: last_turn(app).answer != "" or last_turn(app).state != "streaming", timeout=WAIT_MS)
    assert last_turn(app).answer, last_turn(app).error


def wait_serving_alone(qtbot, app: PotluckApp) -> None:
    qtbot.waitUntil(lambda: app.controller.status.serving == (0, 8), timeout=WAIT_MS)


def quit_app(bot: QtBot, app: PotluckApp) -> None:
    if not app.done:
        app.quit()
        bot.waitUntil(lambda: app.done, timeout=WAIT_MS)
    app.controller.node.stop_now()
    for window in (app.chat_window, app.status_window, app.main_window, app.settings_dialog):
        if window is not None:
            window.close()
            window.deleteLater()


class TestAlone:
    @pytest.fixture(scope="class")
    def alone(self, request, qapp, make_checkpoint, tmp_path_factory):
        checkpoint = Path(make_checkpoint("llama"))
        patch = pytest.MonkeyPatch()
        patch.setattr("app.settings.default_model", lambda: checkpoint)  # the demo model is being trained elsewhere
        home = tmp_path_factory.mktemp("app-alone")
        app = PotluckApp(home, tray_available=False, node_extra_args=FAST)
        app.start()
        yield app
        quit_app(QtBot(request), app)
        patch.undo()

    def test_first_run_hosts_the_demo_model_alone_and_shows_the_main_window(self, qtbot, alone):
        app = alone
        assert app.controller.first_run and app.tray is None and app.main_window.isVisible()
        wait_serving_alone(qtbot, app)
        assert app.controller.status.state == "contributing"
        assert app.main_window.headline.text().startswith("Serving layers 0-7 of the demo model")
        assert Settings(app.controller.data_dir).configured()
        app.open_chat()
        assert app.chat_window.isVisible() and app.chat_window.demo_note.isVisible()
        assert "not an assistant" in app.chat_window.demo_note.text()
        app.open_status()
        qtbot.waitUntil(lambda: app.status_window.picture.picture.covered, timeout=WAIT_MS)
        assert app.status_window.shard.text().startswith("layers 0-7 of 8")
        assert app.status_window.address.text() == app.controller.ready_info["multiaddr"]

    def test_a_chat_message_streams_into_the_window_with_its_route(self, qtbot, alone):
        app = alone
        wait_serving_alone(qtbot, app)
        seen = []  # (streaming?, characters) at every render
        app.session.changed.connect(lambda: seen.append((app.session.busy, len(last_turn(app).answer))))
        send(qtbot, app, "Tell me a story", 200)
        qtbot.waitUntil(lambda: not app.session.busy, timeout=WAIT_MS)
        turn = last_turn(app)
        assert turn.state == DONE and turn.answer, turn.error
        assert any(busy and chars for busy, chars in seen), "the answer was not shown while it streamed"
        text = app.chat_window.transcript.toPlainText()
        assert "Route: this computer (layers 0-7)" in text and "first token" in text and "tokens/s" in text
        assert turn.stats.completion_tokens > 1

    def test_stop_cancels_mid_answer(self, qtbot, alone):
        app = alone
        wait_serving_alone(qtbot, app)
        send(qtbot, app, "Tell me a longer story", 400)
        wait_for_first_words(qtbot, app)
        qtbot.mouseClick(app.chat_window.stop_button, Qt.MouseButton.LeftButton)
        turn = last_turn(app)
        assert turn.state == STOPPED and not app.session.busy and app.chat_window.send_button.isEnabled()
        assert "Stopped." in app.chat_window.transcript.toPlainText()
        # the node saw the client go away: the request ended early and freed its caches
        api = app.controller.api

        def ended_early():
            recent = api.swarm()["recent_requests"]
            return len(recent) >= 2 and recent[-1]["completion_tokens"] < 400

        qtbot.waitUntil(ended_early, timeout=WAIT_MS)

    def test_a_killed_node_shows_an_inline_error_and_the_app_recovers(self, qtbot, alone):
        app = alone
        wait_serving_alone(qtbot, app)
        states = []
        app.controller.status_changed.connect(lambda status: states.append(status.state))
        old_pid = app.controller.node.pid
        send(qtbot, app, "Tell me a story", 400)
        wait_for_first_words(qtbot, app)
        os.kill(old_pid, signal.SIGKILL)
        qtbot.waitUntil(lambda: last_turn(app).state == FAILED, timeout=WAIT_MS)
        assert "Problem:" in app.chat_window.transcript.toPlainText()
        assert "send your message again" in last_turn(app).error
        qtbot.waitUntil(lambda: "error" in states, timeout=WAIT_MS)
        # Potluck restarts its node by itself; chat works again
        qtbot.waitUntil(lambda: app.controller.status.serving == (0, 8), timeout=WAIT_MS)
        assert app.controller.node.pid != old_pid
        send(qtbot, app, "Hello again", 16)
        qtbot.waitUntil(lambda: not app.session.busy, timeout=WAIT_MS)
        assert last_turn(app).state == DONE, last_turn(app).error
        assert "Route: this computer" in app.chat_window.transcript.toPlainText()

    def test_closing_the_main_window_quits_and_stops_the_node(self, qtbot, alone):
        app = alone
        pid = app.controller.node.pid
        assert pid and psutil.pid_exists(pid)
        with qtbot.waitSignal(app.quit_finished, timeout=WAIT_MS):
            app.main_window.close()
        assert not app.controller.node.running()
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


class TestJoined:
    @pytest.fixture(scope="class")
    def joined(self, request, qapp, make_checkpoint, tmp_path_factory):
        root = tmp_path_factory.mktemp("app-joined")
        # the host believes it was started by this stand-in app: when it goes, the host must go too
        stand_in = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        host = NodeProcess(root / "host", "--host", "--model", str(make_checkpoint("llama")),
                           env={"POTLUCK_PARENT_PID": str(stand_in.pid)})
        host.stand_in = stand_in
        try:
            settings = Settings(root / "app")
            settings.save(settings.load().with_(swarm_mode="join", join_address=host.multiaddr, api="127.0.0.1:0"))
            app = PotluckApp(root / "app", tray_available=True, node_extra_args=FAST)  # the tray object, offscreen
            app.start()
            yield host, app
            quit_app(QtBot(request), app)
        finally:
            host.stop()
            stand_in.kill()
            stand_in.wait()

    def test_contribute_toggle_switches_the_role_and_the_tray_while_chat_keeps_working(self, qtbot, joined):
        host, app = joined
        assert app.tray is not None and app.main_window is None and app.tray.contribute.isChecked()
        qtbot.waitUntil(lambda: app.controller.ready_info is not None, timeout=WAIT_MS)
        me = app.controller.ready_info["peer_id"]

        def serving(snapshot):
            node = ready_node(snapshot, me)
            return node is not None and node["serves"] and node["assigned"] and node["ready"] == node["assigned"]

        qtbot.waitUntil(lambda: serving(host.swarm()) and "Serving layers" in app.tray.icon.toolTip(),
                        timeout=WAIT_MS)
        assert app.tray.state in ("contributing", "busy")
        contributing_icon = app.tray.icon.icon().pixmap(32).toImage()

        app.tray.contribute.trigger()  # off: the node stays in the swarm as a client
        qtbot.waitUntil(lambda: (lambda n: n is not None and not n["serves"] and n["assigned"] is None)(
            ready_node(host.swarm(), me)), timeout=WAIT_MS)
        qtbot.waitUntil(lambda: app.tray.state == "idle", timeout=WAIT_MS)
        assert "Not contributing" in app.tray.icon.toolTip()
        assert app.tray.icon.icon().pixmap(32).toImage() != contributing_icon
        assert not Settings(app.controller.data_dir).load().contribute

        send(qtbot, app, "Are you still there?", 16)
        qtbot.waitUntil(lambda: not app.session.busy, timeout=WAIT_MS)
        turn = last_turn(app)
        assert turn.state == DONE, turn.error
        assert turn.stats.routes and all(hop.peer_id != me for hop in turn.stats.routes[-1])

        app.tray.contribute.trigger()  # on again
        qtbot.waitUntil(lambda: serving(host.swarm()) and "Serving layers" in app.tray.icon.toolTip(),
                        timeout=WAIT_MS)
        assert app.tray.state in ("contributing", "busy")
        assert Settings(app.controller.data_dir).load().contribute

    def test_role_endpoint_refuses_a_bad_request_and_health_counts_what_was_served(self, joined):
        host, app = joined
        bad = host.http.post("/role", json={"serves": "yes"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "serves"
        assert host.http.post("/role", json={"serves": True}, headers={"Authorization": ""}).status_code == 401
        health = host.http.get("/health").json()
        assert health["serves"] is True and health["num_layers"] == 8
        assert health["served_requests"] >= 1 and health["served_tokens"] > 0  # the chat above ran through it

    def test_a_node_does_not_outlive_the_app_that_started_it(self, qtbot, joined):
        host, _ = joined
        assert host.proc.poll() is None
        host.stand_in.stdin.close()  # the stand-in app exits (as a crashed app would)
        host.stand_in.wait()
        qtbot.waitUntil(lambda: host.proc.poll() is not None, timeout=WAIT_MS)


def test_the_program_quits_on_sigterm_and_leaves_no_node_behind(qtbot, make_checkpoint, tmp_path):
    """`potluck app --no-tray` as a user starts it; SIGTERM (logout, Ctrl+C) stops its node too."""
    home = tmp_path / "home"
    settings = Settings(home)
    settings.save(settings.load().with_(host_model=str(make_checkpoint("llama")), api="127.0.0.1:0"))
    app = subprocess.Popen([sys.executable, "-m", "app.cli", "app", "--no-tray", "--data-dir", str(home)],
                           cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    log = home / "logs" / "app.log"
    try:
        qtbot.waitUntil(lambda: log.exists() and "node ready" in log.read_text(), timeout=WAIT_MS)
        (node,) = psutil.Process(app.pid).children()
        assert "node" in node.cmdline() and str(home) in node.cmdline()
        app.send_signal(signal.SIGTERM)
        assert app.wait(timeout=60) == 0
        qtbot.waitUntil(lambda: not node.is_running() or node.status() == psutil.STATUS_ZOMBIE, timeout=WAIT_MS)
        assert "Potluck quit" in log.read_text()
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
