"""The checkpoint registry: which models exist on disk, their A1111 titles and hashes.

Hashing a 2-7 GB file takes seconds, so sha256 values are cached in ``cache.json`` keyed by path, size and
mtime (A1111's rule): a restart does not rehash, an edited file is rehashed.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path

from webui.errors import ModelNotFound
from webui.models.safetensors_file import sha256_file
from webui.types import CheckpointInfo

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt")
def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder and rename, so a crash never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class HashCache:
    """sha256 per file, remembered across restarts while path, size and mtime are unchanged."""

    def __init__(self, cache_file: Path):
        self._file = cache_file
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = self._read()

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self._file.read_text(encoding="utf-8"))
            return dict(data.get("hashes-sha256", {}))
        except (OSError, ValueError, AttributeError):
            return {}  # a missing or damaged cache only costs a rehash

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        key = str(path.resolve())
        with self._lock:
            entry = self._entries.get(key)
            if entry and entry.get("size") == stat.st_size and entry.get("mtime") == stat.st_mtime:
                return entry["sha256"]
        value = sha256_file(path)
        with self._lock:
            self._entries[key] = {"size": stat.st_size, "mtime": stat.st_mtime, "sha256": value}
            atomic_write_text(self._file, json.dumps({"hashes-sha256": self._entries}, indent=1))
        return value


def _is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file() and (path / "unet").is_dir()


class ModelRegistry:
    """Scans ``models/Stable-diffusion`` (recursively) for single-file checkpoints and diffusers folders."""

    def __init__(self, checkpoints_dir: Path, hash_cache: HashCache):
        self._dir = checkpoints_dir
        self._hashes = hash_cache
        self._lock = threading.Lock()
        self._items: list[CheckpointInfo] = []

    @property
    def directory(self) -> Path:
        return self._dir

    def refresh(self) -> list[CheckpointInfo]:
        items = [self._describe(path) for path in self._candidates()]
        items.sort(key=lambda info: info.name.lower())
        with self._lock:
            self._items = items
        return list(items)

    def list(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._items)

    def _candidates(self) -> list[Path]:
        if not self._dir.is_dir():
            return []
        found: list[Path] = []
        for root, dirs, files in os.walk(self._dir):
            root_path = Path(root)
            for d in list(dirs):
                if _is_diffusers_folder(root_path / d):
                    found.append(root_path / d)
                    dirs.remove(d)  # its subfolders are components, not checkpoints
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found.extend(root_path / f for f in files
                         if f.lower().endswith(CHECKPOINT_SUFFIXES) and not f.startswith("."))
        return found

    def _describe(self, path: Path) -> CheckpointInfo:
        name = path.relative_to(self._dir).as_posix()
        if path.is_dir():
            return CheckpointInfo(path=path, name=name, model_name=path.name, kind="diffusers",
                                  short_hash=None, sha256=None)
        sha = self._hashes.sha256(path)
        kind = "safetensors" if path.suffix.lower() == ".safetensors" else "ckpt"
        return CheckpointInfo(path=path, name=name, model_name=path.stem, kind=kind,
                              short_hash=sha[:10], sha256=sha)

    def find(self, query: str) -> CheckpointInfo:
        """Resolve what users type: a full title, a file name, a name without extension, or a hash."""
        query = query.strip()
        items = self.list()
        for matches in (
            lambda i: i.title == query,
            lambda i: i.name == query,
            lambda i: i.model_name == query,
            lambda i: Path(i.name).name == query,
            lambda i: i.short_hash is not None and query in (i.short_hash, i.sha256),
            # A1111 titles of files we also have, but hashed differently (e.g. a stale client cache).
            lambda i: query.split(" [")[0] in (i.name, i.model_name),
        ):
            for info in items:
                if matches(info):
                    return info
        known = ", ".join(i.title for i in items) or "none (put .safetensors files in " f"{self._dir})"
        raise ModelNotFound(f"Checkpoint '{query}' not found. Available: {known}")
