"""`potluck --self-test`: prove that an installed Potluck works, without a screen or a person.

It starts a real `potluck node --host` on the demo model in a throwaway data folder, waits for its
READY line, asks one chat question over the node's HTTP API (the same path the chat window uses),
prints a short report and stops the node. Exit status 0 means every step worked. The release
workflow runs it on each freshly installed installer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from app.launcher import potluck_command

READY_TIMEOUT_S = 180.0
CHAT_TIMEOUT_S = 180.0
QUESTION = "Say hello to the swarm."


class SelfTestError(RuntimeError):
    pass


def run_self_test(data_dir: str | Path | None = None, model: str | Path | None = None, out=None) -> int:
    """Run the self-test; returns 0 on success, 1 on failure (the report says which step failed).

    The node always starts from an empty folder, so it never touches the volunteer's identity key,
    settings or swarm: `<data_dir>/self-test` (emptied first, kept afterwards with the node's log),
    or a temporary folder that is removed afterwards when data_dir is None.
    model: checkpoint folder to serve (default: the demo model shipped with the app).
    """
    out = out or sys.stdout
    if data_dir is None:
        with tempfile.TemporaryDirectory(prefix="potluck-self-test-") as tmp:
            return _run(Path(tmp), model, out)
    node_dir = Path(data_dir) / "self-test"
    shutil.rmtree(node_dir, ignore_errors=True)
    node_dir.mkdir(parents=True)
    return _run(node_dir, model, out)


def _run(data_dir: Path, model, out) -> int:
    started = time.monotonic()
    say = _reporter(out)
    say(f"Potluck self-test ({_version()}, Python {sys.version.split()[0]}, {sys.platform})")
    node = None
    try:
        model_dir = _model_dir(model)
        say(f"model: {model_dir}")
        node = _NodeProcess(model_dir, data_dir)
        info = node.wait_ready(READY_TIMEOUT_S)
        say(f"node ready in {time.monotonic() - started:.1f} s: peer {info['peer_id'][:16]}..., API {info['api']}")
        answer, usage = _chat_once(info)
        say(f"chat answered {usage.get('completion_tokens', '?')} tokens: {answer[:60]!r}")
    except SelfTestError as exc:
        say(f"FAILED: {exc}")
        if node is not None:
            say(node.tail())
        return 1
    finally:
        if node is not None:
            code = node.stop()
            say(f"node stopped (exit status {code})")
    say(f"PASSED in {time.monotonic() - started:.1f} s")
    return 0


def _model_dir(model) -> Path:
    if model is not None:
        path = Path(model)
        if not (path / "config.json").is_file():
            raise SelfTestError(f"{path} is not a model checkpoint folder (no config.json in it).")
        return path
    from app.resources import ResourceError, demo_model_dir

    try:
        path = demo_model_dir()
    except ResourceError as exc:
        raise SelfTestError(str(exc)) from None
    if path is None:
        raise SelfTestError("The demo model is not part of this build (resources/demo-model has no config.json). "
                            "Build it first, or pass a checkpoint folder to run_self_test(model=...).")
    return path


class _NodeProcess:
    """A `potluck node --host` child process whose output is drained by threads (a full pipe would
    block the node) and whose first READY line is kept."""

    def __init__(self, model_dir: Path, data_dir: Path):
        command = [*potluck_command(), "node", "--host", "--model", str(model_dir), "--data-dir", str(data_dir),
                   "--api", "127.0.0.1:0"]
        env = {**os.environ, "POTLUCK_HOME": str(data_dir)}
        if command[1:2] == ["-m"]:
            # A bare interpreter must see the same import path as this process to find app/ and engine/.
            env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        else:
            # Briefcase's launchers run $BRIEFCASE_MAIN_MODULE instead of the app when it is set (its
            # test mode): the node must be the app.
            env.pop("BRIEFCASE_MAIN_MODULE", None)
        try:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                         encoding="utf-8", errors="replace", env=env)
        except OSError as exc:
            raise SelfTestError(f"could not start the node ({' '.join(command)}): {exc}") from None
        self.lines: list[str] = []
        self.ready: dict | None = None
        self._got_ready = threading.Event()
        self._readers = [threading.Thread(target=self._read, args=(stream, stream is self.proc.stdout), daemon=True)
                         for stream in (self.proc.stdout, self.proc.stderr)]
        for reader in self._readers:
            reader.start()

    def _read(self, stream, is_stdout: bool) -> None:
        for line in stream:
            self.lines.append(line.rstrip())
            if is_stdout and self.ready is None and line.startswith("READY "):
                try:
                    self.ready = json.loads(line[len("READY "):])
                except json.JSONDecodeError:
                    pass
                self._got_ready.set()
        if is_stdout:
            self._got_ready.set()  # the node closed its output: it is gone

    def wait_ready(self, timeout: float) -> dict:
        if not self._got_ready.wait(timeout):
            raise SelfTestError(f"the node printed no READY line within {timeout:.0f} s")
        if self.ready is None:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                raise SelfTestError("the node closed its output without a valid READY line") from None
            raise SelfTestError(f"the node exited (status {self.proc.returncode}) before it was ready")
        missing = {"peer_id", "api", "token_file"} - set(self.ready)
        if missing:
            raise SelfTestError(f"the READY line lacks {', '.join(sorted(missing))}: {self.ready}")
        return self.ready

    def tail(self, count: int = 30) -> str:
        return "node output (last lines):\n  " + "\n  ".join(self.lines[-count:] or ["(none)"])

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()
        return self.proc.returncode


def _chat_once(info: dict) -> tuple[str, dict]:
    import httpx

    try:
        token = Path(info["token_file"]).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SelfTestError(f"cannot read the API token file: {exc}") from None
    body = {"model": "potluck", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8,
            "temperature": 0}
    deadline = time.monotonic() + CHAT_TIMEOUT_S
    with httpx.Client(base_url=info["api"], headers={"Authorization": f"Bearer {token}"},
                      timeout=CHAT_TIMEOUT_S) as client:
        while True:
            try:
                response = client.post("/v1/chat/completions", json=body)
            except httpx.HTTPError as exc:
                raise SelfTestError(f"the chat request failed: {exc}") from None
            if response.status_code == 200:
                break
            if response.status_code != 503 or time.monotonic() > deadline:  # 503: layers still loading
                raise SelfTestError(f"the chat request got HTTP {response.status_code}: {response.text[:300]}")
            time.sleep(0.5)
    try:
        payload = response.json()
        answer = payload["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise SelfTestError(f"the chat answer is not an OpenAI chat completion: {response.text[:300]}") from None
    if not isinstance(answer, str):
        raise SelfTestError(f"the chat answer has no text: {payload}")
    return answer, payload.get("usage") or {}


def _reporter(out):
    def say(text: str) -> None:
        print(f"self-test: {text}" if "\n" not in text else text, file=out, flush=True)
    return say


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"potluck {version('potluck')}"
    except PackageNotFoundError:
        return "potluck (version unknown)"


if __name__ == "__main__":
    sys.exit(run_self_test(model=sys.argv[1] if len(sys.argv) > 1 else None))
