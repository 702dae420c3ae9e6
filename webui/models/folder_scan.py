"""Scanning a model folder safely: which entries may be listed, and why the others are skipped.

Every folder scan (checkpoints, LoRA, VAE, embeddings, CycleGAN/pix2pix) goes through ``ModelFolder`` so the
same rules hold everywhere:

- only regular files (after following symlinks): a FIFO, a device such as ``/dev/zero`` or a socket with a
  model's name would make a reader block or read forever;
- sizes checked before anything is read: under ``min_size`` or over ``max_size`` is skipped;
- symbolic links (to files or to folders) must resolve inside the scanned folder, unless the owner allows
  external links (``--allow-external-model-links``, for models kept on another disk);
- symlinked folders are followed at most once each (no loops) and to a bounded depth.

A skipped entry is logged with the reason (naming the link target, for the server's owner) and kept in
``Scan.skipped`` with a reason that names no path outside the folder, safe to show to remote users.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 256 * 1024**3  # far above any real model; a larger (e.g. sparse) file is not one
MAX_DEPTH = 16  # sub-folder levels; real layouts use one or two
EXTERNAL_LINKS_FLAG = "--allow-external-model-links"


@dataclass(frozen=True)
class Skipped:
    path: Path    # as found in the folder (the link itself, not its target)
    reason: str   # names no path outside the folder


@dataclass
class Scan:
    files: list[Path] = field(default_factory=list)
    dirs: list[Path] = field(default_factory=list)     # folders claimed whole by the caller (e.g. diffusers)
    skipped: list[Skipped] = field(default_factory=list)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class ModelFolder:
    """One scanned folder and its rules; ``scan()`` lists it, ``check_file()`` vets a single path in it."""

    def __init__(self, root: Path, *, allow_external_links: bool = False, min_size: int = 0,
                 max_size: int = MAX_FILE_BYTES):
        self.root = root
        self.allow_external_links = allow_external_links
        self.min_size = min_size
        self.max_size = max_size

    def _real_root(self) -> str:
        # Resolved at each scan: the folder itself may be a symlink (e.g. to another disk), which is the
        # owner's choice; the rule is about links *inside* it.
        return os.path.realpath(self.root)

    def _link_problem(self, path: Path, real_root: str) -> tuple[str, str] | None:
        """(public reason, log detail) when ``path`` is a symlink whose target is refused."""
        if not path.is_symlink():
            return None
        target = os.path.realpath(path)
        if _inside(target, real_root) or self.allow_external_links:
            return None
        return (f"a symbolic link to outside {self.root.name}/ (allowed only with {EXTERNAL_LINKS_FLAG})",
                f"symbolic link to {target}, outside {real_root}")

    def check_file(self, path: Path, real_root: str | None = None) -> tuple[str, str] | None:
        """None when ``path`` may be listed, else (public reason, log detail)."""
        real_root = real_root or self._real_root()
        problem = self._link_problem(path, real_root)
        if problem:
            return problem
        try:
            st = os.stat(path)  # follows the link: the target is what would be read
        except OSError as exc:
            reason = "a broken symbolic link" if path.is_symlink() else "unreadable"
            return reason, f"{reason}: {exc.strerror or exc}"
        if not stat.S_ISREG(st.st_mode):
            kind = _kind(st.st_mode)
            return f"{kind}, not a regular file", kind
        if st.st_size < self.min_size:
            reason = f"only {st.st_size} bytes: too small to be a model"
            return reason, reason
        if st.st_size > self.max_size:
            reason = f"{st.st_size} bytes: larger than any model (limit {self.max_size})"
            return reason, reason
        return None

    def scan(self, suffixes: tuple[str, ...], *, recursive: bool = True,
             claim_dir: Callable[[Path], bool] | None = None) -> Scan:
        """Files ending in ``suffixes`` (case-insensitive), in name order per folder; hidden names are ignored.

        ``claim_dir(path)`` true makes a sub-folder a result of its own (in ``Scan.dirs``), not descended into.
        """
        result = Scan()
        real_root = self._real_root()
        if not os.path.isdir(real_root):
            return result
        seen: set[tuple[int, int]] = set()
        self._scan_dir(self.root, 0, suffixes, recursive, claim_dir, real_root, seen, result)
        return result

    def _skip(self, result: Scan, path: Path, problem: tuple[str, str]) -> None:
        result.skipped.append(Skipped(path, problem[0]))
        log.warning("Skipped %s: %s", path, problem[1])

    def _scan_dir(self, folder: Path, depth: int, suffixes: tuple[str, ...], recursive: bool,
                  claim_dir: Callable[[Path], bool] | None, real_root: str, seen: set[tuple[int, int]],
                  result: Scan) -> None:
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                return  # a link back to a folder already scanned
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                # real entries before links, so a folder also reachable through a link keeps its own name
                entries = sorted(it, key=lambda e: (e.is_symlink(), e.name))
        except OSError as exc:
            self._skip(result, folder, ("unreadable", f"unreadable folder: {exc.strerror or exc}"))
            return
        lowered = tuple(s.lower() for s in suffixes)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()  # follows symlinks
            except OSError:
                is_dir = False
            if is_dir:
                if claim_dir is None and not recursive:
                    continue
                problem = self._link_problem(path, real_root)
                if problem:
                    self._skip(result, path, problem)
                elif claim_dir is not None and claim_dir(path):
                    result.dirs.append(path)
                elif recursive and depth < MAX_DEPTH:
                    self._scan_dir(path, depth + 1, suffixes, recursive, claim_dir, real_root, seen, result)
            elif entry.name.lower().endswith(lowered):
                problem = self.check_file(path, real_root)
                if problem:
                    self._skip(result, path, problem)
                else:
                    result.files.append(path)
