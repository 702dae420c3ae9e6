"""Files made from a result gallery: A1111's "Save" (to ``outputs/save`` with a ``log.csv`` line), "Zip" (the
batch as one archive to download), and "Open folder" (the outputs folder in the server's file manager).

Every name is made here from a counter and the image's seed, never from the client, so nothing can be written
outside the folders below; every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

from webui.atomic import atomic_write_bytes
from webui.errors import InvalidRequest
from webui.infotext import parse_infotext
from webui.services.storage import ImageStore

# A1111's log.csv columns (modules/ui_common.py save_files).
LOG_FIELDS = ["prompt", "seed", "width", "height", "sampler", "cfgs", "steps", "filename", "negative_prompt",
              "sd_model_name", "sd_model_hash"]
ZIP_MAX_AGE = 3600.0  # seconds a zip stays in the temp folder (Gradio has its own copy once it is offered)


@dataclass(frozen=True)
class GalleryImage:
    """One image of a result: its infotext, where the job saved it (None: not saved), and its final PNG bytes
    (kept only for an image that was not saved: a session holding a big batch's bytes would hold gigabytes)."""

    png: bytes | None
    infotext: str
    path: Path | None = None
    grid: bool = False  # A1111's grid of the batch, shown first when the return_grid option is on

    def data(self) -> bytes:
        """The final PNG file, byte for byte (OSError if the saved file has gone since)."""
        if self.png is not None:
            return self.png
        if self.path is None:
            raise InvalidRequest("images", "this image is neither kept nor saved")
        return self.path.read_bytes()

    @property
    def seed(self) -> str | None:
        seed = parse_infotext(self.infotext).params.get("Seed") if self.infotext else None
        return str(seed) if seed is not None and str(seed).isdigit() else None

    def file_name(self, number: int | None = None) -> str:
        """The job's own file name, else ``NNNNN-SEED.png`` (``image`` for an image without a seed)."""
        if self.path is not None and number is None:
            return self.path.name
        stem = self.seed or "image"
        return f"{number:05d}-{stem}.png" if number is not None else f"{stem}.png"


class GalleryFiles:
    def __init__(self, outputs_dir: Path, temp_dir: Path | None = None):
        self.outputs_dir = outputs_dir
        self.save_dir = outputs_dir / "save"  # A1111's outdir_save default
        self._temp = temp_dir or Path(tempfile.gettempdir()) / "stable-studio-zips"
        self._lock = threading.Lock()  # numbering and log.csv must not race between two sessions saving

    def save(self, images: list[GalleryImage]) -> list[Path]:
        """Copy ``images`` into ``outputs/save/NNNNN-SEED.png`` (the bytes as they are: re-encoding would drop
        the C2PA manifest) and add a line per image to ``outputs/save/log.csv``, as A1111's Save does."""
        if not images:
            raise InvalidRequest("images", "no image to save: generate one first")
        self.save_dir.mkdir(parents=True, exist_ok=True)
        saved: list[Path] = []
        with self._lock:
            number = ImageStore._next_number(self.save_dir)
            rows = []
            for image in images:
                path = self.save_dir / image.file_name(number)
                atomic_write_bytes(path, image.data())
                saved.append(path)
                rows.append(_log_row(image, path.name))
                number += 1
            self._append_log(rows)
        return saved

    def zip(self, images: list[GalleryImage]) -> Path:
        """All ``images`` as one .zip in a temporary folder (written atomically), named after the seeds."""
        if not images:
            raise InvalidRequest("images", "no image to zip: generate one first")
        self._prune()
        seeds = [image.seed for image in images if image.seed]
        name = f"images-{seeds[0]}-{seeds[-1]}.zip" if seeds else "images.zip"
        buffer = io.BytesIO()
        used: set[str] = set()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:  # PNGs are compressed
            for number, image in enumerate(images):
                entry = image.file_name()
                if entry in used:  # unsaved images of the same seed: number them
                    entry = image.file_name(number)
                used.add(entry)
                archive.writestr(entry, image.data())
        folder = self._temp / uuid.uuid4().hex
        folder.mkdir(parents=True)
        path = folder / name
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def _append_log(self, rows: list[dict[str, str]]) -> None:
        log = self.save_dir / "log.csv"
        old = log.read_text(encoding="utf-8") if log.exists() else ""
        out = io.StringIO()
        writer = csv.DictWriter(out, LOG_FIELDS, lineterminator="\n")
        if not old:
            writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(log, (old + out.getvalue()).encode("utf-8"))

    def _prune(self) -> None:
        """Remove zips older than ZIP_MAX_AGE: they were offered for download long ago."""
        if not self._temp.is_dir():
            return
        cutoff = time.time() - ZIP_MAX_AGE
        for folder in self._temp.iterdir():
            try:
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
            except OSError:
                pass


def _log_row(image: GalleryImage, filename: str) -> dict[str, str]:
    parsed = parse_infotext(image.infotext) if image.infotext else None
    params = parsed.params if parsed else {}
    width, _, height = str(params.get("Size", "")).partition("x")
    return {"prompt": parsed.prompt if parsed else "", "seed": str(params.get("Seed", "")), "width": width,
            "height": height, "sampler": str(params.get("Sampler", "")), "cfgs": str(params.get("CFG scale", "")),
            "steps": str(params.get("Steps", "")), "filename": filename,
            "negative_prompt": parsed.negative_prompt if parsed else "",
            "sd_model_name": str(params.get("Model", "")), "sd_model_hash": str(params.get("Model hash", ""))}


def opener_command(platform: str = sys.platform) -> str:
    """The program that opens a folder in the desktop's file manager on this OS."""
    if platform.startswith("win"):
        return "explorer"
    return "open" if platform == "darwin" else "xdg-open"


def open_folder(folder: Path, command: str | None = None, search_path: str | None = None) -> str:
    """Open ``folder`` in the server's file manager; a one-line message saying what happened. ``search_path`` is
    the PATH to find the opener on (default: this process's)."""
    command = command or opener_command()
    program = shutil.which(command, path=search_path if search_path is not None else os.environ.get("PATH"))
    if program is None:
        return (f"Cannot open {folder}: `{command}` is not installed on the server (it opens folders in the "
                f"desktop's file manager).")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        # Detached and not waited for: the file manager outlives the request; its output is of no use here.
        subprocess.Popen([program, str(folder)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    except OSError as exc:
        return f"Cannot open {folder}: {exc.strerror or exc}"
    return f"Opened {folder} on the server."
