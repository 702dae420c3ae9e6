"""Atomic file writes: a temp file in the same folder, flushed to disk, then renamed over the target.

Readers see the old file or the new one, never half of either, whether the process is killed, the disk fills or
the power goes. Temp files are named ``.<name>.<random>.tmp``; a kill can leave one behind, and
``remove_stale_temp_files`` sweeps those.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

TEMP_SUFFIX = ".tmp"
STALE_AFTER_SECONDS = 3600  # a temp file this old belongs to no write in progress


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through, piece by piece (a merge streams gigabytes): it becomes ``path``
    only when the block ends normally; an exception (a cancel, a full disk) removes it and leaves ``path`` as it
    was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())  # the rename must not reach the disk before the data does
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temp_files(folder: Path, older_than: float = STALE_AFTER_SECONDS) -> int:
    """Delete temp files a killed writer left in ``folder`` (not recursive); returns how many went."""
    removed = 0
    cutoff = time.time() - older_than
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
            try:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                pass  # gone already, or not ours to delete
    return removed
