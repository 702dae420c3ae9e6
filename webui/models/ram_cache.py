"""Checkpoints kept in RAM after they leave their device, so that switching back costs a copy, not a load.

When the device owner evicts a checkpoint to make room (``--max-loaded-models`` or free device memory), the model
manager hands it here instead of dropping it: from a CUDA device its weights are first moved into CPU memory
(page-locked while that stays a small share of the RAM, which makes the copy back to the GPU faster); on the CPU the
model object is simply kept. Asking for the checkpoint again takes it out of the cache, and the device owner places
it again: a copy to the device instead of reading, hashing and converting the file.

Entries are keyed by the file, the dtype and the memory profile, and carry the file's version as it was when it
was read (sha256, size and mtime; every file's for a diffusers folder): an edited file never comes back stale.
LoRAs are never in a cached model: a job's LoRAs are restored byte for byte when the job ends
(webui/pipelines/lora_apply.py), and a model in use by a job is never evicted.

Size: ``Settings.ram_cache_gib`` (0 = off; None = auto). At every insert the cache also checks the RAM the system
has available and keeps a safety margin free, dropping least recently used entries, so it never pushes the
machine into swap, whatever size was asked for. Before a checkpoint is read from disk (for a device, or a training
run's own copy) it gives way too, until the load has the RAM it may need. Other RAM use does not shrink it between
those points; ``--ram-cache-gib 0`` leaves all of the RAM to it.

Not measured on a GPU yet: the copy back to the device is what a switch costs there (issue 13's target: at most 1 s for
SD1.5).
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable

import torch

from webui.models.device import release_to_host
from webui.types import CheckpointInfo

log = logging.getLogger(__name__)

GIB = 1024 ** 3
MIN_MARGIN = 2 * GIB  # RAM always left free: the next load, a job's activations, the rest of the system
PINNED_SHARE = 8      # page-locked memory cannot be swapped out: at most 1/8 of the RAM is pinned by the cache
# torch's pinned-memory allocator rounds each block up to a power of two (and keeps freed blocks for reuse), so a
# pinned entry is counted at twice its size: the worst case.
PINNED_FOOTPRINT = 2


def available_ram() -> int:
    import psutil  # a dependency of accelerate, so always installed with it

    return psutil.virtual_memory().available


def total_ram() -> int:
    import psutil

    return psutil.virtual_memory().total


def load_bytes(info: CheckpointInfo) -> int:
    """RAM a load of this checkpoint may need at its peak, roughly: the file's tensors plus the model built from
    them, up to twice their size (an fp16 file loaded in fp32): three times the file (or folder)."""
    path = Path(info.path)
    try:
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    except OSError:
        return 0
    return 3 * size


def file_version(info: CheckpointInfo) -> Hashable | None:
    """The checkpoint's content as of now, cheaply: its sha256 (as the registry last hashed it) with the size and
    mtime of the file, or of every file of a diffusers folder. None when it cannot be read (never cached)."""
    path = Path(info.path)
    try:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            stats = tuple((p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
        else:
            stat = path.stat()
            stats = ((stat.st_size, stat.st_mtime_ns),)
    except OSError:
        return None
    return (info.sha256, stats)


@dataclass(frozen=True)
class CacheKey:
    """What makes two cached models interchangeable: the same file, dtype and memory profile."""

    path: str
    dtype: str
    profile: str

    @classmethod
    def of(cls, info: CheckpointInfo, dtype: torch.dtype, profile: str) -> CacheKey:
        return cls(str(Path(info.path).resolve()), str(dtype).replace("torch.", ""), profile)


@dataclass
class _Entry:
    title: str
    version: Hashable
    value: Any
    size: int       # bytes of weights
    footprint: int  # bytes of RAM it is counted for (pinned: more, see PINNED_FOOTPRINT)
    pinned: bool


class RamCache:
    """An LRU of evicted checkpoints in CPU memory. Shared by every device's model manager (RAM is one pool).

    ``limit_bytes``: the most the entries may take (None: as much as the available RAM allows; 0: off).
    ``available``/``total`` read the system's RAM (replaceable in tests)."""

    def __init__(self, limit_bytes: int | None = None, *, available: Callable[[], int] = available_ram,
                 total: Callable[[], int] = total_ram, margin_bytes: int | None = None):
        self._limit = limit_bytes
        self._available = available
        self._total = total
        self._margin = margin_bytes
        self._state = threading.Lock()   # the table only, held for microseconds: reports never wait
        self._insert = threading.Lock()  # one insert at a time (devices evict concurrently)
        self._entries: OrderedDict[CacheKey, _Entry] = OrderedDict()  # most recently used last
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_gib(cls, gib: float | None) -> RamCache:
        return cls(None if gib is None else int(gib * GIB))

    @property
    def enabled(self) -> bool:
        return self._limit != 0

    def margin(self) -> int:
        return self._margin if self._margin is not None else max(MIN_MARGIN, self._total() // 10)

    # ------------------------------------------------------------------------------------------ reads

    def report(self) -> list[dict[str, Any]]:
        """The cached checkpoints, least recently used first: title, dtype, bytes and whether pinned."""
        with self._state:
            return [{"name": e.title, "dtype": k.dtype, "bytes": e.size, "pinned": e.pinned}
                    for k, e in self._entries.items()]

    def used_bytes(self) -> int:
        """RAM the entries are counted for."""
        with self._state:
            return sum(e.footprint for e in self._entries.values())

    # ------------------------------------------------------------------------------------------ take / put

    def take(self, key: CacheKey, version: Hashable | None) -> Any | None:
        """The cached model for ``key`` if it was read from the file as it is now (``version``), removed from the
        cache (the caller places it on a device); None otherwise. A stale entry is dropped."""
        with self._state:
            entry = self._entries.pop(key, None)
            if entry is not None and version is not None and entry.version == version:
                self.hits += 1
                return entry.value
            self.misses += 1
        if entry is not None:
            log.info("RAM cache: %s changed on disk since it was cached; reading it again", entry.title)
            del entry
            gc.collect()
        return None

    def put(self, key: CacheKey, version: Hashable | None, title: str, value: Any, size: int,
            device: torch.device) -> bool:
        """Keep an evicted model (``size`` bytes of weights, on ``device``). False when the cache is off, the
        version is unknown, or it does not fit: then it is dropped as before."""
        if not self.enabled or version is None:
            return False
        with self._insert:
            on_cpu = device.type == "cpu"
            pin = not on_cpu and self._may_pin(size)
            footprint = size * PINNED_FOOTPRINT if pin else size
            if not self._make_room(key, footprint, already_in_ram=on_cpu):
                log.info("RAM cache: no room for %s (%.2f GiB)", title, size / GIB)
                return False
            if not on_cpu:
                try:
                    kept, pin = self._release(value, title, pin)
                except RuntimeError as exc:  # out of host memory
                    log.warning("RAM cache: could not move %s to RAM: %s", title, exc)
                    return False
                if not kept:
                    return False
                footprint = size * PINNED_FOOTPRINT if pin else size
            with self._state:
                self._entries[key] = _Entry(title, version, value, size, footprint, pin)
            log.info("RAM cache: keeping %s (%.2f GiB)", title, size / GIB)
            return True

    @staticmethod
    def _release(value: Any, title: str, pin: bool) -> tuple[bool, bool]:
        """Move ``value``'s weights into RAM, pinned if asked and the driver allows it, else pageable.
        Returns (kept, pinned)."""
        if pin:
            try:
                return release_to_host(value, pin=True), True
            except RuntimeError as exc:  # page-locking refused (driver, ulimit): plain memory works too
                log.info("RAM cache: keeping %s in pageable memory (%s)", title, exc)
        return release_to_host(value, pin=False), False

    def make_room_for_load(self, need_bytes: int) -> None:
        """Before a checkpoint is read from disk: drop least recently used entries until the system has
        ``need_bytes`` available beyond the margin (or the cache is empty), so a load never runs out of RAM
        because of what the cache keeps."""
        free = self._available() - self.margin()
        dropped = []
        with self._state:
            while self._entries and free < need_bytes:
                _, old = self._entries.popitem(last=False)
                free += old.footprint
                dropped.append(old.title)
                old = None  # noqa: F841 - the last reference: gc.collect below can free it
        for title in dropped:
            log.info("RAM cache: dropping %s to make room for a load", title)
        if dropped:
            gc.collect()

    def clear(self) -> None:
        with self._state:
            self._entries.clear()
        gc.collect()

    def _make_room(self, key: CacheKey, size: int, *, already_in_ram: bool) -> bool:
        """Drop least recently used entries until ``size`` more bytes fit; False (nothing dropped) if they never
        would. The room is what the entries take now plus what the system has available, less the margin (a
        model evicted from the CPU is in RAM already; one from a GPU still has to be copied in)."""
        free = self._available() - self.margin()  # read before taking the lock: reports never wait
        with self._state:
            self._entries.pop(key, None)  # an older copy of the same checkpoint (another device evicted it too)
            cached = sum(e.footprint for e in self._entries.values())
            room = cached + (size if already_in_ram else 0) + free
            limit = room if self._limit is None else min(self._limit, room)
            if size > limit:
                return False
            dropped = []
            while self._entries and cached + size > limit:
                _, old = self._entries.popitem(last=False)
                cached -= old.footprint
                dropped.append(old.title)
                old = None  # noqa: F841 - the last reference: gc.collect below can free it
        for title in dropped:
            log.info("RAM cache: dropping %s (least recently used)", title)
        if dropped:
            gc.collect()
        return True

    def _may_pin(self, size: int) -> bool:
        with self._state:
            pinned = sum(e.footprint for e in self._entries.values() if e.pinned)
        return should_pin(size, pinned, self._total())


def should_pin(size: int, pinned: int, total: int) -> bool:
    """Pin a ``size``-byte model while the cache's page-locked memory (``pinned`` bytes now) stays a small share
    of the ``total`` RAM: cheap then, and never starving the rest of the system of swappable memory."""
    return pinned + size * PINNED_FOOTPRINT <= total // PINNED_SHARE
