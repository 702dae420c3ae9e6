"""Saving generated images the way A1111 users expect to find them.

``outputs/txt2img-images/YYYY-MM-DD/NNNNN-SEED.png`` with the infotext in the PNG ``parameters`` chunk. Files are
written to a temporary name in the same folder and renamed, so a crash or a full disk never leaves half an image.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import tempfile
import threading
from pathlib import Path

from PIL import Image, PngImagePlugin

_NUMBERED = re.compile(r"^(\d{5,})-")


class ImageStore:
    def __init__(self, outputs_dir: Path, today=dt.date.today):
        self._root = outputs_dir
        self._today = today
        self._lock = threading.Lock()  # numbering must not race between concurrent savers

    def folder(self, category: str) -> Path:
        return self._root / f"{category}-images" / self._today().isoformat()

    def save(self, image: Image.Image, category: str, seed: int, infotext: str, label: str | None = None) -> Path:
        """Save as ``NNNNN-SEED.png``, or ``NNNNN-LABEL.png`` for outputs without a seed (style transfer)."""
        folder = self.folder(category)
        folder.mkdir(parents=True, exist_ok=True)
        pnginfo = PngImagePlugin.PngInfo()
        pnginfo.add_text("parameters", infotext)
        with self._lock:
            suffix = re.sub(r"[^\w.-]+", "_", label) if label else str(seed)
            path = folder / f"{self._next_number(folder):05d}-{suffix}.png"
            write_png_atomic(image, path, pnginfo)
        return path

    @staticmethod
    def _next_number(folder: Path) -> int:
        numbers = [int(m.group(1)) for name in os.listdir(folder) if (m := _NUMBERED.match(name))]
        return max(numbers, default=-1) + 1


def write_png_atomic(image: Image.Image, path: Path, pnginfo: PngImagePlugin.PngInfo | None = None) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as fh:
            image.save(fh, format="PNG", pnginfo=pnginfo)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
