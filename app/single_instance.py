"""One Potluck per user and data dir: a second launch asks the first to show itself, then exits."""

from __future__ import annotations

import getpass
import hashlib
from pathlib import Path

from PySide6.QtCore import QObject, Signal
from PySide6.QtNetwork import QLocalServer, QLocalSocket


def server_name(data_dir: str | Path) -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "user"
    digest = hashlib.sha256(f"{user}|{Path(data_dir).resolve()}".encode()).hexdigest()[:16]
    return f"potluck-{digest}"


class SingleInstance(QObject):
    activated = Signal()  # another launch asked this one to show itself

    def __init__(self, data_dir: str | Path, parent: QObject | None = None):
        super().__init__(parent)
        self.name = server_name(data_dir)
        self.server: QLocalServer | None = None

    def notify_running(self, timeout_ms: int = 1000) -> bool:
        """True if another instance runs (and was asked to show itself)."""
        socket = QLocalSocket()
        socket.connectToServer(self.name)
        if not socket.waitForConnected(timeout_ms):
            return False
        socket.write(b"show\n")
        socket.flush()
        socket.waitForBytesWritten(timeout_ms)
        socket.disconnectFromServer()
        return True

    def listen(self) -> bool:
        self.server = QLocalServer(self)
        self.server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not self.server.listen(self.name):
            QLocalServer.removeServer(self.name)  # left behind by a crash: nobody answered on it
            if not self.server.listen(self.name):
                return False
        self.server.newConnection.connect(self._connection)
        return True

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None

    def _connection(self) -> None:
        while self.server is not None and self.server.hasPendingConnections():
            socket = self.server.nextPendingConnection()
            # the other launch writes 5 bytes at once: a short wait here beats tracking the socket
            if socket.bytesAvailable() or socket.waitForReadyRead(500):
                if b"show" in bytes(socket.readAll()):
                    self.activated.emit()
            socket.abort()
