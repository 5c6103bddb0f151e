"""The local `potluck node` process: how it is started, and its life as seen from the app.

`NodeConfig` (plain data) says how to run the node: host a swarm with a model or join one, the
role (`--client-only` when not contributing), the memory cap. `NodeProcess` runs it with QProcess,
which is asynchronous: starting, waiting for the READY line and stopping never block the UI thread.
The node is told the app's process id ($POTLUCK_PARENT_PID) and stops by itself if the app goes
away without stopping it (a crash), so no node is left behind.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from PySide6.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, Signal

from app import settings as app_settings
from app.launcher import potluck_command
from app.settings import Preferences, is_demo_model

log = logging.getLogger(__name__)

READY_TIMEOUT_MS = 300_000  # the first start measures the hardware and may read a big checkpoint's config
STOP_TIMEOUT_MS = 15_000  # a node leaving cleanly tells the scheduler; then it is killed


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path
    host: bool = True
    model: str | None = None
    join: str | None = None
    api: str = "127.0.0.1:4280"
    listen: str | None = None
    max_memory_gb: float | None = None
    client_only: bool = False
    lan_discovery: bool = False
    extra_args: tuple[str, ...] = field(default=())  # tests: a faster heartbeat

    @classmethod
    def from_preferences(cls, prefs: Preferences, data_dir: Path, *, client_only: bool | None = None,
                         extra_args: tuple[str, ...] = ()) -> "NodeConfig":
        join = prefs.swarm_mode == "join"
        return cls(data_dir=Path(data_dir), host=not join, model=None if join else prefs.model,
                   join=prefs.join_address.strip() if join else None, api=prefs.api or "127.0.0.1:0",
                   listen=prefs.listen.strip() or None, max_memory_gb=prefs.max_memory_gb or None,
                   client_only=(not prefs.contribute) if client_only is None else client_only,
                   lan_discovery=prefs.lan_discovery, extra_args=tuple(extra_args))

    @property
    def uses_demo_model(self) -> bool:
        return self.host and is_demo_model(self.model)

    def problem(self) -> str | None:
        """A reason this config cannot start, found without starting it; None if it looks fine."""
        if self.host:
            if not self.model:
                return "No model is chosen to host. Open Settings and pick one, or join a swarm."
            demo = app_settings.default_model()  # looked up on the module: tests point it at a test checkpoint
            if Path(self.model) == demo and not demo.is_dir():
                return ("The demo model is missing from this installation (resources/demo-model). Open Settings "
                        "and join a swarm by its address, or host a model of your choice.")
        else:
            if not self.join or "/p2p/" not in self.join:
                return ("The swarm address in Settings is not complete: it looks like "
                        "/ip4/192.168.1.20/tcp/4281/p2p/12D3Koo… (ask the host for it).")
        return None

    def arguments(self, api: str | None = None) -> list[str]:
        args = ["node"]
        args += ["--host", "--model", str(self.model)] if self.host else ["--join", str(self.join)]
        args += ["--api", api or self.api, "--data-dir", str(self.data_dir)]
        if self.listen:
            args += ["--listen", self.listen]
        if self.max_memory_gb:
            args += ["--max-memory", f"{self.max_memory_gb:g}"]
        if self.client_only:
            args.append("--client-only")
        return args + list(self.extra_args)

    def environment(self) -> dict[str, str]:
        return {"POTLUCK_PARENT_PID": str(os.getpid()), "POTLUCK_LAN_DISCOVERY": "1" if self.lan_discovery else "0",
                "OMP_WAIT_POLICY": "PASSIVE", "RUST_LOG": "off", "PYTHONUNBUFFERED": "1"}


def api_address(wanted: str) -> str:
    """`wanted` (HOST:PORT) if that port is free, else the same host with port 0 (the node picks one)."""
    host, _, port = wanted.rpartition(":")
    host = host or "127.0.0.1"
    if port in ("", "0"):
        return f"{host}:0"
    try:
        with socket.socket() as s:
            s.bind((host, int(port)))
    except (OSError, ValueError):
        log.info("API port %s is taken: letting the node pick a free one", wanted)
        return f"{host}:0"
    return f"{host}:{port}"


class NodeProcess(QObject):
    """One node process at a time. States: stopped, starting, ready, stopping."""

    ready = Signal(object)  # the READY line's JSON: peer_id, multiaddr, api, token_file
    failed = Signal(str)  # could not start: what happened and what to do
    exited = Signal(str)  # stopped on its own after it was ready (crash, killed)
    stopped = Signal()  # stopped because we asked

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.state = "stopped"
        self.config: NodeConfig | None = None
        self.info: dict | None = None
        self._proc: QProcess | None = None
        self._stdout = b""
        self.stderr_tail: deque[str] = deque(maxlen=60)
        self._ready_timer = QTimer(self, singleShot=True, interval=READY_TIMEOUT_MS)
        self._ready_timer.timeout.connect(self._ready_timeout)
        self._kill_timer = QTimer(self, singleShot=True, interval=STOP_TIMEOUT_MS)
        self._kill_timer.timeout.connect(self._kill)

    @property
    def pid(self) -> int | None:
        return int(self._proc.processId()) or None if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.state() != QProcess.ProcessState.NotRunning

    def start(self, config: NodeConfig) -> None:
        if self.running():
            raise RuntimeError("the node process is already running: stop it first")
        self.config, self.info, self._stdout = config, None, b""
        self.stderr_tail.clear()
        problem = config.problem()
        if problem:
            self.state = "stopped"
            QTimer.singleShot(0, lambda: self.failed.emit(problem))
            return
        program, *prefix = potluck_command()
        proc = QProcess(self)
        env = QProcessEnvironment.systemEnvironment()
        for key, value in config.environment().items():
            env.insert(key, value)
        proc.setProcessEnvironment(env)
        proc.setProgram(program)
        proc.setArguments(prefix + config.arguments(api_address(config.api)))
        proc.readyReadStandardOutput.connect(self._read_stdout)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.finished.connect(self._finished)
        proc.errorOccurred.connect(self._error)
        self._proc = proc
        self.state = "starting"
        log.info("starting the node: %s %s", program, " ".join(proc.arguments()))
        proc.start()
        self._ready_timer.start()

    def stop(self) -> None:
        """Ask the node to leave the swarm and exit (SIGTERM), killing it if it takes too long;
        `stopped` is emitted when it is gone (at once if it is not running)."""
        self._ready_timer.stop()
        if not self.running():
            self.state = "stopped"
            QTimer.singleShot(0, self.stopped.emit)
            return
        self.state = "stopping"
        log.info("stopping the node (pid %s)", self.pid)
        if sys.platform == "win32":
            self._proc.kill()  # no SIGTERM for console processes on Windows
        else:
            self._proc.terminate()
        self._kill_timer.start()

    def stop_now(self, timeout_ms: int = 10_000) -> None:
        """Blocking stop, for the very end of the app's life only."""
        if not self.running():
            return
        self.state = "stopping"
        self._proc.terminate()
        if not self._proc.waitForFinished(timeout_ms):
            self._proc.kill()
            self._proc.waitForFinished(3000)

    # ---- QProcess events ----

    def _read_stdout(self) -> None:
        self._stdout += bytes(self._proc.readAllStandardOutput())
        *lines, self._stdout = self._stdout.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("READY ") and self.state == "starting":
                try:
                    self.info = json.loads(line[len("READY "):])
                except ValueError:
                    continue
                self._ready_timer.stop()
                self.state = "ready"
                log.info("node ready: %s", line)
                self.ready.emit(self.info)

    def _read_stderr(self) -> None:
        text = bytes(self._proc.readAllStandardError()).decode("utf-8", "replace")
        for line in text.splitlines():
            if line.strip():
                self.stderr_tail.append(line.rstrip())
                log.info("node: %s", line.rstrip())

    def _finished(self, code: int, status: QProcess.ExitStatus) -> None:
        self._kill_timer.stop()
        self._ready_timer.stop()
        before, self.state = self.state, "stopped"
        self._read_stderr_rest()
        crashed = status == QProcess.ExitStatus.CrashExit
        log.info("node exited (code %s%s) while %s", code, ", crashed or killed" if crashed else "", before)
        if before == "stopping":
            self.stopped.emit()
        elif before == "starting":
            self.failed.emit(explain_start_failure(list(self.stderr_tail), code))
        else:
            self.exited.emit("Potluck's node on this computer stopped unexpectedly"
                             f"{' (it was killed or crashed)' if crashed else f' (exit code {code})'}.")

    def _read_stderr_rest(self) -> None:
        if self._proc is not None:
            self._read_stderr()

    def _error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._ready_timer.stop()
            self.state = "stopped"
            self.failed.emit(f"Potluck could not start its node program ({self._proc.program()}: "
                             f"{self._proc.errorString()}). Reinstall Potluck.")

    def _ready_timeout(self) -> None:
        if self.state == "starting":
            log.warning("the node did not become ready in %d s", READY_TIMEOUT_MS // 1000)
            self.stderr_tail.append("potluck node: it did not say it was ready within "
                                    f"{READY_TIMEOUT_MS // 60000} minutes.")
            self._proc.kill()  # _finished reports it as a failed start

    def _kill(self) -> None:
        if self.running():
            log.warning("the node did not stop in %d s: killing it", STOP_TIMEOUT_MS // 1000)
            self._proc.kill()


def explain_start_failure(stderr: list[str], code: int) -> str:
    """The node's own words (it prints `potluck node: ...` for errors it understands)."""
    said = [line.split("potluck node:", 1)[1].strip() for line in stderr if "potluck node:" in line]
    if said:
        reason = said[-1]
    else:
        lines = [line for line in stderr if line.strip() and not line.startswith((" ", "\t", "Traceback"))]
        reason = lines[-1].strip() if lines else f"it exited with code {code} and said nothing"
    return (f"Potluck's node could not start: {reason.rstrip('.')}. Open Settings to check the swarm address or "
            "the model; the log in the data folder (logs/node.log) has the details.")
