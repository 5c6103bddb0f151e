"""Draw Potluck's source icon, resources/icons/potluck.png (1024 x 1024, transparent corners).

A cooking pot on a warm tile; its steam rises as three connected dots: a swarm served from one pot.
The PNG is committed; every platform icon (.icns, .ico, PNG sizes) is made from it at build time by
installers/icons.py. Run this only to change the artwork:

    python installers/draw_source_icon.py [OUT.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

SIZE = 1024
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "resources" / "icons" / "potluck.png"

AMBER = "#FFB547"
CORAL = "#F2664B"
POT = "#2F2A4A"
POT_LIGHT = "#4A4370"
CREAM = "#FFF6E6"


def draw(out: Path = DEFAULT_OUT) -> Path:
    from PySide6.QtCore import QPointF, QRectF, Qt
    from PySide6.QtGui import (
        QBrush,
        QColor,
        QImage,
        QLinearGradient,
        QPainter,
        QPainterPath,
        QPen,
    )

    image = QImage(SIZE, SIZE, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    p = QPainter(image)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)

    # The tile: macOS-style margins (824 px body) so the icon sits well beside others.
    tile = QRectF(100, 100, 824, 824)
    gradient = QLinearGradient(tile.topLeft(), tile.bottomLeft())
    gradient.setColorAt(0.0, QColor(AMBER))
    gradient.setColorAt(1.0, QColor(CORAL))
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QBrush(gradient))
    p.drawRoundedRect(tile, 185, 185)

    # Steam: three wavy strands rising from the pot to three nodes linked like peers.
    nodes = [QPointF(372, 318), QPointF(512, 236), QPointF(652, 318)]
    p.setPen(QPen(QColor(CREAM), 22, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
    p.setBrush(Qt.BrushStyle.NoBrush)
    for a, b in ((0, 1), (1, 2)):
        p.drawLine(nodes[a], nodes[b])
    for node in nodes:
        strand = QPainterPath(QPointF(node.x(), 500))
        strand.cubicTo(node.x() - 46, 450, node.x() + 46, 410, node.x(), node.y() + 40)
        p.drawPath(strand)
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(QColor(CREAM))
    for node in nodes:
        p.drawEllipse(node, 50, 50)
    p.setBrush(QColor(CORAL))
    for node in nodes:
        p.drawEllipse(node, 20, 20)

    # The pot: handles, body with a rounded bottom, a light band, and the rim on top.
    p.setBrush(QColor(POT))
    p.drawRoundedRect(QRectF(196, 556, 110, 56), 28, 28)
    p.drawRoundedRect(QRectF(718, 556, 110, 56), 28, 28)
    body = QPainterPath()
    body.moveTo(262, 528)
    body.lineTo(762, 528)
    body.lineTo(762, 690)
    body.cubicTo(762, 790, 690, 826, 600, 826)
    body.lineTo(424, 826)
    body.cubicTo(334, 826, 262, 790, 262, 690)
    body.closeSubpath()
    p.drawPath(body)
    p.setBrush(QColor(POT_LIGHT))
    p.drawRoundedRect(QRectF(300, 600, 424, 34), 17, 17)
    p.setBrush(QColor(POT))
    p.drawRoundedRect(QRectF(226, 496, 572, 64), 32, 32)
    p.end()

    out.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(out), "PNG"):
        raise OSError(f"could not write {out}")
    return out


if __name__ == "__main__":
    print(draw(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT))
