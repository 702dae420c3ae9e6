"""The checkpoint last used successfully, remembered across restarts in ``<data-dir>/last-checkpoint.json``.

Its own small file, written atomically, so a restart starts with the model the user last worked with rather
than the alphabetically first file (which may be broken, or an inpainting model txt2img refuses).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from webui.atomic import atomic_write_text
from webui.types import CheckpointInfo

log = logging.getLogger(__name__)

_MAX_NAME = 4096  # a relative file name; anything longer is not ours


class LastCheckpoint:
    """Reads the remembered name once; ``remember()`` rewrites the file only when the name changes."""

    def __init__(self, path: Path):
        self._path = path
        self._lock = threading.Lock()
        self._name = self._read()

    @property
    def name(self) -> str | None:
        """The checkpoint's name relative to the checkpoints folder (e.g. ``sub/v1-5.safetensors``), if any."""
        with self._lock:
            return self._name

    def _read(self) -> str | None:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("Ignoring %s (%s): the default checkpoint is chosen afresh", self._path, exc)
            return None
        name = data.get("name") if isinstance(data, dict) else None
        return name if isinstance(name, str) and 0 < len(name) <= _MAX_NAME else None

    def remember(self, info: CheckpointInfo) -> None:
        """Persist ``info`` as the last used checkpoint. A failed write (read-only or full disk) is logged, never
        raised: it must not fail the job that used the model."""
        with self._lock:
            if info.name == self._name:
                return
            try:
                atomic_write_text(self._path, json.dumps({"name": info.name, "title": info.title}, indent=1))
            except OSError as exc:
                log.warning("Could not remember the last checkpoint in %s: %s", self._path, exc.strerror or exc)
                return
            self._name = info.name
