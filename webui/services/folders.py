"""Server folders a request may name (img2img Batch): only inside allowed roots, resolved after symlinks.

A folder typed into the UI or sent to the Gradio API is the server's disk, not the user's: without a fence, the
batch input could publish any directory's images and the output could overwrite files anywhere. Roots are the data
dir plus those given with ``--batch-dirs``; relative paths are taken from the data dir. Every refusal reads the same,
whether the folder is missing, unreadable or outside the roots, so errors reveal nothing about other paths.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from webui.errors import InvalidRequest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_BATCH_FILES = 10_000  # a folder of more is a mistake (or an attack on the queue), not a batch


@dataclass(frozen=True)
class FolderPolicy:
    """Where batch folders may be, and whether the feature is on at all (off when exposed, unless opted in)."""

    base: Path                      # relative paths start here (the data dir)
    roots: tuple[Path, ...]         # allowed roots, already resolved
    enabled: bool = True
    disabled_reason: str = ""

    @classmethod
    def build(cls, base: Path, extra_roots: tuple[Path, ...] = (), enabled: bool = True,
              disabled_reason: str = "") -> "FolderPolicy":
        roots = tuple(dict.fromkeys(Path(os.path.realpath(p)) for p in (base, *extra_roots)))
        return cls(base=Path(os.path.realpath(base)), roots=roots, enabled=enabled, disabled_reason=disabled_reason)

    def describe(self) -> str:
        extra = " or a folder given with --batch-dirs" if len(self.roots) > 1 else ""
        return f"a folder inside the data dir{extra}"

    def _resolve(self, text: str, field: str) -> Path:
        if not self.enabled:
            raise InvalidRequest(field, self.disabled_reason or "server folders are disabled on this server")
        text = (text or "").strip()
        if not text or "\0" in text:
            raise InvalidRequest(field, f"enter {self.describe()}")
        candidate = Path(text).expanduser()
        if not candidate.is_absolute():
            candidate = self.base / candidate
        resolved = Path(os.path.realpath(candidate))
        if not any(resolved == root or root in resolved.parents for root in self.roots):
            raise self._refusal(field)
        return resolved

    def _refusal(self, field: str) -> InvalidRequest:
        return InvalidRequest(field, f"not an existing folder this server may use: enter {self.describe()}")

    def input_files(self, text: str, field: str = "input_dir") -> list[Path]:
        """The image files of an allowed input folder, each itself inside the roots (no symlinks out)."""
        folder = self._resolve(text, field)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            raise self._refusal(field) from None
        files = []
        for entry in entries:
            if not entry.name.lower().endswith(IMAGE_SUFFIXES) or entry.name.startswith("."):
                continue
            real = Path(os.path.realpath(entry.path))
            inside = any(real == root or root in real.parents for root in self.roots)
            try:
                regular = stat.S_ISREG(os.stat(real).st_mode)
            except OSError:
                regular = False
            if inside and regular:
                files.append(real)
            if len(files) > MAX_BATCH_FILES:
                raise InvalidRequest(field, f"holds more than {MAX_BATCH_FILES} images; split it")
        if not files:
            raise InvalidRequest(field, "holds no PNG, JPEG or WebP images")
        return files

    def output_folder(self, text: str, field: str = "output_dir") -> Path:
        """An allowed output folder, created when missing (its parent must already be allowed)."""
        folder = self._resolve(text, field)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            raise self._refusal(field) from None
        if not folder.is_dir():
            raise self._refusal(field)
        return folder


def unused_name(folder: Path, stem: str, suffix: str = ".png") -> Path:
    """``stem.png``, or ``stem-1.png``... when taken: a batch never overwrites a file already there."""
    path = folder / f"{stem}{suffix}"
    number = 1
    while os.path.lexists(path):
        path = folder / f"{stem}-{number}{suffix}"
        number += 1
    return path


def folder_policy(settings) -> FolderPolicy:
    """The policy a server's settings give: off when exposed to the network unless the operator opted in."""
    enabled = not settings.exposed or settings.enable_remote_folders
    reason = ("server folders (img2img Batch) are off because this server is reachable from the network "
              "(--listen or --share); start it with --enable-remote-folders to allow them (training data too)")
    return FolderPolicy.build(settings.data_dir, settings.batch_dirs, enabled=enabled,
                              disabled_reason="" if enabled else reason)
