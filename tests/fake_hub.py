"""A stand-in for the Hugging Face hub's file endpoints, on 127.0.0.1 and an ephemeral port.

It answers what huggingface_hub calls (see huggingface_hub/file_download.py and hf_api.py):
  HEAD/GET /{repo_id}/resolve/{revision}/{filename}   X-Repo-Commit, ETag, X-Linked-Etag/-Size, Range
  GET      /api/models/{repo_id}/revision/{revision}  model_info(files_metadata=True): sha, siblings
and records every request, so tests can assert which files were asked for. Faults to inject:
`drop_once[filename] = n` (send n bytes of the body, then cut the connection, once) and
`corrupt[filename] = k` (serve a flipped byte the next k times).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class HubRepo:
    commit: str
    files: dict[str, bytes]

    def is_lfs(self, name: str) -> bool:
        return name.endswith(".safetensors")

    def etag(self, name: str) -> str:
        data = self.files[name]
        if self.is_lfs(name):
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    filename: str | None
    range: str | None
    authorization: str | None


@dataclass
class FakeHub:
    repos: dict[str, HubRepo] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    drop_once: dict[str, int] = field(default_factory=dict)
    corrupt: dict[str, int] = field(default_factory=dict)

    def add_repo(self, repo_id: str, directory: Path) -> HubRepo:
        files = {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir()) if p.is_file()}
        commit = hashlib.sha1(repo_id.encode() + b"".join(files.values())).hexdigest()
        self.repos[repo_id] = HubRepo(commit, files)
        return self.repos[repo_id]

    def start(self) -> "FakeHub":
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def downloaded(self) -> set[str]:
        """Files whose bytes were asked for (GET)."""
        return {r.filename for r in self.requests if r.method == "GET" and r.filename}

    def gets(self, filename: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.filename == filename]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: FakeHub

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool):
        path = unquote(urlsplit(self.path).path)
        hub = self.hub
        if path.startswith("/api/models/"):
            hub.requests.append(Request(self.command, path, None, None, self.headers.get("Authorization")))
            repo_id, _, revision = path[len("/api/models/"):].partition("/revision/")
            return self._api(repo_id, revision)
        parts = path.lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(404, "RepoNotFound")
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        hub.requests.append(Request(self.command, path, filename, self.headers.get("Range"),
                                    self.headers.get("Authorization")))
        repo = hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound")
        if revision not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound")
        if filename not in repo.files:
            return self._error(404, "EntryNotFound", commit=repo.commit)
        data = repo.files[filename]
        if body and hub.corrupt.get(filename, 0) > 0:
            hub.corrupt[filename] -= 1
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]

        start = 0
        rng = self.headers.get("Range")
        if body and rng and rng.startswith("bytes="):
            start = int(rng[len("bytes="):].split("-")[0])
        part = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", repo.commit)
        self.send_header("ETag", f'"{repo.etag(filename)}"')
        if repo.is_lfs(filename):
            self.send_header("X-Linked-Etag", f'"{repo.etag(filename)}"')
            self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(part) if body else len(data)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not body:
            return
        cut = hub.drop_once.pop(filename, None) if not start else None
        if cut is not None:
            self.wfile.write(part[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(part)

    def _api(self, repo_id: str, revision: str):
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound")
        if revision not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound")
        siblings = []
        for name, data in repo.files.items():
            sibling = {"rfilename": name, "size": len(data),
                       "blobId": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
            if repo.is_lfs(name):
                sibling["blobId"] = hashlib.sha1(b"lfs pointer " + name.encode()).hexdigest()
                sibling["lfs"] = {"size": len(data), "sha256": repo.etag(name), "pointerSize": 134}
            siblings.append(sibling)
        payload = json.dumps({"id": repo_id, "sha": repo.commit, "siblings": siblings}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: int, code: str, commit: str | None = None):
        payload = json.dumps({"error": code}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
