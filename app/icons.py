"""The app's icons, drawn with QPainter: one per state, distinct in colour and in shape (so that
they read in a monochrome tray too). A pot seen from the side, and a badge for the state."""

from __future__ import annotations

from functools import lru_cache

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QIcon, QPainter, QPainterPath, QPen, QPixmap

from app.status_model import BUSY, CONTRIBUTING, ERROR, IDLE, STARTING

COLORS = {IDLE: "#7a7f87", STARTING: "#a0a4aa", CONTRIBUTING: "#2e9e5b", BUSY: "#2f7fd8", ERROR: "#d64541"}
TITLES = {IDLE: "Not contributing", STARTING: "Starting", CONTRIBUTING: "Contributing", BUSY: "Busy serving",
          ERROR: "Needs attention"}


def state_pixmap(state: str, size: int = 64) -> QPixmap:
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    p = QPainter(pixmap)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.scale(size / 64, size / 64)
    color = QColor(COLORS.get(state, COLORS[IDLE]))
    # the pot
    body = QPainterPath()
    body.moveTo(10, 26)
    body.lineTo(54, 26)
    body.cubicTo(54, 46, 46, 56, 32, 56)
    body.cubicTo(18, 56, 10, 46, 10, 26)
    p.setPen(QPen(color.darker(130), 2.5))
    p.setBrush(QBrush(color))
    p.drawPath(body)
    p.drawRoundedRect(QRectF(6, 21, 52, 6), 3, 3)  # the rim
    p.drawRoundedRect(QRectF(26, 14, 12, 6), 2, 2)  # the lid's knob
    # the badge
    p.setPen(QPen(QColor("white"), 3.5, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
    p.setBrush(Qt.BrushStyle.NoBrush)
    if state == CONTRIBUTING:  # steam: sharing heat with the table
        for x in (22, 32, 42):
            wave = QPainterPath(QPointF(x, 52))
            wave.cubicTo(x - 4, 46, x + 4, 40, x, 34)
            p.drawPath(wave)
    elif state == BUSY:  # three bubbles: working
        p.setBrush(QBrush(QColor("white")))
        p.setPen(Qt.PenStyle.NoPen)
        for x in (21, 32, 43):
            p.drawEllipse(QPointF(x, 40), 4, 4)
    elif state == ERROR:  # an exclamation mark
        p.drawLine(QPointF(32, 32), QPointF(32, 44))
        p.setBrush(QBrush(QColor("white")))
        p.setPen(Qt.PenStyle.NoPen)
        p.drawEllipse(QPointF(32, 50), 2.5, 2.5)
    elif state == STARTING:  # an hourglass-like pair of dots
        p.setBrush(QBrush(QColor("white")))
        p.setPen(Qt.PenStyle.NoPen)
        p.drawEllipse(QPointF(26, 41), 3, 3)
        p.drawEllipse(QPointF(38, 41), 3, 3)
    else:  # idle: a flat line, a pot at rest
        p.drawLine(QPointF(22, 41), QPointF(42, 41))
    p.end()
    return pixmap


@lru_cache(maxsize=None)
def state_icon(state: str) -> QIcon:
    icon = QIcon()
    for size in (16, 22, 24, 32, 48, 64, 128):
        icon.addPixmap(state_pixmap(state, size))
    return icon


@lru_cache(maxsize=1)
def app_icon() -> QIcon:
    """The app's own icon (resources/icons/potluck.png, drawn by installers/draw_source_icon.py) for
    windows; the drawn "contributing" pot where it is not shipped."""
    try:
        from app.resources import ResourceError, icon_file

        icon = QIcon(str(icon_file()))
        if not icon.isNull():
            return icon
    except (ImportError, ResourceError, OSError):
        pass
    return state_icon(CONTRIBUTING)


def save_icons(folder: str, sizes=(16, 22, 32, 48, 64)) -> list[str]:
    """Write the tray's state icons as PNG files, tray-STATE-SIZE.png (for docs, or an installer
    that wants them). The app icon itself is resources/icons/potluck.png (installers/)."""
    from pathlib import Path

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for state in COLORS:
        for size in sizes:
            path = out / f"tray-{state}-{size}.png"
            state_pixmap(state, size).save(str(path))
            written.append(str(path))
    return written


if __name__ == "__main__":  # python -m app.icons OUT_DIR
    import os
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m app.icons OUT_DIR")
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtGui import QGuiApplication

    _app = QGuiApplication(sys.argv[:1])
    print("\n".join(save_icons(sys.argv[1])))
