"""Every platform's app icon, made from one source PNG (resources/icons/potluck.png).

Qt (already a dependency) reads the source and scales it; the two container formats are written
here because Qt writes only a single image per .ico and has no .icns writer in PySide6-Essentials.
Both formats are simple: a header, a table of entries, and PNG images as the entries' data.

- `<name>-<size>.png` for sizes 16 ... 1024 (Linux desktop icons, Briefcase's sized PNGs);
- `<name>.ico` (Windows): 16, 24, 32, 48, 64, 128 and 256 px PNG entries (Windows Vista and later);
- `<name>.icns` (macOS): the ic07-ic14 PNG entries (16 to 512 px at 1x and 2x) plus a TOC.
"""

from __future__ import annotations

import struct
from pathlib import Path

PNG_SIZES = (16, 24, 32, 48, 64, 128, 256, 512, 1024)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
# icns element type -> pixel size (the 2x types hold the Retina image of the half size).
ICNS_TYPES = {b"ic11": 32, b"ic12": 64, b"ic07": 128, b"ic13": 256, b"ic08": 256, b"ic14": 512, b"ic09": 512,
              b"ic10": 1024}
MIN_SOURCE_SIZE = 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class IconError(ValueError):
    pass


def write_icons(source: Path, out_dir: Path, name: str = "potluck") -> list[Path]:
    """Write all icon files for `source` into out_dir; returns the paths written."""
    pngs = scaled_pngs(source, sorted(set(PNG_SIZES) | set(ICO_SIZES) | set(ICNS_TYPES.values())))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for size in PNG_SIZES:
        written.append(_write(out_dir / f"{name}-{size}.png", pngs[size]))
    written.append(_write(out_dir / f"{name}.png", pngs[max(PNG_SIZES)]))
    written.append(_write(out_dir / f"{name}.ico", ico_bytes({s: pngs[s] for s in ICO_SIZES})))
    written.append(_write(out_dir / f"{name}.icns", icns_bytes(pngs)))
    return written


def scaled_pngs(source: Path, sizes) -> dict[int, bytes]:
    """PNG bytes of the source image scaled to each size (smooth, keeping transparency)."""
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
    from PySide6.QtGui import QImage

    image = QImage(str(source))
    if image.isNull():
        raise IconError(f"cannot read the icon source {source}: it must be a PNG image.")
    if image.width() != image.height() or image.width() < MIN_SOURCE_SIZE:
        raise IconError(f"the icon source {source} is {image.width()}x{image.height()} px; it must be square and "
                        f"at least {MIN_SOURCE_SIZE} px (redraw it with installers/draw_source_icon.py).")
    image = image.convertToFormat(QImage.Format.Format_ARGB32)
    result = {}
    for size in sizes:
        scaled = image if size == image.width() else image.scaled(
            size, size, Qt.AspectRatioMode.IgnoreAspectRatio, Qt.TransformationMode.SmoothTransformation)
        data = QByteArray()
        buffer = QBuffer(data)
        buffer.open(QIODevice.OpenModeFlag.WriteOnly)
        if not scaled.save(buffer, "PNG"):
            raise IconError(f"Qt could not encode a {size} px PNG of {source}.")
        buffer.close()
        result[size] = bytes(data.data())
    return result


def ico_bytes(pngs: dict[int, bytes]) -> bytes:
    """An .ico file whose entries are the given PNGs (size -> PNG bytes), smallest first."""
    sizes = sorted(pngs)
    if not sizes or sizes[-1] > 256:
        raise IconError(f"an .ico holds images of 1 to 256 px, not {sizes}")
    header = struct.pack("<HHH", 0, 1, len(sizes))  # reserved, type 1 = icon, count
    offset = len(header) + 16 * len(sizes)
    directory, payload = b"", b""
    for size in sizes:
        data = pngs[size]
        # width and height bytes: 0 means 256; no palette; 1 plane; 32 bits per pixel.
        directory += struct.pack("<BBBBHHII", size % 256, size % 256, 0, 0, 1, 32, len(data), offset)
        offset += len(data)
        payload += data
    return header + directory + payload


def icns_bytes(pngs: dict[int, bytes]) -> bytes:
    """An .icns file with the ic07-ic14 entries (PNG data) and a table of contents."""
    entries = [(kind, pngs[size]) for kind, size in ICNS_TYPES.items()]
    toc = b"TOC " + struct.pack(">I", 8 + 8 * len(entries))
    toc += b"".join(kind + struct.pack(">I", 8 + len(data)) for kind, data in entries)
    body = toc + b"".join(kind + struct.pack(">I", 8 + len(data)) + data for kind, data in entries)
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
