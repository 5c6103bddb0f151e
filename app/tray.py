"""The tray icon and its menu. It shows a NodeStatus and emits what the user picked."""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from app.icons import state_icon
from app.status_model import NodeStatus


class Tray(QObject):
    contribute_toggled = Signal(bool)
    open_chat = Signal()
    open_status = Signal()
    open_settings = Signal()
    quit_requested = Signal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.state = ""
        self.icon = QSystemTrayIcon()
        self.menu = QMenu()
        self.headline = self.menu.addAction("Starting Potluck…")
        self.headline.setEnabled(False)
        self.menu.addSeparator()
        self.contribute = QAction("Contribute compute", self.menu, checkable=True)
        self.contribute.toggled.connect(self.contribute_toggled)
        self.menu.addAction(self.contribute)
        self.menu.addSeparator()
        self.menu.addAction("Open chat").triggered.connect(self.open_chat)
        self.menu.addAction("Status").triggered.connect(self.open_status)
        self.menu.addAction("Settings…").triggered.connect(self.open_settings)
        self.menu.addSeparator()
        self.menu.addAction("Quit Potluck").triggered.connect(self.quit_requested)
        self.icon.setContextMenu(self.menu)
        self.icon.activated.connect(self._activated)
        self.show_status(NodeStatus("starting", "Starting Potluck…"))

    def show(self) -> None:
        self.icon.show()

    def hide(self) -> None:
        self.icon.hide()

    def show_status(self, status: NodeStatus) -> None:
        if status.state != self.state:
            self.state = status.state
            self.icon.setIcon(state_icon(status.state))
        tooltip = f"Potluck — {status.headline}"
        self.icon.setToolTip(tooltip)
        self.headline.setText(status.headline if len(status.headline) < 70 else status.headline[:67] + "…")

    def set_contribute(self, on: bool) -> None:
        if self.contribute.isChecked() != on:
            self.contribute.blockSignals(True)
            self.contribute.setChecked(on)
            self.contribute.blockSignals(False)

    def notify(self, message: str) -> None:
        if self.icon.isVisible() and self.icon.supportsMessages():
            self.icon.showMessage("Potluck", message, QSystemTrayIcon.MessageIcon.Information, 8000)

    def _activated(self, reason) -> None:
        if reason in (QSystemTrayIcon.ActivationReason.Trigger, QSystemTrayIcon.ActivationReason.DoubleClick):
            self.open_chat.emit()
