"""Writes are atomic: a process killed mid-write leaves the old file (or none), never half of the new one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from webui.atomic import atomic_write_text, remove_stale_temp_files

REPO = Path(__file__).resolve().parent.parent

WRITER = """
import sys
from pathlib import Path
from webui.atomic import atomic_write_bytes
atomic_write_bytes(Path(sys.argv[1]), b"x" * (400 * 1024 * 1024))
"""


def test_kill_during_a_write_keeps_the_old_file_whole(tmp_path):
    target = tmp_path / "config.json"
    atomic_write_text(target, '{"old": true}')
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=REPO)
    try:
        deadline = time.monotonic() + 60  # a hang guard, not a timing assert
        while not any(p.name.endswith(".tmp") and p.stat().st_size > 0 for p in tmp_path.iterdir()):
            assert process.poll() is None, "the writer finished before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert target.read_text() == '{"old": true}'
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert leftovers and all(p.name.startswith(".config.json.") for p in leftovers)
    # Fresh temp files may belong to a write in progress: only old ones are swept.
    assert remove_stale_temp_files(tmp_path) == 0
    old = time.time() - 7200
    for p in leftovers:
        os.utime(p, (old, old))
    assert remove_stale_temp_files(tmp_path) == len(leftovers)
    assert list(tmp_path.iterdir()) == [target]


def test_a_failed_write_leaves_no_temp_file_behind(tmp_path):
    target = tmp_path / "state.json"
    target.mkdir()  # the rename over it fails after the temp file was written
    with pytest.raises(OSError):
        atomic_write_text(target, "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_the_image_store_sweeps_what_a_killed_save_left(tmp_path):
    from webui.services.storage import ImageStore

    store = ImageStore(tmp_path)
    folder = store.folder("txt2img")
    folder.mkdir(parents=True)
    stale, fresh = folder / ".00007-1.png.abc.tmp", folder / ".00008-1.png.def.tmp"
    for leftover in (stale, fresh):
        leftover.write_bytes(b"half an image")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    path = store.save(b"\x89PNG whole", "txt2img", seed=1)
    assert not stale.exists() and fresh.exists()  # a fresh one may be another process's save in progress
    assert path.read_bytes() == b"\x89PNG whole"
