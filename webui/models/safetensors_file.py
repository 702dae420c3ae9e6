"""Reading model files without torch: safetensors headers, and bounded, cancellable sha256 hashes.

A header is 8 bytes of little-endian length followed by that much JSON, so listing and detecting models stays
cheap. Shared by the checkpoint registry and detection and by the LoRA/embedding listing.

Hashing reads a file through ``open_regular`` (a FIFO or a device is refused before a byte is read) and reads at
most the size it had when opened, so a growing file or a device can never make it loop; a file that changed
meanwhile is refused rather than given a hash of a mix of two versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from webui.errors import Cancelled

MAX_HEADER = 100 * 1024 * 1024  # real headers are < 1 MB; larger means garbage, not a model
_HASH_CHUNK = 1 << 20


class StopToken(Protocol):
    """What hashing checks between chunks; ``threading.Event`` is one."""

    def is_set(self) -> bool: ...


class HashCancelled(Cancelled):
    """Hashing was stopped through its stop token (the app is shutting down)."""


class FileChanged(OSError):
    """The file changed (size, mtime or identity) while it was being read."""


class NotRegularFile(OSError):
    """A FIFO, device, socket or directory where a model file was expected."""


def open_regular(path: Path) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file.

    O_NONBLOCK keeps ``open`` itself from blocking on a FIFO that has no writer (it has no effect on regular
    files), and the check is made on the opened descriptor, so swapping the file for a FIFO or a device after a
    scan changes nothing.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(f"{path.name} is not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_header(fh: BinaryIO, size: int) -> tuple[dict[str, Any], int] | None:
    """(header JSON, header length) of a safetensors stream at its start, or None when it is not one."""
    head = fh.read(8)
    if len(head) != 8:
        return None
    length = struct.unpack("<Q", head)[0]
    if not 0 < length <= min(MAX_HEADER, size - 8):
        return None
    try:
        header = json.loads(fh.read(length))
    except ValueError:  # includes UnicodeDecodeError
        return None
    return (header, length) if isinstance(header, dict) else None


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def hash_file(path: Path, offset: int = 0, stop: StopToken | None = None) -> tuple[str, os.stat_result]:
    """(sha256 from ``offset`` on, the stat of the file that was hashed).

    Reads at most the size stat'ed at open; raises FileChanged if the file changed while it was read (or ends
    early), NotRegularFile for anything but a regular file, HashCancelled once ``stop`` is set.
    """
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        before = os.fstat(fh.fileno())
        remaining = max(0, before.st_size - offset)
        fh.seek(offset)
        while remaining:
            if stop is not None and stop.is_set():
                raise HashCancelled(f"Hashing {path.name} was stopped: the server is shutting down.")
            chunk = fh.read(min(_HASH_CHUNK, remaining))
            if not chunk:
                break  # truncated under us: caught by the checks below
            digest.update(chunk)
            remaining -= len(chunk)
        after = os.fstat(fh.fileno())
    if remaining or _identity(after) != _identity(before):
        raise FileChanged(f"{path.name} changed while it was being hashed (still being copied?)")
    try:
        now = os.stat(path)
    except OSError as exc:
        raise FileChanged(f"{path.name} was removed or replaced while it was being hashed") from exc
    if _identity(now) != _identity(before):
        raise FileChanged(f"{path.name} was replaced while it was being hashed")
    return digest.hexdigest(), before


def sha256_file(path: Path, offset: int = 0, stop: StopToken | None = None) -> str:
    """sha256 of the file from ``offset`` on (A1111's LoRA hash skips the header; checkpoint hashes do not)."""
    return hash_file(path, offset, stop)[0]
