"""Training image folders: where they may be, which files count, and the checks made before any device work.

A folder typed into the UI or sent to the API is the server's disk: relative paths start at the data dir and the
resolved folder (after symlinks) must stay inside it, as the img2img Batch folders do (webui/services/folders.py;
that policy lives in services, which training may not import, so the rule is repeated here in its simplest form).
Every problem is an ``InvalidRequest`` naming the field and, for a bad image, the file.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from webui.errors import InvalidRequest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MAX_IMAGES = 100_000


def resolve_folder(text: str, field: str, data_dir: Path) -> Path:
    """An existing folder inside the data dir (relative paths start there)."""
    text = (text or "").strip()
    if not text or "\0" in text:
        raise InvalidRequest(field, "enter a folder inside the data dir")
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        candidate = data_dir / candidate
    resolved = Path(os.path.realpath(candidate))
    root = Path(os.path.realpath(data_dir))
    if not (resolved == root or root in resolved.parents) or not resolved.is_dir():
        # One sentence for missing, unreadable and outside: a refusal reveals nothing about other paths.
        raise InvalidRequest(field, f"'{text}' is not an existing folder inside the data dir ({root})")
    return resolved


def image_files(folder: Path, field: str, data_dir: Path) -> list[Path]:
    """The folder's image files (top level, sorted by name, hidden files and links leading out of the data dir
    skipped); refuses an empty folder."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError:
        raise InvalidRequest(field, f"folder '{folder.name}' cannot be read") from None
    root = Path(os.path.realpath(data_dir))
    files = [Path(entry.path) for entry in entries
             if entry.name.lower().endswith(IMAGE_SUFFIXES) and not entry.name.startswith(".")
             and entry.is_file() and root in Path(os.path.realpath(entry.path)).parents]
    if not files:
        raise InvalidRequest(field, f"folder '{folder.name}' holds no PNG, JPEG, WebP or BMP images")
    if len(files) > MAX_IMAGES:
        raise InvalidRequest(field, f"folder '{folder.name}' holds more than {MAX_IMAGES} images")
    return files


def folder_images(text: str, field: str, data_dir: Path) -> list[Path]:
    """``resolve_folder`` then ``image_files``: the images of a training folder named in a request."""
    return image_files(resolve_folder(text, field, data_dir), field, data_dir)


def image_size(path: Path, field: str) -> tuple[int, int]:
    """(width, height), decoding the whole file so a truncated image is caught now, not mid-run."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidRequest(field, f"'{path.name}' is not a readable image ({type(exc).__name__})") from None


def check_min_size(paths: list[Path], field: str, min_width: int, min_height: int, what: str) -> None:
    for path in paths:
        width, height = image_size(path, field)
        if width < min_width or height < min_height:
            raise InvalidRequest(field, f"'{path.name}' is {width}x{height}, smaller than the {what} "
                                 f"({min_width}x{min_height})")


def open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def dataset_hash(paths: list[Path]) -> str:
    """sha256 over the files' names and contents in order: the same data gives the same hash anywhere."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
