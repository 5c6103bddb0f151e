"""Start real `potluck node` processes for tests and wait for their READY line and /health."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


class NodeProcess:
    def __init__(self, data_dir: Path, *args: str, env: dict | None = None):
        self.data_dir = data_dir
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "node", *args, "--data-dir", str(data_dir), "--api", "127.0.0.1:0",
             "--heartbeat", "0.3"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
        self.ready: dict | None = None
        self.lines: list[str] = []
        self.errors: list[str] = []
        got = threading.Event()

        def read_stdout():  # keep draining: a full pipe would block the node (Lattica logs to stdout)
            for line in self.proc.stdout:
                self.lines.append(line)
                if line.startswith("READY ") and self.ready is None:
                    self.ready = json.loads(line[len("READY "):])
                    got.set()
            got.set()

        def read_stderr():
            for line in self.proc.stderr:
                self.errors.append(line)

        threading.Thread(target=read_stdout, daemon=True).start()
        threading.Thread(target=read_stderr, daemon=True).start()
        if not got.wait(timeout=120) or self.ready is None:
            self.stop()
            raise RuntimeError(f"node did not become ready: {''.join(self.errors)[-3000:]}")
        self.token = Path(self.ready["token_file"]).read_text().strip()
        self.api = self.ready["api"]
        self.http = httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {self.token}"}, timeout=120)

    @property
    def peer_id(self) -> str:
        return self.ready["peer_id"]

    @property
    def multiaddr(self) -> str:
        return self.ready["multiaddr"]

    def swarm(self) -> dict:
        response = self.http.get("/swarm")
        response.raise_for_status()
        return response.json()

    def health(self) -> dict:
        response = self.http.get("/health")
        response.raise_for_status()
        return response.json()

    def wait_for(self, condition, what: str, timeout: float = 120.0):
        """Poll /swarm (the readiness signal) until condition(snapshot) holds."""
        deadline = time.monotonic() + timeout
        while True:
            snapshot = self.swarm()
            if condition(snapshot):
                return snapshot
            if time.monotonic() > deadline:
                dump = self.data_dir / "swarm-at-timeout.json"
                dump.write_text(json.dumps(snapshot, indent=1))
                raise AssertionError(f"timed out waiting for {what} (snapshot in {dump}): "
                                     f"{json.dumps(snapshot)[:2000]}")
            time.sleep(0.2)

    def stop(self, sig=signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def all_ready(snapshot: dict, count: int) -> bool:
    serving = [n for n in snapshot["nodes"] if n["serves"]]
    return (snapshot["covered"] and len(serving) == count
            and all(n["assigned"] is not None and n["ready"] == n["assigned"] for n in serving))
