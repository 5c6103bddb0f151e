"""Download progress: the events a download reports (for the app), how they are measured (bytes,
rate, time left), and a progress bar for the command line."""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, TextIO

RATE_WINDOW_S = 5.0  # the rate is measured over the last few seconds, so it follows a changing link
MIN_INTERVAL_S = 0.25  # at most this often, except at file boundaries and at the end


@dataclass(frozen=True)
class DownloadProgress:
    repo_id: str
    file: str  # the file being fetched ("" once done)
    bytes_done: int  # over every file this download fetches, including bytes resumed from disk
    bytes_total: int
    rate: float  # bytes per second received recently
    eta_s: float | None  # None until a rate is known
    files_done: int
    files_total: int
    done: bool = False

    @property
    def fraction(self) -> float:
        return self.bytes_done / self.bytes_total if self.bytes_total else 1.0


ProgressCallback = Callable[[DownloadProgress], None]


class ProgressMeter:
    """Counts the bytes of a multi-file download and calls `callback` with DownloadProgress events."""

    def __init__(self, repo_id: str, files: dict[str, int], callback: ProgressCallback | None,
                 clock: Callable[[], float] = time.monotonic):
        self.repo_id = repo_id
        self.sizes = files
        self.callback = callback
        self.clock = clock
        self.finished: set[str] = set()
        self.current = ""
        self.current_done = 0  # bytes of the current file on disk
        self.received = 0  # bytes that came over the network in this run (the rate's numerator)
        self.samples: deque[tuple[float, int]] = deque()
        self.last_emit = float("-inf")

    @property
    def bytes_total(self) -> int:
        return sum(self.sizes.values())

    @property
    def bytes_done(self) -> int:
        return sum(self.sizes[f] for f in self.finished) + self.current_done

    def start_file(self, name: str, on_disk: int = 0) -> None:
        self.current, self.current_done = name, on_disk
        self._emit(force=True)

    def set_file_bytes(self, on_disk: int) -> None:
        """The downloader says how much of the current file it has (it may restart a file from 0)."""
        self.current_done = on_disk
        self._emit()

    def advance(self, n: int) -> None:
        self.current_done += n
        if n > 0:
            self.received += n
        self._emit()

    def finish_file(self, name: str) -> None:
        self.finished.add(name)
        self.current, self.current_done = "", 0
        self._emit(force=True)

    def close(self) -> None:
        self._emit(force=True, done=True)

    def rate(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def _emit(self, force: bool = False, done: bool = False) -> None:
        now = self.clock()
        self.samples.append((now, self.received))
        while len(self.samples) > 2 and now - self.samples[0][0] > RATE_WINDOW_S:
            self.samples.popleft()
        if self.callback is None or (not force and now - self.last_emit < MIN_INTERVAL_S):
            return
        self.last_emit = now
        rate = self.rate()
        remaining = self.bytes_total - self.bytes_done
        self.callback(DownloadProgress(
            repo_id=self.repo_id, file=self.current, bytes_done=self.bytes_done, bytes_total=self.bytes_total,
            rate=rate, eta_s=(remaining / rate if rate > 0 else (0.0 if remaining <= 0 else None)),
            files_done=len(self.finished), files_total=len(self.sizes), done=done,
        ))


class TerminalProgress:
    """A one-line progress bar on stderr (redrawn in place on a terminal, one line per file in a log)."""

    def __init__(self, stream: TextIO | None = None, width: int = 30):
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_files_done = -1

    def __call__(self, event: DownloadProgress) -> None:
        if event.files_total == 0:
            return  # everything was in the cache already
        if self.tty:
            filled = int(self.width * event.fraction)
            bar = "#" * filled + "-" * (self.width - filled)
            line = (f"\r{event.repo_id} [{bar}] {format_bytes(event.bytes_done)}/{format_bytes(event.bytes_total)}"
                    f"  {format_bytes(event.rate)}/s  {format_eta(event.eta_s)} left"
                    f"  ({event.files_done}/{event.files_total} files)")
            self.stream.write(line.ljust(100) + ("\n" if event.done else ""))
            self.stream.flush()
        elif event.files_done != self.last_files_done or event.done:
            self.last_files_done = event.files_done
            self.stream.write(f"{event.repo_id}: {event.files_done}/{event.files_total} files, "
                              f"{format_bytes(event.bytes_done)} of {format_bytes(event.bytes_total)}\n")
            self.stream.flush()


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"
