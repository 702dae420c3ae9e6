"""The checkpoint registry: which models exist on disk, their A1111 titles and hashes.

Hashing a 2-7 GB file takes seconds, so sha256 values are cached in ``cache.json`` keyed by path, size and
mtime (A1111's rule): a restart does not rehash, an edited file is rehashed. Hashing is bounded and stops when
the cache is closed (app shutdown); what may be listed at all is decided by ``folder_scan.ModelFolder``.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from webui.atomic import atomic_write_text
from webui.errors import ModelNotFound
from webui.models.folder_scan import ModelFolder, Skipped
from webui.models.safetensors_file import FileChanged, NotRegularFile, hash_file, sha256_file
from webui.types import CheckpointInfo

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt")
MIN_CHECKPOINT_BYTES = 8  # a safetensors header's length field alone; smaller is an empty or partial download

__all__ = ["CHECKPOINT_SUFFIXES", "HashCache", "ModelRegistry", "atomic_write_text", "sha256_file"]


class HashCache:
    """sha256 per file, remembered across restarts while path, size and mtime are unchanged."""

    def __init__(self, cache_file: Path, stop: threading.Event | None = None):
        self._file = cache_file
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = self._read()
        # Checked between chunks: once set (by close(), or by an owner sharing the event), hashing stops.
        self._stop = stop if stop is not None else threading.Event()

    def close(self) -> None:
        """Stop hashing for good (app shutdown): running and later ``sha256`` calls raise HashCancelled."""
        self._stop.set()

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
        value, hashed = hash_file(path, stop=self._stop)
        with self._lock:
            # the stat of the bytes actually hashed, so a file edited since the stat above is rehashed next time
            self._entries[key] = {"size": hashed.st_size, "mtime": hashed.st_mtime, "sha256": value}
            text = json.dumps({"hashes-sha256": self._entries}, indent=1)
            try:
                atomic_write_text(self._file, text)
            except OSError as exc:  # a read-only or full disk costs a rehash at the next start, not the model
                log.warning("Could not save the hash cache %s: %s", self._file, exc.strerror or exc)
        return value


def _is_diffusers_folder(path: Path) -> bool:
    return path.is_dir() and (path / "model_index.json").is_file() and (path / "unet").is_dir()


class ModelRegistry:
    """Scans ``models/Stable-diffusion`` (recursively) for single-file checkpoints and diffusers folders.

    Entries that cannot be models (FIFOs, devices, empty files, links leaving the folder unless allowed, files
    that change while hashed) are left out of the listing, logged, and reported by ``skipped()`` and by
    ``find()`` when asked for by name.
    """

    def __init__(self, checkpoints_dir: Path, hash_cache: HashCache, *, allow_external_links: bool = False):
        self._dir = checkpoints_dir
        self._folder = ModelFolder(checkpoints_dir, allow_external_links=allow_external_links,
                                   min_size=MIN_CHECKPOINT_BYTES)
        self._hashes = hash_cache
        self._lock = threading.Lock()
        self._items: list[CheckpointInfo] = []
        self._skipped: list[Skipped] = []

    @property
    def directory(self) -> Path:
        return self._dir

    def close(self) -> None:
        """Stop any hash in progress (app shutdown); a refresh running now raises HashCancelled."""
        self._hashes.close()

    def refresh(self) -> list[CheckpointInfo]:
        scan = self._folder.scan(CHECKPOINT_SUFFIXES, claim_dir=_is_diffusers_folder)
        items: list[CheckpointInfo] = []
        skipped = list(scan.skipped)
        for path in scan.dirs + scan.files:
            try:
                items.append(self._describe(path))
            except (FileChanged, NotRegularFile) as exc:
                skipped.append(Skipped(path, str(exc)))
                log.warning("Skipped %s: %s", path, exc)
            except OSError as exc:
                skipped.append(Skipped(path, "unreadable"))
                log.warning("Skipped %s: unreadable: %s", path, exc.strerror or exc)
        items.sort(key=lambda info: info.name.lower())
        with self._lock:
            self._items = items
            self._skipped = skipped
        return list(items)

    def list(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._items)

    def skipped(self) -> list[tuple[str, str]]:
        """(name relative to the folder, reason) of entries the last refresh left out."""
        with self._lock:
            return [(self._relative(s.path), s.reason) for s in self._skipped]

    def _relative(self, path: Path) -> str:
        return path.relative_to(self._dir).as_posix()

    def _describe(self, path: Path) -> CheckpointInfo:
        name = self._relative(path)
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
        why = next((f" ({name} is in the folder but was skipped: {reason})" for name, reason in self.skipped()
                    if query.split(" [")[0] in (name, Path(name).name, Path(name).stem)), "")
        raise ModelNotFound(f"Checkpoint '{query}' not found{why}. Available: {known}")
