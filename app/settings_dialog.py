"""The Settings dialog: which swarm (host one with a model, or join one by address), what this
computer lends, and how Potluck starts. It edits a copy of the preferences and emits the result."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QVBoxLayout,
)

from app.icons import app_icon
from app.settings import Preferences
from app.solo_backend import solo_model_problem

DEMO_CHOICE = "The demo model (small, offline)"


def catalog_choices() -> list[tuple[str, str]]:
    """(label, value) for the model picker: the demo model, then the catalog's models."""
    choices = [(DEMO_CHOICE, "")]
    try:
        from engine.model.catalog import load_catalog

        for entry in load_catalog().entries:
            if entry.local_dir is None:
                choices.append((f"{entry.title} — {entry.description}", entry.name))
    except Exception:  # a broken catalog must not keep Settings from opening
        pass
    return choices


def problems(prefs: Preferences) -> list[str]:
    """What is wrong with these preferences, in plain words (empty: fine)."""
    out = []
    if prefs.solo_mode:
        problem = solo_model_problem(prefs.solo_model)
        if problem:
            out.append(problem)
    if prefs.swarm_mode == "join":
        address = prefs.join_address.strip()
        if not address:
            out.append("Enter the address of the swarm to join (the host's Status window shows it).")
        elif not address.startswith(("/ip4/", "/ip6/", "/dns")) or "/p2p/" not in address:
            out.append("The swarm address looks like /ip4/192.168.1.20/tcp/4281/p2p/12D3Koo… — copy it whole "
                       "from the host's Status window.")
    if prefs.listen.strip():
        host, _, port = prefs.listen.strip().rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            out.append("The peer-to-peer address must look like 192.168.1.20:4281 (address:port).")
    return out


class SettingsDialog(QDialog):
    applied = Signal(object)  # Preferences

    def __init__(self, prefs: Preferences, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Potluck settings")
        self.setWindowIcon(app_icon())
        self._prefs = prefs

        swarm = QGroupBox("Swarm")
        self.host_radio = QRadioButton("Host a swarm on this computer")
        self.join_radio = QRadioButton("Join a swarm")
        group = QButtonGroup(self)
        group.addButton(self.host_radio)
        group.addButton(self.join_radio)
        self.model = QComboBox(editable=True)
        self.model.setToolTip("A model from the list, a Hugging Face id, or a folder with a checkpoint.")
        for label, value in catalog_choices():
            self.model.addItem(label, value)
        browse = QPushButton("Folder…")
        browse.clicked.connect(self._browse)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model, 1)
        model_row.addWidget(browse)
        self.join_address = QLineEdit()
        self.join_address.setPlaceholderText("/ip4/192.168.1.20/tcp/4281/p2p/12D3Koo…")
        self.listen = QLineEdit()
        self.listen.setPlaceholderText("this computer only (e.g. 192.168.1.20:4281 to let others in)")
        form = QFormLayout(swarm)
        form.addRow(self.host_radio)
        form.addRow("Model", model_row)
        form.addRow(self.join_radio)
        form.addRow("Address", self.join_address)
        form.addRow("Peer-to-peer address", self.listen)
        self.host_radio.toggled.connect(self._mode_changed)

        lend = QGroupBox("What this computer lends")
        self.contribute = QCheckBox("Contribute compute (serve layers of the model for the swarm)")
        self.memory = QDoubleSpinBox(minimum=0.0, maximum=4096.0, singleStep=1.0, decimals=1, suffix=" GB")
        self.memory.setSpecialValueText("no limit (80% of free memory)")
        self.only_idle = QCheckBox("Only when the computer is idle")
        self.idle_minutes = QSpinBox(minimum=1, maximum=240, suffix=" min without keyboard or mouse")
        lend_form = QFormLayout(lend)
        lend_form.addRow(self.contribute)
        lend_form.addRow("GPU memory cap", self.memory)
        lend_form.addRow(self.only_idle)
        lend_form.addRow("Idle after", self.idle_minutes)

        solo = QGroupBox("Solo mode")
        self.solo_mode = QCheckBox("Solo mode: chat with a model file on this computer")
        self.solo_mode.setToolTip("The chat answers from a GGUF model file with llama.cpp, without the swarm. "
                                  "Contributing compute to the swarm goes on as set above.")
        self.solo_model = QLineEdit()
        self.solo_model.setPlaceholderText("a model file in GGUF format, e.g. Qwen3-8B-Q4_K_M.gguf")
        solo_browse = QPushButton("Choose file…")
        solo_browse.clicked.connect(self._browse_solo)
        solo_row = QHBoxLayout()
        solo_row.addWidget(self.solo_model, 1)
        solo_row.addWidget(solo_browse)
        solo_note = QLabel("Works offline and keeps your conversation on this computer. Needs enough memory "
                           "for the whole model.", wordWrap=True)
        solo_note.setStyleSheet("color: palette(mid)")
        solo_form = QFormLayout(solo)
        solo_form.addRow(self.solo_mode)
        solo_form.addRow("Model file", solo_row)
        solo_form.addRow(solo_note)

        desktop = QGroupBox("This computer")
        self.start_at_login = QCheckBox("Start Potluck when I log in")
        self.lan_discovery = QCheckBox("Discover Potluck computers on the local network (mDNS)")
        desktop_layout = QVBoxLayout(desktop)
        desktop_layout.addWidget(self.start_at_login)
        desktop_layout.addWidget(self.lan_discovery)

        self.error = QLabel(wordWrap=True)
        self.error.setStyleSheet("color: #b3261e")
        self.error.hide()
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self._save)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        for w in (swarm, lend, solo, desktop, self.error, buttons):
            layout.addWidget(w)
        self.load(prefs)

    def load(self, prefs: Preferences) -> None:
        self._prefs = prefs
        (self.join_radio if prefs.swarm_mode == "join" else self.host_radio).setChecked(True)
        index = self.model.findData(prefs.host_model)
        if index >= 0:
            self.model.setCurrentIndex(index)
        else:
            self.model.setEditText(prefs.host_model)
        self.join_address.setText(prefs.join_address)
        self.listen.setText(prefs.listen)
        self.contribute.setChecked(prefs.contribute)
        self.memory.setValue(prefs.max_memory_gb)
        self.only_idle.setChecked(prefs.contribute_only_when_idle)
        self.idle_minutes.setValue(prefs.idle_minutes)
        self.start_at_login.setChecked(prefs.start_at_login)
        self.lan_discovery.setChecked(prefs.lan_discovery)
        self.solo_mode.setChecked(prefs.solo_mode)
        self.solo_model.setText(prefs.solo_model)
        self._mode_changed()

    def preferences(self) -> Preferences:
        text = self.model.currentText().strip()
        data = self.model.currentData()
        model = data if data is not None and self.model.itemText(self.model.currentIndex()) == text else text
        if text == DEMO_CHOICE:
            model = ""
        return self._prefs.with_(
            swarm_mode="join" if self.join_radio.isChecked() else "host", host_model=model or "",
            join_address=self.join_address.text().strip(), listen=self.listen.text().strip(),
            contribute=self.contribute.isChecked(), max_memory_gb=round(self.memory.value(), 1),
            contribute_only_when_idle=self.only_idle.isChecked(), idle_minutes=self.idle_minutes.value(),
            start_at_login=self.start_at_login.isChecked(), lan_discovery=self.lan_discovery.isChecked(),
            solo_mode=self.solo_mode.isChecked(), solo_model=self.solo_model.text().strip())

    def _save(self) -> None:
        prefs = self.preferences()
        found = problems(prefs)
        if found:
            self.error.setText("\n".join(found))
            self.error.show()
            return
        self.error.hide()
        self.applied.emit(prefs)
        self.accept()

    def _mode_changed(self, *_) -> None:
        hosting = self.host_radio.isChecked()
        self.model.setEnabled(hosting)
        self.join_address.setEnabled(not hosting)

    def _browse_solo(self) -> None:
        start = self.solo_model.text().strip()
        path, _ = QFileDialog.getOpenFileName(self, "Choose a model file for solo mode", start,
                                              "GGUF model files (*.gguf);;All files (*)")
        if path:
            self.solo_model.setText(path)
            self.solo_mode.setChecked(True)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a model folder (with config.json)")
        if folder:
            self.model.setEditText(folder)
