"""Which extensions the user disabled, and each extension's settings values: small JSON files in the data dir."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from webui.atomic import atomic_write_bytes


class _JsonFile:
    def __init__(self, path: Path):
        self._path = path
        self._lock = threading.Lock()

    def read(self) -> dict:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # missing or damaged: defaults (a damaged file is replaced on the next write)
        return data if isinstance(data, dict) else {}

    def write(self, data: dict) -> None:
        atomic_write_bytes(self._path, json.dumps(data, indent=2, sort_keys=True).encode("utf-8"))


class EnabledState:
    """``<data dir>/extensions.json``: the names of disabled extensions (enabled is the default)."""

    def __init__(self, path: Path):
        self._file = _JsonFile(path)

    def disabled(self) -> set[str]:
        names = self._file.read().get("disabled", [])
        return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()

    def set_enabled(self, name: str, enabled: bool) -> None:
        with self._file._lock:
            disabled = self.disabled()
            (disabled.discard if enabled else disabled.add)(name)
            self._file.write({"disabled": sorted(disabled)})


class ExtensionSettings:
    """``<data dir>/extension-settings.json``: ``{extension: {key: value}}`` for the entries extensions declare."""

    def __init__(self, path: Path):
        self._file = _JsonFile(path)

    def values(self, extension: str) -> dict[str, Any]:
        data = self._file.read().get(extension, {})
        return data if isinstance(data, dict) else {}

    def set(self, extension: str, key: str, value: Any) -> None:
        with self._file._lock:
            data = self._file.read()
            section = data.get(extension) if isinstance(data.get(extension), dict) else {}
            section[key] = value
            data[extension] = section
            self._file.write(data)
