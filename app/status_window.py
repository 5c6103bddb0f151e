"""The status window: this computer's measured hardware, the layers it serves, what it has
served, and a picture of the swarm: every node a bar over the model's layers."""

from __future__ import annotations

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QPainter, QPen
from PySide6.QtWidgets import (QApplication, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                               QSizePolicy, QVBoxLayout, QWidget)

from app.icons import COLORS, TITLES, app_icon
from app.status_model import NodeStatus, SwarmPicture, hardware_lines, model_title, swarm_picture

ROW_H, GAP, LABEL_W, RULER_H = 22, 6, 210, 22
READY, LOADING, MINE, BOTTLENECK = QColor("#2e9e5b"), QColor("#e0a526"), QColor("#2f7fd8"), QColor("#d64541")


class SwarmPictureWidget(QWidget):
    """One row per node: its assigned layers as a bar over 0..L (blue: this computer, green: other
    ready nodes, amber: loading). The top strip counts, per layer, the ready copies; the layers
    with the fewest copies (the bottleneck) are marked red."""

    def __init__(self):
        super().__init__()
        self.picture = SwarmPicture(0)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Minimum)

    def set_picture(self, picture: SwarmPicture) -> None:
        self.picture = picture
        self.updateGeometry()
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(560, RULER_H * 2 + GAP * 2 + max(len(self.picture.rows), 1) * (ROW_H + GAP))

    def minimumSizeHint(self) -> QSize:
        return QSize(360, self.sizeHint().height())

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pic = self.picture
        if not pic.num_layers:
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "Waiting for the swarm's first answer…")
            return
        left, width = LABEL_W, max(self.width() - LABEL_W - 10, 50)
        per_layer = width / pic.num_layers
        small = QFont(self.font())
        small.setPointSizeF(max(small.pointSizeF() * 0.85, 7))
        p.setFont(small)
        # the ruler: ready copies per layer, the bottleneck in red
        bottleneck = set(pic.bottleneck)
        most = max(max(pic.replicas, default=0), 1)
        y = 0
        p.drawText(QRectF(0, y, LABEL_W - 8, RULER_H), Qt.AlignmentFlag.AlignVCenter, "copies per layer")
        for i, copies in enumerate(pic.replicas):
            x = left + i * per_layer
            color = BOTTLENECK if i in bottleneck and len(bottleneck) < pic.num_layers or copies == 0 else READY
            color = QColor(color)
            color.setAlphaF(0.25 + 0.75 * copies / most if copies else 1.0)
            p.fillRect(QRectF(x + 0.5, y + 2, max(per_layer - 1, 1), RULER_H - 4), color)
        y += RULER_H + GAP
        # layer numbers
        step = max(1, round(pic.num_layers / max(width / 40, 1)))
        p.setPen(QPen(self.palette().text().color()))
        for i in range(0, pic.num_layers, step):
            p.drawText(QRectF(left + i * per_layer, y, 40, RULER_H), Qt.AlignmentFlag.AlignLeft, str(i))
        y += RULER_H
        # one bar per node
        for row in pic.rows:
            p.setPen(QPen(self.palette().text().color()))
            p.drawText(QRectF(0, y, LABEL_W - 8, ROW_H), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                       _elide(row.label, 30))
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(QBrush(QColor(0, 0, 0, 18)))
            p.drawRoundedRect(QRectF(left, y + 3, width, ROW_H - 6), 3, 3)
            if row.assigned:
                start, end = row.assigned
                color = MINE if row.this_computer else READY
                if not row.ready:
                    color = LOADING
                p.setBrush(QBrush(color))
                p.drawRoundedRect(QRectF(left + start * per_layer, y + 3, (end - start) * per_layer, ROW_H - 6), 3, 3)
                p.setPen(QPen(QColor("white")))
                text = f"{start}-{end - 1}" + ("" if row.ready else " loading") + (f" · {row.load:.0%} busy"
                                                                                   if row.load >= 0.01 else "")
                p.drawText(QRectF(left + start * per_layer + 4, y, (end - start) * per_layer - 8, ROW_H),
                           Qt.AlignmentFlag.AlignVCenter, text)
            else:
                p.setPen(QPen(self.palette().mid().color()))
                p.drawText(QRectF(left + 4, y, width, ROW_H), Qt.AlignmentFlag.AlignVCenter,
                           "client only (serves no layers)" if not row.serves else "waiting for layers")
            y += ROW_H + GAP
        p.end()


def _elide(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


class StatusWindow(QWidget):
    def __init__(self):
        super().__init__()
        self.setWindowTitle("Potluck status")
        self.setWindowIcon(app_icon())
        self.state = QLabel()
        self.state.setStyleSheet("font-weight: bold")
        self.headline = QLabel(wordWrap=True)
        self.detail = QLabel(wordWrap=True)

        self.hardware_box = QGroupBox("This computer")
        self.hardware = QFormLayout(self.hardware_box)
        self.shard = QLabel("—")
        self.served = QLabel("—")

        self.address = QLineEdit(readOnly=True)
        self.address.setPlaceholderText("(the node is not running)")
        copy = QPushButton("Copy")
        copy.clicked.connect(lambda: QApplication.clipboard().setText(self.address.text()))
        invite = QHBoxLayout()
        invite.addWidget(self.address, 1)
        invite.addWidget(copy)

        swarm_box = QGroupBox("The swarm")
        self.summary = QLabel(wordWrap=True)
        self.picture = SwarmPictureWidget()
        swarm_layout = QVBoxLayout(swarm_box)
        swarm_layout.addWidget(self.summary)
        swarm_layout.addWidget(self.picture)
        legend = QLabel(f"<span style='color:{MINE.name()}'>■</span> this computer &nbsp; "
                        f"<span style='color:{READY.name()}'>■</span> other computers &nbsp; "
                        f"<span style='color:{LOADING.name()}'>■</span> loading &nbsp; "
                        f"<span style='color:{BOTTLENECK.name()}'>■</span> fewest copies (bottleneck)")
        swarm_layout.addWidget(legend)

        layout = QVBoxLayout(self)
        layout.addWidget(self.state)
        layout.addWidget(self.headline)
        layout.addWidget(self.detail)
        layout.addWidget(self.hardware_box)
        form = QFormLayout()
        form.addRow("Layers served", self.shard)
        form.addRow("Served so far", self.served)
        form.addRow("Swarm address", invite)
        layout.addLayout(form)
        layout.addWidget(swarm_box, 1)
        self.resize(680, 560)

    def show_status(self, status: NodeStatus) -> None:
        color = COLORS.get(status.state, "#777")
        self.state.setText(f"<span style='color:{color}'>●</span> {TITLES.get(status.state, status.state)}")
        self.headline.setText(status.headline)
        self.detail.setText(status.detail)
        self.detail.setVisible(bool(status.detail))
        of = f" of {status.num_layers}" if status.num_layers else ""
        if status.serving:
            self.shard.setText(f"layers {status.serving[0]}-{status.serving[1] - 1}{of} of "
                               f"{model_title(status.model, status.demo)}")
        elif status.assigned:
            self.shard.setText(f"loading layers {status.assigned[0]}-{status.assigned[1] - 1}{of}")
        else:
            self.shard.setText("none" + (" (not contributing)" if not status.serves else ""))
        self.served.setText(f"{status.served_requests:,} request{'s' if status.served_requests != 1 else ''}, "
                            f"{status.served_tokens:,} tokens")

    def show_address(self, multiaddr: str) -> None:
        self.address.setText(multiaddr)
        self.address.setCursorPosition(0)
        self.address.setToolTip("Others join this swarm with this address (Settings → Join a swarm). It works "
                                "from other computers only if the address is reachable from them: set "
                                "\"Peer-to-peer address\" in Settings to this computer's network address.")

    def show_swarm(self, swarm: dict | None) -> None:
        picture = swarm_picture(swarm)
        self.picture.set_picture(picture)
        while self.hardware.rowCount():
            self.hardware.removeRow(0)
        for label, value in hardware_lines(swarm) or [("Hardware", "measuring…")]:
            self.hardware.addRow(label, QLabel(value))
        if swarm is None:
            self.summary.setText("The swarm cannot be seen right now.")
            return
        servers = sum(1 for r in picture.rows if r.serves)
        words = (f"{len(picture.rows)} computer{'s' if len(picture.rows) != 1 else ''} in the swarm, "
                 f"{servers} serving layers of {model_title(str(swarm.get('model', '')))} "
                 f"({picture.num_layers} layers). ")
        if picture.covered:
            low = min(picture.replicas)
            words += (f"Every layer is served; the fewest copies of any layer: {low} "
                      f"(layers {_spans(picture.bottleneck)}).")
        else:
            missing = [i for i, n in enumerate(picture.replicas) if n == 0]
            words += f"Layers {_spans(missing)} are not served yet: chat waits for them."
        self.summary.setText(words)

    def raise_to_front(self) -> None:
        self.show()
        self.raise_()
        self.activateWindow()


def _spans(layers: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    out, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            out.append(f"{start}-{layer}" if layer != start else str(layer))
            start = None
    return ", ".join(out)
