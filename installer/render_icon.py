"""Render installer/synermedgen.svg to a square PNG with Qt (QtSvg; no window, offscreen platform):
``python installer/render_icon.py OUT.png [SIZE]``. The spec runs it; the PNG becomes the bundle's
icon (Linux .desktop entry; PyInstaller turns it into .ico / .icns with Pillow on Windows / macOS)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QGuiApplication, QImage, QPainter  # noqa: E402
from PySide6.QtSvg import QSvgRenderer  # noqa: E402

SVG = Path(__file__).resolve().with_name("synermedgen.svg")


def render(out: Path, size: int = 256) -> Path:
    """Paint the SVG into a transparent ``size``² image and save it as PNG (needs a QGuiApplication)."""
    renderer = QSvgRenderer(str(SVG))
    if not renderer.isValid():
        raise ValueError(f"{SVG}: not a valid SVG")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    renderer.render(painter)
    painter.end()
    out.parent.mkdir(parents=True, exist_ok=True)
    if not image.save(str(out), "PNG"):
        raise OSError(f"cannot write {out}")
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    application = QGuiApplication(sys.argv[:1])
    print(render(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) == 3 else 256))
