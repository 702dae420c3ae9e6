"""LoRA and textual-inversion files on disk: what exists, its metadata and its A1111 hash.

No torch import: a safetensors header is 8 bytes of length plus JSON, so listing stays cheap even for a folder
of hundreds of LoRAs. A file we cannot read is still listed (with empty metadata): a listing never crashes on one
bad download. What may be listed at all (regular files only, links inside the folder unless allowed) is decided
by ``folder_scan.ModelFolder``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.models.folder_scan import ModelFolder
from webui.models.safetensors_file import StopToken, open_regular, read_header, sha256_file

LORA_SUFFIXES = (".safetensors", ".pt")
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")


@dataclass(frozen=True)
class LoraInfo:
    """One LoRA file as A1111's ``/sdapi/v1/loras`` describes it, plus its short hash for infotexts."""

    name: str                 # file stem, what ``<lora:name:0.8>`` refers to
    alias: str                # ``ss_output_name`` from the metadata when present (A1111's rule), else the stem
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    short_hash: str | None = None  # first 12 hex of the "addnet" sha256 (see lora_hash)


@dataclass(frozen=True)
class EmbeddingInfo:
    """A textual-inversion file. Width and vector count come from the header; 0 when unreadable (e.g. pickles)."""

    name: str
    path: Path
    shape: int = 0     # vector width: 768 SD1.x, 1024 SD2.x, 768+1280 SDXL
    vectors: int = 0   # how many tokens the embedding stands for


def parse_metadata(header: dict[str, Any]) -> dict[str, Any]:
    """``__metadata__`` with JSON-object strings decoded, as A1111 does (kohya stores ss_tag_frequency that way)."""
    raw = header.get("__metadata__")
    if not isinstance(raw, dict):
        return {}
    metadata: dict[str, Any] = {}
    for key, value in raw.items():
        metadata[key] = value
        if isinstance(value, str) and value.startswith("{"):
            try:
                metadata[key] = json.loads(value)
            except ValueError:
                pass  # not JSON after all: keep the string
    return metadata


def _read_lora(path: Path, stop: StopToken | None = None) -> tuple[dict[str, Any], str | None]:
    """(metadata, short hash). A1111 hashes a safetensors LoRA's data only, so editing metadata keeps the hash;
    other files are hashed whole. Unreadable files (or files that change while hashed) give ({}, None)."""
    try:
        if path.suffix.lower() != ".safetensors":
            return {}, sha256_file(path, stop=stop)[:12]
        with open_regular(path) as fh:
            parsed = read_header(fh, path.stat().st_size)
        if parsed is None:
            return {}, None  # garbage: no data section to hash
        header, length = parsed
        return parse_metadata(header), sha256_file(path, offset=8 + length, stop=stop)[:12]
    except OSError:
        return {}, None


def lora_hash(path: Path) -> str | None:
    """A1111's LoRA hash ("addnet hash"): first 12 hex of sha256 of the data after the safetensors header."""
    return _read_lora(path)[1]


def _walk(directory: Path, suffixes: tuple[str, ...], allow_external_links: bool) -> list[Path]:
    found = ModelFolder(directory, allow_external_links=allow_external_links).scan(suffixes).files
    return sorted(found, key=lambda p: p.relative_to(directory).as_posix().lower())


class LoraRegistry:
    """Scans ``models/Lora`` recursively. Hashes are remembered per (path, size, mtime), so a rescan after adding
    one file reads only that file."""

    def __init__(self, lora_dir: Path, *, allow_external_links: bool = False):
        self._dir = lora_dir
        self._allow_external_links = allow_external_links
        self._stop = threading.Event()  # set by close(): a hash in progress stops at its next chunk
        self._lock = threading.Lock()
        self._items: list[LoraInfo] | None = None  # None: never scanned; list() scans on first use
        self._cache: dict[tuple[str, int, int], tuple[dict[str, Any], str | None]] = {}

    @property
    def directory(self) -> Path:
        return self._dir

    def close(self) -> None:
        """Stop hashing for good (app shutdown): a refresh running now raises HashCancelled."""
        self._stop.set()

    def refresh(self) -> list[LoraInfo]:
        items = [self._describe(path) for path in _walk(self._dir, LORA_SUFFIXES, self._allow_external_links)]
        live = {str(i.path) for i in items}
        with self._lock:
            self._items = items
            # forget deleted or edited files, so the cache does not grow with every rescan
            self._cache = {k: v for k, v in self._cache.items() if k[0] in live}
        return list(items)

    def list(self) -> list[LoraInfo]:
        with self._lock:
            items = self._items
        return list(items) if items is not None else self.refresh()

    def find(self, name: str) -> LoraInfo | None:
        """By file stem (what prompts use), falling back to the alias."""
        items = self.list()
        return next((i for i in items if i.name == name), None) or next((i for i in items if i.alias == name), None)

    def _describe(self, path: Path) -> LoraInfo:
        metadata, short_hash = self._cached_read(path)
        alias = metadata.get("ss_output_name")
        return LoraInfo(name=path.stem, alias=alias if isinstance(alias, str) and alias else path.stem,
                        path=path, metadata=metadata, short_hash=short_hash)

    def _cached_read(self, path: Path) -> tuple[dict[str, Any], str | None]:
        try:
            stat = path.stat()
        except OSError:
            return {}, None
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            hit = self._cache.get(key)
        if hit is None:
            hit = _read_lora(path, self._stop)
            with self._lock:
                self._cache[key] = hit
        return hit


def _embedding_dims(header: dict[str, Any]) -> tuple[int, int]:
    """(width, vectors) from tensor shapes: A1111 files hold ``emb_params`` [n, 768]; SDXL ones ``clip_l`` and
    ``clip_g`` (width reported as their sum, like A1111); others a single tensor of any name."""
    shapes = {k: v.get("shape") for k, v in header.items()
              if k != "__metadata__" and isinstance(v, dict) and isinstance(v.get("shape"), list)}
    if "clip_l" in shapes and "clip_g" in shapes:
        l_shape, g_shape = shapes["clip_l"], shapes["clip_g"]
        if l_shape and g_shape:
            return int(l_shape[-1]) + int(g_shape[-1]), int(g_shape[0]) if len(g_shape) > 1 else 1
    shape = shapes.get("emb_params") or (next(iter(shapes.values())) if len(shapes) == 1 else None)
    if not shape:
        return 0, 0
    return int(shape[-1]), int(shape[0]) if len(shape) > 1 else 1


def _describe_embedding(path: Path) -> EmbeddingInfo:
    if path.suffix.lower() != ".safetensors":
        return EmbeddingInfo(name=path.stem, path=path)  # a pickle: reading it would mean unpickling
    try:
        with open_regular(path) as fh:
            parsed = read_header(fh, path.stat().st_size)
    except OSError:
        parsed = None
    if parsed is None:
        return EmbeddingInfo(name=path.stem, path=path)
    try:
        width, vectors = _embedding_dims(parsed[0])
    except (TypeError, ValueError, IndexError):
        width, vectors = 0, 0
    return EmbeddingInfo(name=path.stem, path=path, shape=width, vectors=vectors)


def scan_embeddings(embeddings_dir: Path, *, allow_external_links: bool = False) -> list[EmbeddingInfo]:
    """Every embedding file under ``embeddings/`` (recursive), readable or not; see ``folder_scan`` for what
    is left out."""
    return [_describe_embedding(path) for path in _walk(embeddings_dir, EMBEDDING_SUFFIXES, allow_external_links)]
