"""Face restorer files (GFPGAN in ``models/GFPGAN``, CodeFormer in ``models/Codeformer``): found and listed.

GFPGAN and CodeFormer restore aligned 512x512 face crops. A1111 first finds and aligns each face with facexlib's
detector, restores the crops and pastes them back; run on a whole photo instead, they paint a face over the
entire image. This server has no face detector, so it lists the restorer files it finds (as
``/sdapi/v1/face-restorers`` does in A1111) but refuses to apply them, with a message saying what is missing,
rather than return a damaged image.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from webui.models.folder_scan import ModelFolder

# A1111's names and folders (modules/gfpgan_model.py, modules/codeformer_model.py).
RESTORER_FOLDERS = {"GFPGAN": "GFPGAN", "CodeFormer": "Codeformer"}
RESTORER_SUFFIXES = (".safetensors", ".pth", ".pt")


@dataclass(frozen=True)
class FaceRestorerFile:
    name: str   # "GFPGAN" or "CodeFormer": what A1111 lists
    path: Path


class FaceRestorerRegistry:
    def __init__(self, models_dir: Path, *, allow_external_links: bool = False):
        self._folders = {name: ModelFolder(models_dir / folder, allow_external_links=allow_external_links,
                                           min_size=64)
                         for name, folder in RESTORER_FOLDERS.items()}
        self._lock = threading.Lock()
        self._items: list[FaceRestorerFile] = []

    @property
    def directories(self) -> dict[str, Path]:
        return {name: folder.root for name, folder in self._folders.items()}

    def refresh(self) -> list[FaceRestorerFile]:
        items = [FaceRestorerFile(name, path) for name, folder in self._folders.items()
                 for path in folder.scan(RESTORER_SUFFIXES).files]
        with self._lock:
            self._items = items
        return list(items)

    def list(self) -> list[FaceRestorerFile]:
        with self._lock:
            return list(self._items)

    def unavailable_reason(self) -> str:
        """Why face restoration cannot run here (always: there is no face detector)."""
        found = sorted({item.name for item in self.list()})
        have = f"{' and '.join(found)} weights are present, but " if found else \
            "no GFPGAN or CodeFormer weights are installed, and "
        return (f"face restoration is not available: {have}this server has no face detector to find and align "
                "the faces first (A1111 uses facexlib); send 0")
