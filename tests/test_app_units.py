"""The desktop app's parts that need no node: settings, autostart, node command lines, status
words, icons, the conversation, the chat session over a stand-in backend, single instance."""

import configparser
import plistlib
import subprocess
import sys
import threading
from pathlib import Path

from PySide6.QtCore import Qt

from app.autostart import linux_autostart_path, set_start_at_login, start_at_login_enabled
from app.chat_backend import ChatBackend, ChatError, ChatOptions, Hop, TurnStats
from app.chat_session import ChatSession
from app.chat_window import ChatWindow
from app.conversation import DONE, FAILED, STOPPED, Conversation, describe_route
from app.icons import state_pixmap
from app.node_process import NodeConfig, explain_start_failure
from app.settings import Preferences, Settings, default_model
from app.settings_dialog import SettingsDialog
from app.single_instance import SingleInstance
from app.status_model import STATES, summarize, swarm_picture

ROOT = Path(__file__).resolve().parents[1]


def test_the_app_never_imports_torch_or_mlx():
    """Nor llama_cpp until solo mode actually loads a model, nor Qt for the self-test."""
    code = ("import sys\n"
            "import app.cli, app.self_test\n"
            "assert not [m for m in sys.modules if m.startswith('PySide6')], 'the self-test path imports Qt'\n"
            "import app.main, app.controller, app.chat_window, app.status_window, app.settings_dialog\n"
            "import app.solo_backend, app.bench_probe\n"
            "from app.main import PotluckApp\n"
            "from app.settings import Preferences\n"
            "app.solo_backend.failure_offers(Preferences(solo_model='/nowhere/model.gguf'))\n"
            "app.solo_backend.SoloChatBackend('/nowhere/model.gguf')\n"
            "bad = sorted(m for m in sys.modules\n"
            "             if m.split('.')[0] in ('torch', 'mlx', 'mlx_lm', 'transformers', 'llama_cpp'))\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# ---- settings ----

def test_settings_survive_a_restart_of_the_app(tmp_path):
    first = Settings(tmp_path)
    assert not first.configured() and first.load() == Preferences()
    wanted = Preferences(swarm_mode="join", join_address="/ip4/10.0.0.2/tcp/4281/p2p/12D3KooWabc", contribute=False,
                         max_memory_gb=3.5, contribute_only_when_idle=True, idle_minutes=12, lan_discovery=True,
                         system_prompt="Answer briefly, and kindly, please.", temperature=0.2, max_tokens=99)
    first.save(wanted)
    del first
    again = Settings(tmp_path)  # a new QSettings object on the same file: the app restarted
    assert again.configured() and again.load() == wanted
    assert (tmp_path / "settings.ini").is_file()


def test_settings_dialog_saves_what_the_user_chose_and_shows_it_again(qtbot, tmp_path):
    dialog = SettingsDialog(Settings(tmp_path).load())
    qtbot.addWidget(dialog)
    dialog.join_radio.setChecked(True)
    dialog.join_address.setText("/ip4/192.168.1.20/tcp/4281/p2p/12D3KooWxyz")
    dialog.memory.setValue(6.0)
    dialog.only_idle.setChecked(True)
    dialog.lan_discovery.setChecked(True)
    dialog.contribute.setChecked(False)
    with qtbot.waitSignal(dialog.applied) as applied:
        dialog._save()
    Settings(tmp_path).save(applied.args[0])
    loaded = Settings(tmp_path).load()
    assert (loaded.swarm_mode, loaded.join_address, loaded.max_memory_gb) == (
        "join", "/ip4/192.168.1.20/tcp/4281/p2p/12D3KooWxyz", 6.0)
    assert loaded.contribute_only_when_idle and loaded.lan_discovery and not loaded.contribute
    reopened = SettingsDialog(loaded)
    qtbot.addWidget(reopened)
    assert reopened.join_radio.isChecked() and reopened.memory.value() == 6.0 and not reopened.model.isEnabled()
    assert reopened.preferences() == loaded


def test_settings_dialog_explains_a_bad_swarm_address_instead_of_saving(qtbot, tmp_path):
    dialog = SettingsDialog(Preferences())
    qtbot.addWidget(dialog)
    dialog.join_radio.setChecked(True)
    dialog.join_address.setText("192.168.1.20")
    emitted = []
    dialog.applied.connect(emitted.append)
    dialog._save()
    assert not emitted and "/p2p/" in dialog.error.text()


def test_settings_dialog_model_choice_round_trips(qtbot):
    custom = Preferences(host_model="/models/my-checkpoint")
    dialog = SettingsDialog(custom)
    qtbot.addWidget(dialog)
    assert dialog.preferences().host_model == "/models/my-checkpoint"
    dialog.model.setCurrentIndex(0)  # the demo model
    assert dialog.preferences().host_model == ""
    catalog = dialog.model.findData("qwen3-0.6b")
    if catalog >= 0:
        dialog.model.setCurrentIndex(catalog)
        assert dialog.preferences().host_model == "qwen3-0.6b"


# ---- start at login ----

def test_linux_autostart_file_is_written_and_removed(tmp_path):
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    command = ["/opt/Potluck Apps/bin/python", "-m", "app.cli", "app", "--data-dir", "/home/me/100% sure"]
    where = set_start_at_login(True, command, platform="linux", env=env)
    path = linux_autostart_path(env=env)
    assert where == str(path) and path == tmp_path / "config" / "autostart" / "org.potluck.Potluck.desktop"
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str
    entry.read(path)
    desktop = entry["Desktop Entry"]
    assert desktop["Type"] == "Application" and desktop["Name"] == "Potluck"
    assert desktop["Exec"] == '"/opt/Potluck Apps/bin/python" -m app.cli app --data-dir "/home/me/100%% sure"'
    assert start_at_login_enabled(platform="linux", env=env)
    set_start_at_login(False, command, platform="linux", env=env)
    assert not path.exists() and not start_at_login_enabled(platform="linux", env=env)
    set_start_at_login(False, command, platform="linux", env=env)  # removing twice is fine


def test_macos_launch_agent_is_a_valid_plist(tmp_path):
    set_start_at_login(True, ["/Applications/Potluck.app/Contents/MacOS/Potluck"], platform="darwin", home=tmp_path)
    path = tmp_path / "Library" / "LaunchAgents" / "org.potluck.Potluck.plist"
    agent = plistlib.loads(path.read_bytes())
    assert agent["RunAtLoad"] and agent["ProgramArguments"] == ["/Applications/Potluck.app/Contents/MacOS/Potluck"]
    set_start_at_login(False, platform="darwin", home=tmp_path)
    assert not path.exists()


# ---- the node's command line ----

def test_first_run_hosts_the_demo_model_and_contributes(tmp_path):
    config = NodeConfig.from_preferences(Preferences(), tmp_path)
    assert config.host and config.model == str(default_model()) and config.uses_demo_model
    args = config.arguments("127.0.0.1:0")
    assert args[:4] == ["node", "--host", "--model", str(default_model())]
    assert "--client-only" not in args and args[args.index("--data-dir") + 1] == str(tmp_path)
    assert config.environment()["POTLUCK_PARENT_PID"].isdigit()


def test_join_without_contributing_is_a_client_only_node(tmp_path):
    prefs = Preferences(swarm_mode="join", join_address="/ip4/10.0.0.2/tcp/4281/p2p/12D3KooWabc", contribute=False,
                        max_memory_gb=2.5, listen="10.0.0.5:4281", lan_discovery=True)
    config = NodeConfig.from_preferences(prefs, tmp_path, extra_args=("--heartbeat", "0.3"))
    args = config.arguments()
    assert args[:3] == ["node", "--join", "/ip4/10.0.0.2/tcp/4281/p2p/12D3KooWabc"] and "--model" not in args
    assert "--client-only" in args and args[args.index("--max-memory") + 1] == "2.5"
    assert args[args.index("--listen") + 1] == "10.0.0.5:4281" and args[-2:] == ["--heartbeat", "0.3"]
    assert config.environment()["POTLUCK_LAN_DISCOVERY"] == "1" and config.problem() is None


def test_config_problems_are_found_before_starting(tmp_path, monkeypatch):
    monkeypatch.setattr("app.settings.default_model", lambda: tmp_path / "no-such-demo-model")
    assert "demo model is missing" in NodeConfig.from_preferences(Preferences(), tmp_path).problem()
    bad_join = NodeConfig.from_preferences(Preferences(swarm_mode="join", join_address="10.0.0.2"), tmp_path)
    assert "/p2p/" in bad_join.problem()


def test_a_node_that_cannot_start_is_explained_in_its_own_words():
    stderr = ["Traceback (most recent call last):", "potluck node: Could not join the swarm at /ip4/x: timed out. "
              "Check the address and that the host node is running."]
    message = explain_start_failure(stderr, 2)
    assert message.startswith("Potluck's node could not start: Could not join the swarm") and "Settings" in message


# ---- status words, the swarm picture, icons ----

def test_tooltip_says_what_this_computer_serves():
    health = {"peer_id": "me", "model": "Qwen3-8B", "serves": True, "serving": [12, 24], "assigned": [12, 24],
              "num_layers": 36, "served_tokens": 1240, "served_requests": 3, "resident_requests": 0}
    status = summarize("ready", health)
    assert status.state == "contributing"
    assert status.headline == "Serving layers 12-23 of Qwen3-8B · 1,240 tokens served"
    assert summarize("ready", {**health, "resident_requests": 2}).state == "busy"
    loading = summarize("ready", {**health, "serving": None})
    assert loading.state == "contributing" and loading.headline.startswith("Loading layers 12-23")
    idle = summarize("ready", {**health, "serves": False, "serving": None, "assigned": None}, contribute=False)
    assert idle.state == "idle" and idle.headline.startswith("Not contributing")
    error = summarize("stopped", None, problem="Potluck's node stopped unexpectedly (it was killed). Potluck "
                                               "restarts it in 1 s.")
    assert error.state == "error" and error.headline == "Potluck's node stopped unexpectedly (it was killed)."
    assert summarize("starting", None).state == "starting"
    demo = summarize("ready", {**health, "model": "demo-model"})
    assert "of the demo model" in demo.headline and demo.demo


def test_swarm_picture_marks_coverage_and_bottleneck():
    swarm = {"num_layers": 8, "this_node": {"peer_id": "a"}, "nodes": [
        {"peer_id": "a", "serves": True, "assigned": [0, 4], "ready": [0, 4], "profile": {"device_name": "RTX"}},
        {"peer_id": "b", "serves": True, "assigned": [0, 4], "ready": [0, 4]},
        {"peer_id": "c", "serves": True, "assigned": [4, 8], "ready": None},
        {"peer_id": "d", "serves": False, "assigned": None, "ready": None}]}
    picture = swarm_picture(swarm)
    assert picture.replicas == [2, 2, 2, 2, 0, 0, 0, 0] and not picture.covered and picture.bottleneck == [4, 5, 6, 7]
    assert picture.rows[0].this_computer and picture.rows[0].label == "this computer · RTX"
    assert not picture.rows[2].ready and not picture.rows[3].serves
    swarm["nodes"][2]["ready"] = [4, 8]
    picture = swarm_picture(swarm)
    assert picture.covered and picture.bottleneck == [4, 5, 6, 7]


def test_every_state_has_its_own_icon(qapp):
    images = {state: state_pixmap(state, 32).toImage() for state in STATES}
    for a in STATES:
        for b in STATES:
            assert a == b or images[a] != images[b], (a, b)


# ---- the conversation ----

def test_conversation_sends_only_answered_turns_and_shows_problems_inline():
    chat = Conversation()
    first = chat.ask("What is *2*?")
    first.answer, first.state = "It is **two**.", DONE
    failed = chat.ask("And 3?")
    failed.state, failed.error = FAILED, "The swarm cannot answer right now. Wait a moment."
    stopped = chat.ask("Tell me a story")
    stopped.answer, stopped.state = "Once upon", STOPPED
    chat.ask("Go on")
    assert chat.messages() == [{"role": "user", "content": "What is *2*?"},
                               {"role": "assistant", "content": "It is **two**."},
                               {"role": "user", "content": "Tell me a story"},
                               {"role": "assistant", "content": "Once upon"},
                               {"role": "user", "content": "Go on"}]
    text = chat.to_markdown()
    assert "What is \\*2\\*?" in text and "It is **two**." in text
    assert "> **Problem:** The swarm cannot answer right now\\. Wait a moment\\." in text and "*Stopped.*" in text


def test_a_problem_can_offer_links_to_the_app():
    chat = Conversation()
    turn = chat.ask("hi")
    turn.state, turn.error = FAILED, "The swarm cannot answer."
    turn.offers = [("solo", "Chat with my [best] model.gguf instead"), ("settings", "Open Settings")]
    text = chat.to_markdown()
    assert "[Chat with my \\[best\\] model\\.gguf instead](potluck:solo) · [Open Settings](potluck:settings)" in text


def test_chat_window_hands_potluck_links_to_the_app(qtbot):
    from PySide6.QtCore import QUrl

    window = ChatWindow()
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.action_requested) as asked:
        window.transcript.anchorClicked.emit(QUrl("potluck:solo"))
    assert asked.args == ["solo"]
    assert window.transcript.source().isEmpty()  # the transcript did not navigate away


def test_route_names_this_computer_and_the_others():
    routes = [[Hop("12D3KooWme", 0, 4), Hop("12D3KooWotherABCDEF", 4, 8)]]
    assert describe_route(routes, "12D3KooWme") == "this computer (layers 0-3) → node …ABCDEF (layers 4-7)"
    assert "re-routed 1×" in describe_route(routes * 2, "x")


# ---- the chat session and window over a stand-in backend ----

class ScriptedStream:
    def __init__(self, pieces, release: threading.Event, fail: ChatError | None = None):
        self.pieces, self.release, self.fail = pieces, release, fail
        self.cancelled = threading.Event()

    def cancel(self):
        self.cancelled.set()
        self.release.set()

    def __iter__(self):
        yield self.pieces[0]
        self.release.wait(30)  # hold the rest of the answer until the test (or cancel) says so
        if self.cancelled.is_set():
            return
        if self.fail:
            raise self.fail
        yield from self.pieces[1:]
        yield TurnStats(routes=[[Hop("me", 0, 8)]], ttft_s=0.05, tokens_per_s=42.0, finish_reason="stop")


class ScriptedBackend:
    name = "scripted"

    def __init__(self, fail=None):
        self.release = threading.Event()
        self.fail = fail
        self.streams, self.requests = [], []

    def stream(self, messages, options):
        self.requests.append((messages, options))
        self.streams.append(ScriptedStream(["Hello", ", **world**", "!\n\n```python\nprint(1)\n```"],
                                           self.release, self.fail))
        return self.streams[-1]


def chat_pair(qtbot, backend):
    session = ChatSession(backend)
    session.own_peer_id = "me"
    window = ChatWindow(ChatOptions(system_prompt="Be brief.", max_tokens=50))
    qtbot.addWidget(window)
    window.send_requested.connect(session.send)
    window.stop_requested.connect(session.stop)
    window.new_chat_requested.connect(session.new_chat)
    session.changed.connect(lambda: window.render(session.conversation.to_markdown()))
    session.busy_changed.connect(window.set_busy)
    return session, window


def test_enter_sends_and_shift_enter_breaks_the_line(qtbot):
    backend = ScriptedBackend()
    assert isinstance(backend, ChatBackend)
    session, window = chat_pair(qtbot, backend)
    qtbot.keyClicks(window.input, "first line")
    qtbot.keyClick(window.input, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(window.input, "second line")
    assert window.input.toPlainText() == "first line\nsecond line" and not backend.requests
    qtbot.keyClick(window.input, Qt.Key.Key_Return)
    qtbot.waitUntil(lambda: "Hello" in window.transcript.toPlainText())
    assert window.input.toPlainText() == "" and window.stop_button.isEnabled() and not window.send_button.isEnabled()
    messages, options = backend.requests[0]
    assert messages == [{"role": "user", "content": "first line\nsecond line"}]
    assert options.system_prompt == "Be brief." and options.max_tokens == 50
    backend.release.set()
    with qtbot.waitSignal(session.turn_finished) as finished:
        pass
    assert finished.args == [DONE]
    text = window.transcript.toPlainText()
    assert "Hello, world!" in text and "print(1)" in text
    assert "Route: this computer (layers 0-7) · first token 0.05 s · 42.0 tokens/s" in text
    assert window.send_button.isEnabled() and not window.stop_button.isEnabled()


def test_stop_ends_the_turn_at_once_and_cancels_the_stream(qtbot):
    backend = ScriptedBackend()
    session, window = chat_pair(qtbot, backend)
    window.send_requested.emit("Tell me a story", window.options())
    qtbot.waitUntil(lambda: session.conversation.turns[-1].answer == "Hello")
    with qtbot.waitSignal(session.turn_finished) as finished:
        qtbot.mouseClick(window.stop_button, Qt.MouseButton.LeftButton)
    assert finished.args == [STOPPED]
    qtbot.waitUntil(backend.streams[0].cancelled.is_set)
    assert session.conversation.turns[-1].answer == "Hello" and "Stopped." in window.transcript.toPlainText()
    assert not session.busy and window.send_button.isEnabled()


def test_a_failing_backend_shows_the_problem_inline(qtbot):
    backend = ScriptedBackend(fail=ChatError("The swarm cannot answer right now.", "Wait a moment."))
    session, window = chat_pair(qtbot, backend)
    window.send_requested.emit("hi", window.options())
    backend.release.set()
    with qtbot.waitSignal(session.turn_finished) as finished:
        pass
    assert finished.args == [FAILED]
    assert "Problem: The swarm cannot answer right now. Wait a moment." in window.transcript.toPlainText()
    window.new_chat_requested.emit()
    assert window.transcript.toPlainText() == ""


def test_a_failed_turn_carries_the_apps_offers_and_stats_without_a_route_leave_the_route_out(qtbot):
    from app.conversation import describe_stats

    backend = ScriptedBackend(fail=ChatError("The swarm cannot answer right now.", "Wait a moment."))
    session, window = chat_pair(qtbot, backend)
    session.failure_offers = lambda: [("solo", "Chat in solo mode instead")]
    started = []
    session.answer_started.connect(lambda: started.append(session.conversation.turns[-1].answer))
    window.send_requested.emit("hi", window.options())
    qtbot.waitUntil(lambda: started == ["Hello"])  # once, at the first words
    backend.release.set()
    with qtbot.waitSignal(session.turn_finished):
        pass
    assert session.conversation.turns[-1].offers == [("solo", "Chat in solo mode instead")]
    assert session.last_failed_question() == "hi"
    assert 'href="potluck:solo"' in window.transcript.toHtml()
    assert describe_stats(TurnStats(ttft_s=0.25, tokens_per_s=12.0)) == "first token 0.25 s · 12.0 tokens/s"


def test_no_backend_yet_is_an_inline_problem_not_a_crash(qtbot):
    session, window = chat_pair(qtbot, None)
    window.send_requested.emit("hi", window.options())
    assert "still starting" in window.transcript.toPlainText()


# ---- one instance ----

def test_a_second_launch_asks_the_first_to_show_itself(qtbot, tmp_path):
    first = SingleInstance(tmp_path)
    assert not first.notify_running(timeout_ms=200)
    assert first.listen()
    second = SingleInstance(tmp_path)
    with qtbot.waitSignal(first.activated, timeout=5000):
        assert second.notify_running()
    first.close()
    assert not SingleInstance(tmp_path).notify_running(timeout_ms=200)


def test_logs_go_to_the_data_dir(tmp_path):
    import logging

    from app.main import setup_logging

    path = setup_logging(tmp_path)
    logging.getLogger("app.test").info("hello from the test")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert path == tmp_path / "logs" / "app.log" and "hello from the test" in path.read_text()
    for handler in list(logging.getLogger().handlers):
        if getattr(handler, "baseFilename", None) == str(path):
            logging.getLogger().removeHandler(handler)
            handler.close()


def test_missing_demo_model_is_explained_and_the_window_still_works(qtbot, tmp_path, monkeypatch):
    """No tray (offscreen) and no demo model built yet: the main window shows what to do; closing it quits."""
    monkeypatch.setattr("app.settings.default_model", lambda: tmp_path / "demo-model")
    from app.main import PotluckApp

    app = PotluckApp(tmp_path / "home", tray_available=False)
    qtbot.addWidget(app.main_window)
    app.start()
    assert app.main_window.isVisible() and app.tray is None
    qtbot.waitUntil(lambda: app.controller.status.state == "error")
    assert "demo model is missing" in app.main_window.detail.text() and "Settings" in app.main_window.detail.text()
    app.chat_window.send_requested.emit("hello?", app.chat_window.options())  # chat says why, inline
    assert "demo model is missing" in app.chat_window.transcript.toPlainText()
    assert app.controller.first_run and Settings(tmp_path / "home").configured()
    with qtbot.waitSignal(app.quit_finished, timeout=10000):
        app.main_window.close()
    assert not app.controller.node.running()


def test_contribute_only_when_idle():
    from app.idle import should_serve

    assert not should_serve(False, False, None, 5)
    assert should_serve(True, False, 0.0, 5)
    assert not should_serve(True, True, 60.0, 5) and should_serve(True, True, 301.0, 5)
    assert should_serve(True, True, None, 5)  # idle time unknown here: contribute as asked


def test_engine_errors_are_told_in_the_apps_words():
    from app.api_client import ApiFailure
    from app.chat_backend import explain_failure

    small = explain_failure(ApiFailure(503, "The swarm cannot answer right now: The swarm is too small for this "
                                            "model: ... Add a computer (or raise --max-memory) to contribute more."))
    assert "--max-memory" not in str(small) and "GPU memory cap in Settings" in str(small)
    assert "Contribute compute" in small.todo
    assert "Quit Potluck" in str(explain_failure(ApiFailure(401, "Missing or wrong API token")))


def test_a_second_launch_of_the_program_returns_at_once(qtbot, tmp_path):
    """`potluck app` when Potluck already runs for this data dir: it asks the first to show up and exits."""
    import logging

    from app.main import run

    first = SingleInstance(tmp_path)
    assert first.listen()
    try:
        with qtbot.waitSignal(first.activated, timeout=5000):
            assert run(no_tray=True, data_dir=str(tmp_path)) == 0
    finally:
        first.close()
        for handler in list(logging.getLogger().handlers):
            if str(tmp_path) in str(getattr(handler, "baseFilename", "")):
                logging.getLogger().removeHandler(handler)
                handler.close()


def test_with_potluck_bench_set_the_program_says_when_its_window_is_on_screen(tmp_path):
    """The readiness signal bench/app_startup.py times (the bench itself runs the whole program)."""
    import json
    import os
    import signal
    import time

    home = tmp_path / "home"
    settings = Settings(home)  # a swarm address that is not complete: no node is started
    settings.save(settings.load().with_(swarm_mode="join", join_address="10.0.0.2"))
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "POTLUCK_BENCH": "1"}
    env.pop("DISPLAY", None)
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "app", "--no-tray", "--data-dir", str(home)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("APP_READY {"), line
        ready = json.loads(line.split(" ", 1)[1])
        assert ready["tray"] is False and started < ready["t"] <= time.time()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
