"""Saving generated images the way A1111 users expect to find them.

``outputs/txt2img-images/YYYY-MM-DD/NNNNN-SEED.png``, holding the final PNG bytes made by
``webui.provenance.encode.finish_png`` (infotext, AI marker, watermark, C2PA manifest). Files are written to a
temporary name in the same folder and renamed, so a crash or a full disk never leaves half an image.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import threading
from pathlib import Path

from webui.atomic import atomic_write_bytes, remove_stale_temp_files

_NUMBERED = re.compile(r"^(\d{5,})-")


class ImageStore:
    def __init__(self, outputs_dir: Path, today=dt.date.today):
        self._root = outputs_dir
        self._today = today
        self._lock = threading.Lock()  # numbering must not race between concurrent savers
        self._swept: set[Path] = set()  # folders already cleared of temp files a killed process left

    @property
    def root(self) -> Path:
        """The outputs folder everything is saved under."""
        return self._root

    def folder(self, category: str) -> Path:
        return self._root / f"{category}-images" / self._today().isoformat()

    def save(self, png: bytes, category: str, seed: int, label: str | None = None) -> Path:
        """Save finished PNG bytes as ``NNNNN-SEED.png``, or ``NNNNN-LABEL.png`` for outputs without a seed
        (style transfer). The bytes are written as given: re-encoding would drop the signed C2PA manifest."""
        folder = self.folder(category)
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if folder not in self._swept:
                remove_stale_temp_files(folder)
                self._swept.add(folder)
            suffix = re.sub(r"[^\w.-]+", "_", label) if label else str(seed)
            path = folder / f"{self._next_number(folder):05d}-{suffix}.png"
            atomic_write_bytes(path, png)
        return path

    @staticmethod
    def _next_number(folder: Path) -> int:
        numbers = [int(m.group(1)) for name in os.listdir(folder) if (m := _NUMBERED.match(name))]
        return max(numbers, default=-1) + 1
