"""The chat window: it displays a conversation (Markdown) and emits what the user asks for.

Enter sends, Shift+Enter starts a new line. The system prompt and the sampling settings sit in a
collapsed "Options" panel. The window has no logic of its own: ChatSession streams the answers.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import (
    QColor,
    QDesktopServices,
    QKeyEvent,
    QTextBlockFormat,
    QTextCursor,
    QTextFormat,
)
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.chat_backend import ChatOptions
from app.conversation import LINK_SCHEME
from app.icons import app_icon

DEMO_NOTE = ("Demo model: it writes English-looking sentences, it is not an assistant. To chat with a real "
             "model, open Settings and join a swarm or host a bigger model.")
CODE_BACKGROUND = QColor("#f0f1f3")


class MessageEdit(QPlainTextEdit):
    """The message box: Enter submits, Shift+Enter inserts a line break."""

    submitted = Signal()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and not (
                event.modifiers() & Qt.KeyboardModifier.ShiftModifier):
            self.submitted.emit()
            return
        super().keyPressEvent(event)


class ChatWindow(QWidget):
    send_requested = Signal(str, object)  # the message, ChatOptions
    stop_requested = Signal()
    new_chat_requested = Signal()
    options_changed = Signal(object)  # ChatOptions, to remember them
    action_requested = Signal(str)  # a potluck: link under a problem was clicked ("solo", "settings")

    def __init__(self, options: ChatOptions | None = None):
        super().__init__()
        self.setWindowTitle("Potluck chat")
        self.setWindowIcon(app_icon())
        self.busy = False

        self.source = QLabel("Answers come from the swarm.")
        self.source.setStyleSheet("color: palette(mid)")
        self.demo_note = QLabel(DEMO_NOTE, wordWrap=True)
        self.demo_note.setStyleSheet("background: #fff4ce; color: #5c4400; border: 1px solid #e6c200; "
                                     "border-radius: 4px; padding: 6px")
        self.demo_note.hide()

        self.transcript = QTextBrowser()
        self.transcript.setOpenLinks(False)  # web links open in the browser, potluck: links go to the app
        self.transcript.anchorClicked.connect(self._link_clicked)
        self.transcript.setPlaceholderText("Ask the swarm anything. Enter sends, Shift+Enter starts a new line.")

        self.options_button = QToolButton(text="Options", checkable=True)
        self.options_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.options_button.setArrowType(Qt.ArrowType.RightArrow)
        self.options_button.toggled.connect(self._toggle_options)
        self.options_panel = QWidget()
        self.system_prompt = QPlainTextEdit()
        self.system_prompt.setPlaceholderText("Optional: how the model should behave, e.g. \"Answer briefly.\"")
        self.system_prompt.setMaximumHeight(70)
        self.temperature = QDoubleSpinBox(minimum=0.0, maximum=2.0, singleStep=0.1, decimals=2)
        self.temperature.setToolTip("0 always picks the likeliest word; higher values give more varied answers.")
        self.top_p = QDoubleSpinBox(minimum=0.05, maximum=1.0, singleStep=0.05, decimals=2)
        self.top_p.setToolTip("Only words within this share of probability are considered (1 = all).")
        self.max_tokens = QSpinBox(minimum=1, maximum=32768, singleStep=64)
        self.max_tokens.setToolTip("The longest answer, in tokens (about ¾ of a word each).")
        form = QFormLayout(self.options_panel)
        form.addRow("System prompt", self.system_prompt)
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("Max length (tokens)", self.max_tokens)
        self.options_panel.hide()
        self.set_options(options or ChatOptions())
        for spin in (self.temperature, self.top_p, self.max_tokens):
            spin.valueChanged.connect(self._options_edited)
        self.system_prompt.textChanged.connect(self._options_edited)

        self.input = MessageEdit()
        self.input.setPlaceholderText("Write a message…")
        self.input.setMaximumHeight(90)
        self.input.submitted.connect(self._send)
        self.send_button = QPushButton("Send")
        self.send_button.setDefault(True)
        self.send_button.clicked.connect(self._send)
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop_requested)
        self.new_button = QPushButton("New chat")
        self.new_button.clicked.connect(self.new_chat_requested)

        top = QHBoxLayout()
        top.addWidget(self.source, 1)
        top.addWidget(self.new_button)
        buttons = QVBoxLayout()
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.stop_button)
        bottom = QHBoxLayout()
        bottom.addWidget(self.input, 1)
        bottom.addLayout(buttons)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.demo_note)
        layout.addWidget(self.transcript, 1)
        layout.addWidget(self.options_button, 0, Qt.AlignmentFlag.AlignLeft)
        layout.addWidget(self.options_panel)
        layout.addLayout(bottom)
        self.resize(720, 640)

    # ---- what the app shows ----

    def render(self, markdown: str) -> None:
        bar = self.transcript.verticalScrollBar()
        at_bottom, old = bar.value() >= bar.maximum() - 8, bar.value()
        self.transcript.setMarkdown(markdown)
        _style_code_blocks(self.transcript)
        bar.setValue(bar.maximum() if at_bottom else old)

    def set_busy(self, busy: bool) -> None:
        self.busy = busy
        self.send_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)

    def set_demo(self, demo: bool) -> None:
        self.demo_note.setVisible(demo)

    def set_source(self, text: str, solo: bool = False) -> None:
        """Where answers come from: the swarm, or (solo mode) a model file on this computer."""
        self.source.setText(text)
        self.transcript.setPlaceholderText(
            ("Ask the model on this computer anything." if solo else "Ask the swarm anything.")
            + " Enter sends, Shift+Enter starts a new line.")

    def set_options(self, options: ChatOptions) -> None:
        widgets = (self.system_prompt, self.temperature, self.top_p, self.max_tokens)
        for w in widgets:
            w.blockSignals(True)
        if self.system_prompt.toPlainText() != options.system_prompt:
            self.system_prompt.setPlainText(options.system_prompt)
        self.temperature.setValue(options.temperature)
        self.top_p.setValue(options.top_p)
        self.max_tokens.setValue(options.max_tokens)
        for w in widgets:
            w.blockSignals(False)

    def options(self) -> ChatOptions:
        return ChatOptions(system_prompt=self.system_prompt.toPlainText(), temperature=self.temperature.value(),
                           top_p=self.top_p.value(), max_tokens=self.max_tokens.value())

    def raise_to_front(self) -> None:
        self.show()
        self.setWindowState(self.windowState() & ~Qt.WindowState.WindowMinimized)
        self.raise_()
        self.activateWindow()
        self.input.setFocus()

    # ---- what the user does ----

    def _send(self) -> None:
        text = self.input.toPlainText().strip()
        if not text or self.busy:
            return
        self.input.clear()
        self.send_requested.emit(text, self.options())

    def _link_clicked(self, url: QUrl) -> None:
        if url.scheme() == LINK_SCHEME:
            self.action_requested.emit(url.path())
        elif url.scheme() in ("http", "https"):
            QDesktopServices.openUrl(url)

    def _toggle_options(self, shown: bool) -> None:
        self.options_panel.setVisible(shown)
        self.options_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    def _options_edited(self, *_) -> None:
        self.options_changed.emit(self.options())


def _style_code_blocks(browser: QTextBrowser) -> None:
    """Markdown code blocks come in a fixed-pitch font; give them a background so they stand out."""
    doc = browser.document()
    block = doc.begin()
    while block.isValid():
        fmt = block.blockFormat()
        if fmt.hasProperty(QTextFormat.Property.BlockCodeFence) or fmt.hasProperty(
                QTextFormat.Property.BlockCodeLanguage):
            cursor = QTextCursor(block)
            styled = QTextBlockFormat(fmt)
            styled.setBackground(CODE_BACKGROUND)
            cursor.setBlockFormat(styled)
        block = block.next()
