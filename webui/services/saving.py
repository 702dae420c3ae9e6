"""How generated images are saved, from A1111's saving options: folders, names, format, ``.txt`` files, grids.

The options are read once per job into a ``SaveOptions`` (a settings change applies to the next job). Output
folders (``outdir_*``) are written as A1111 shows them, relative to the data dir (``outputs/txt2img-images``), and
must stay inside ``outputs/``: no absolute path, no ``..``, no symbolic link leading out (checked when set and
again at every save, since a link can appear later).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from PIL import Image

from webui.atomic import atomic_write_bytes, atomic_write_text, remove_stale_temp_files
from webui.errors import InvalidRequest
from webui.provenance import formats
from webui.services.file_names import NameContext, file_stem, folder_parts

OUTPUTS = "outputs"
_NUMBERED = re.compile(r"^(\d{5,})(?=[-.]|$)")
_GRID_NUMBERED = re.compile(r"^grid-(\d{4,})(?=[-.]|$)")


@dataclass(frozen=True)
class SaveOptions:
    """A1111's saving options as one job uses them (names and defaults as in A1111's settings)."""

    samples_save: bool = True
    samples_format: str = "png"
    jpeg_quality: int = 80
    webp_lossless: bool = False
    samples_filename_pattern: str = ""
    save_images_add_number: bool = True
    save_to_dirs: bool = True
    directories_filename_pattern: str = "[date]"
    directories_max_prompt_words: int = 8
    save_txt: bool = False
    outdir_samples: str = ""
    outdir_txt2img_samples: str = "outputs/txt2img-images"
    outdir_img2img_samples: str = "outputs/img2img-images"
    outdir_grids: str = ""
    outdir_txt2img_grids: str = "outputs/txt2img-grids"
    outdir_img2img_grids: str = "outputs/img2img-grids"
    grid_save: bool = True
    grid_format: str = "png"
    grid_extended_filename: bool = False
    grid_only_if_multiple: bool = True
    grid_prevent_empty_spots: bool = False
    grid_save_to_dirs: bool = True
    return_grid: bool = True
    n_rows: int = -1

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> "SaveOptions":
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

    def extension(self, grid: bool = False) -> str:
        fmt = self.grid_format if grid else self.samples_format
        return "jpg" if fmt == "jpeg" else fmt

    def folder_option(self, category: str, grid: bool) -> tuple[str, str]:
        """(option key, value) of the folder a category's images (or grids) go to, as A1111 picks it."""
        if grid:
            return ("outdir_grids", self.outdir_grids) if self.outdir_grids else \
                (f"outdir_{category}_grids", getattr(self, f"outdir_{category}_grids"))
        return ("outdir_samples", self.outdir_samples) if self.outdir_samples else \
            (f"outdir_{category}_samples", getattr(self, f"outdir_{category}_samples"))


def path_problem(value: str) -> str | None:
    """Why ``value`` cannot name a folder inside ``outputs/`` (textual checks; links are checked on use)."""
    if not value:
        return None  # empty: A1111's "use the default folder"
    if "\x00" in value or any(ord(c) < 32 for c in value):
        return "must not contain control characters"
    if "\\" in value:
        return "use / between folder names"
    path = PurePosixPath(value)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", value):
        return f"must be a folder inside {OUTPUTS}/ (e.g. {OUTPUTS}/my-images), not an absolute path"
    if ".." in path.parts:
        return f"must stay inside {OUTPUTS}/: '..' is not allowed"
    return None


def resolve_outdir(key: str, value: str, outputs_dir: Path) -> Path:
    """The folder an ``outdir_*`` value names: ``outputs/name`` (or ``name``) inside ``outputs_dir``."""
    if (problem := path_problem(value)) is not None:
        raise InvalidRequest(key, problem)
    parts = [p for p in PurePosixPath(value).parts if p not in ("", ".")]
    if parts and parts[0] == OUTPUTS:
        parts = parts[1:]
    folder = outputs_dir.joinpath(*parts)
    inside(key, folder, outputs_dir)
    return folder


def inside(key: str, folder: Path, outputs_dir: Path) -> None:
    """Refuse a folder that resolves (through links) outside ``outputs_dir``."""
    root = outputs_dir.resolve()
    if not folder.resolve().is_relative_to(root):
        raise InvalidRequest(key, f"leads outside {OUTPUTS}/ (a symbolic link?); images are only saved inside it")


def image_bytes(image: Image.Image, png: bytes, infotext: str, fmt: str, options: SaveOptions,
                ai_marker: bool) -> tuple[bytes, str]:
    """The file's bytes and the infotext it carries: the finished PNG as is, or JPEG/WebP made from its pixels."""
    if fmt == "png":
        return png, infotext
    text = formats.file_infotext(infotext, fmt)
    data = formats.encode(image, text, fmt, quality=options.jpeg_quality, lossless=options.webp_lossless,
                          ai_marker=ai_marker)
    return data, text


class ImageSaver:
    """Writes images where and as the options say; numbering is serialised so concurrent jobs never collide."""

    def __init__(self, outputs_dir: Path):
        self._root = outputs_dir
        self._lock = threading.Lock()
        self._swept: set[Path] = set()

    def folder(self, category: str, ctx: NameContext, options: SaveOptions, grid: bool = False) -> Path:
        key, value = options.folder_option(category, grid)
        folder = resolve_outdir(key, value, self._root)
        if options.grid_save_to_dirs if grid else options.save_to_dirs:
            pattern = options.directories_filename_pattern or "[prompt_words]"
            folder = folder.joinpath(*folder_parts(pattern, ctx, options.directories_max_prompt_words))
        inside("directories_filename_pattern", folder, self._root)
        return folder

    def save(self, data: bytes, infotext: str, category: str, ctx: NameContext, options: SaveOptions,
             grid: bool = False, suffix: str = "") -> Path:
        """Write one file (and its ``.txt`` when ``save_txt``) atomically; never overwrites an existing file.
        ``suffix`` follows the rendered name, as A1111's (``-before-highres-fix``)."""
        folder = self.folder(category, ctx, options, grid)
        extension = options.extension(grid)
        if grid and not options.grid_extended_filename:
            decoration = ""
        else:
            default = "[seed]" if options.save_to_dirs else "[seed]-[prompt_spaces]"
            decoration = file_stem(options.samples_filename_pattern or default, ctx,
                                   options.directories_max_prompt_words) + suffix
        add_number = grid or options.save_images_add_number or decoration == ""
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True)
            inside("directories_filename_pattern", folder, self._root)  # a link made meanwhile
            if folder not in self._swept:
                remove_stale_temp_files(folder)
                self._swept.add(folder)
            path = self._free_path(folder, decoration, extension, add_number, grid)
            atomic_write_bytes(path, data)
            if options.save_txt:
                atomic_write_text(path.with_suffix(".txt"), infotext)
        return path

    @staticmethod
    def _free_path(folder: Path, decoration: str, extension: str, add_number: bool, grid: bool) -> Path:
        names = os.listdir(folder)
        tail = f"-{decoration}" if decoration else ""
        if add_number:
            pattern = _GRID_NUMBERED if grid else _NUMBERED
            number = max((int(m.group(1)) for n in names if (m := pattern.match(n))), default=-1) + 1
            while True:  # a file named by hand may already hold the next number
                stem = f"grid-{number:04d}" if grid else f"{number:05d}"
                path = folder / f"{stem}{tail}.{extension}"
                if not os.path.lexists(path) and not os.path.lexists(path.with_suffix(".txt")):
                    return path
                number += 1
        path, n = folder / f"{decoration}.{extension}", 1
        while os.path.lexists(path) or os.path.lexists(path.with_suffix(".txt")):
            path, n = folder / f"{decoration}-{n}.{extension}", n + 1
        return path
