"""The window shown where there is no system tray: the tray's state and actions, in a window.
Closing it quits Potluck."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from app.icons import TITLES, state_pixmap
from app.status_model import NodeStatus


class MainWindow(QWidget):
    contribute_toggled = Signal(bool)
    open_chat = Signal()
    open_status = Signal()
    open_settings = Signal()
    quit_requested = Signal()

    def __init__(self):
        super().__init__()
        self.setWindowTitle("Potluck")
        self.state = ""
        self.icon = QLabel()
        self.title = QLabel()
        self.title.setStyleSheet("font-weight: bold; font-size: 14pt")
        self.headline = QLabel(wordWrap=True)
        self.detail = QLabel(wordWrap=True)
        self.detail.setStyleSheet("color: palette(mid)")
        self.contribute = QCheckBox("Contribute compute: share this computer with the swarm")
        self.contribute.toggled.connect(self.contribute_toggled)
        head = QHBoxLayout()
        head.addWidget(self.icon)
        words = QVBoxLayout()
        words.addWidget(self.title)
        words.addWidget(self.headline)
        head.addLayout(words, 1)
        buttons = QHBoxLayout()
        for text, signal in (("Open chat", self.open_chat), ("Status", self.open_status),
                             ("Settings…", self.open_settings), ("Quit", self.quit_requested)):
            button = QPushButton(text)
            button.clicked.connect(signal)
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(head)
        layout.addWidget(self.detail)
        layout.addWidget(self.contribute)
        layout.addStretch(1)
        layout.addLayout(buttons)
        self.resize(520, 220)
        self.show_status(NodeStatus("starting", "Starting Potluck…"))

    def show_status(self, status: NodeStatus) -> None:
        if status.state != self.state:
            self.state = status.state
            self.icon.setPixmap(state_pixmap(status.state, 48))
            self.title.setText(TITLES.get(status.state, "Potluck"))
        self.headline.setText(status.headline)
        self.detail.setText(status.detail)
        self.detail.setVisible(bool(status.detail))

    def set_contribute(self, on: bool) -> None:
        if self.contribute.isChecked() != on:
            self.contribute.blockSignals(True)
            self.contribute.setChecked(on)
            self.contribute.blockSignals(False)

    def closeEvent(self, event) -> None:
        event.accept()
        self.quit_requested.emit()

    def raise_to_front(self) -> None:
        self.show()
        self.setWindowState(self.windowState() & ~Qt.WindowState.WindowMinimized)
        self.raise_()
        self.activateWindow()
