"""Runtime options as A1111's ``/sdapi/v1/options`` exposes them.

Only a few keys change behaviour here (checkpoint, clip skip); others are stored and echoed so clients that set
them keep working. Stored in ``config.json`` under the data dir, written atomically.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from webui.errors import InvalidRequest, ModelNotFound
from webui.models.manager import ModelManager
from webui.models.registry import atomic_write_text

DEFAULTS: dict[str, Any] = {
    "CLIP_stop_at_last_layers": 1,
    "samples_save": True,
    "samples_format": "png",
    "sd_vae": "Automatic",
}


class OptionsService:
    def __init__(self, config_file: Path, manager: ModelManager):
        self._file = config_file
        self._manager = manager
        self._lock = threading.Lock()
        self._values = {**DEFAULTS, **self._read()}

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self._file.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def get_all(self) -> dict[str, Any]:
        selected = self._manager.selected
        with self._lock:
            values = dict(self._values)
        values["sd_model_checkpoint"] = selected.title if selected else None
        return values

    @property
    def clip_skip(self) -> int:
        with self._lock:
            return int(self._values.get("CLIP_stop_at_last_layers", 1))

    def update(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Apply options; a model switch loads the model now so a bad file is reported to the caller."""
        changes = dict(changes)
        if "CLIP_stop_at_last_layers" in changes:
            value = changes["CLIP_stop_at_last_layers"]
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 12:
                raise InvalidRequest("CLIP_stop_at_last_layers", "must be an integer from 1 to 12")
        checkpoint = changes.pop("sd_model_checkpoint", None)
        if checkpoint is not None:
            if not isinstance(checkpoint, str):
                raise InvalidRequest("sd_model_checkpoint", "must be a checkpoint title")
            try:
                self._manager.select(checkpoint)
            except ModelNotFound as exc:
                raise InvalidRequest("sd_model_checkpoint", str(exc)) from None
        with self._lock:
            self._values.update(changes)
            persisted = {k: v for k, v in self._values.items()}
            atomic_write_text(self._file, json.dumps(persisted, indent=1))
        return self.get_all()
