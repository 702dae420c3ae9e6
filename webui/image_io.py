"""The one safe way to open an image someone sent us: API base64, Gradio uploads, batch folders, PNG Info.

Rules, in order:

1. Only regular files (no FIFOs or devices) and only an allow-list of formats (PNG, JPEG, WebP by default).
   ``Image.open(formats=...)`` means Pillow never tries any other plugin: an EPS never reaches Ghostscript.
2. A PNG's text chunks are counted (decompressed, with a bounded inflater) before Pillow sees the file, so a
   tiny file full of zTXt chunks cannot expand into megabytes of ``info``. Pillow's module-wide limits
   (``PngImagePlugin.MAX_TEXT_*``) are left alone: they are global state shared with every other caller.
3. Size, zero size and aspect ratio are checked from the header, before any pixel is decoded.
4. The result is fully loaded and detached from the file. For generation (the default) the EXIF orientation
   is applied and every metadata carrier (EXIF with GPS, XMP, ICC, comments) is dropped; only the A1111
   ``parameters`` text and pixel semantics (``transparency``) stay. PNG Info asks for the metadata as read.

Every refusal is an ``InvalidRequest`` naming the field; no message names a server path.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from collections.abc import Iterable
from contextlib import contextmanager
from typing import IO, Iterator

from PIL import Image, ImageOps, UnidentifiedImageError

from webui.errors import InvalidRequest

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "MAX_TEXT_BYTES",
    "OPTIONAL_FORMATS",
    "accepted_formats_text",
    "open_image",
    "parse_image_formats",
    "strip_metadata",
]

DEFAULT_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP")
# Formats a server may add by setting. None of them runs an external program; EPS/PS/PDF never qualify.
OPTIONAL_FORMATS: tuple[str, ...] = ("BMP", "GIF", "TIFF", "ICO", "PPM", "TGA", "QOI")
DEFAULT_MAX_PIXELS = 4096 * 4096
MAX_TEXT_BYTES = 1024 * 1024  # an A1111 infotext is a few KB
MAX_TEXT_CHUNKS = 1024
MAX_ASPECT = 64  # 1x4096 strips are not pictures anyone generates from

# Kept when metadata is stripped: the infotext (extras re-embeds it) and what changes how pixels read.
_KEPT_INFO = ("parameters", "transparency")
_DISPLAY = {"WEBP": "WebP"}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_INFLATE_STEP = 64 * 1024

# Only to name a refused format in the message; Pillow never parses these.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (_PNG_SIGNATURE, "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"%!PS", "EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"%PDF", "PDF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"icns", "ICNS"),
    (b"qoif", "QOI"),
    (b"DDS ", "DDS"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xffO\xffQ", "JPEG 2000"),
    (b"\x01\xda", "SGI"),
    (b"Image type:", "IM"),
    (b"<svg", "SVG"),
    (b"<?xml", "SVG"),
)


def accepted_formats_text(formats: Iterable[str] = DEFAULT_FORMATS) -> str:
    """``"PNG, JPEG or WebP"``: the allow-list as users read it."""
    names = [_DISPLAY.get(name, name) for name in formats]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def parse_image_formats(value: str | Iterable[str]) -> tuple[str, ...]:
    """Validate a setting such as ``"PNG,JPEG,WEBP,BMP"``; raises ValueError naming what is wrong."""
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(dict.fromkeys(item.strip().upper() for item in items if item.strip()))
    if not names:
        raise ValueError("name at least one image format, e.g. PNG,JPEG,WEBP")
    allowed = DEFAULT_FORMATS + OPTIONAL_FORMATS
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise ValueError(f"{', '.join(unknown)} cannot be enabled; choose from {', '.join(allowed)}")
    return names


def open_image(source: bytes | str | os.PathLike[str], field: str, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               formats: Iterable[str] = DEFAULT_FORMATS, max_text_bytes: int = MAX_TEXT_BYTES,
               keep_metadata: bool = False) -> Image.Image:
    """Open an untrusted image; see the module docstring. ``keep_metadata`` is for PNG Info only."""
    formats = tuple(formats)
    with _binary(source, field) as fp:
        head = fp.read(16)
        if not head:
            raise InvalidRequest(field, "is empty, not an image")
        if head.startswith(_PNG_SIGNATURE):
            _check_png_text(fp, field, max_text_bytes)
        fp.seek(0)
        try:
            with Image.open(fp, formats=list(formats)) as image:
                _check_header(image, field, max_pixels)
                image.load()
                if keep_metadata:
                    return image.copy()
                ImageOps.exif_transpose(image, in_place=True)  # users expect the camera's rotation
                return strip_metadata(image)
        except InvalidRequest:
            raise
        except UnidentifiedImageError:
            raise InvalidRequest(field, _refusal(head, formats)) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            # Pillow's own guard (a warning only when filters turn it into an error): same answer as ours.
            raise InvalidRequest(field, f"is over the pixel budget of {max_pixels} pixels") from None
        except (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, zlib.error):
            raise InvalidRequest(field, f"is not a readable image (damaged or truncated; "
                                        f"{accepted_formats_text(formats)} expected)") from None


def strip_metadata(image: Image.Image) -> Image.Image:
    """A copy without EXIF (GPS included), XMP, ICC, comments or other text; keeps ``parameters``.

    Apply ``ImageOps.exif_transpose`` first if the orientation matters: it lives in the EXIF dropped here.
    """
    clean = image.copy()  # a plain Image: no file handle, no JPEG app segments, no cached EXIF
    clean.info = {key: image.info[key] for key in _KEPT_INFO if key in image.info}
    return clean


@contextmanager
def _binary(source: bytes | str | os.PathLike[str], field: str) -> Iterator[IO[bytes]]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(bytes(source))
        return
    try:
        # O_NONBLOCK so a FIFO cannot hang us before fstat says what it is; regular files ignore it.
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        raise InvalidRequest(field, "cannot be read (missing or not accessible)") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidRequest(field, "is not a regular file")
    with os.fdopen(fd, "rb") as fp:
        yield fp


def _check_header(image: Image.Image, field: str, max_pixels: int) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidRequest(field, f"is {width}x{height}: an image needs at least one pixel")
    if width * height > max_pixels:
        raise InvalidRequest(field, f"is {width}x{height}, over the pixel budget of {max_pixels} pixels")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise InvalidRequest(field, f"is {width}x{height}: an aspect ratio over {MAX_ASPECT}:1 is not accepted")


def _refusal(head: bytes, formats: tuple[str, ...]) -> str:
    accepted = accepted_formats_text(formats)
    found = _sniff(head)
    if found is None or found.replace(" ", "").upper() in formats:  # an allowed format Pillow could not parse
        return f"is not a readable image ({accepted} expected)"
    return f"{found} images are not accepted ({accepted})"


def _sniff(head: bytes) -> str | None:
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    if head[4:8] == b"ftyp":
        return "AVIF" if head[8:12] in (b"avif", b"avis") else "HEIF"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"1234567" and head[2:3].isspace():
        return "PPM"
    return next((name for magic, name in _MAGIC if head.startswith(magic)), None)


def _check_png_text(fp: IO[bytes], field: str, max_text_bytes: int) -> None:
    """Walk the PNG chunk list, inflating text chunks with a bounded inflater; refuse if they add up too much.

    Structural damage is left for Pillow to report; only text totals are judged here.
    """
    fp.seek(len(_PNG_SIGNATURE))
    total = count = 0
    too_much = f"text chunks exceed {max_text_bytes} bytes; strip the metadata and send the image again"
    while True:
        header = fp.read(8)
        if len(header) < 8:
            return
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IEND":
            return
        if kind not in _TEXT_CHUNKS:
            fp.seek(length + 4, io.SEEK_CUR)  # data + CRC
            continue
        count += 1
        if count > MAX_TEXT_CHUNKS:
            raise InvalidRequest(field, f"has more than {MAX_TEXT_CHUNKS} text chunks")
        if length > max_text_bytes:
            raise InvalidRequest(field, too_much)
        data = fp.read(length)
        fp.seek(4, io.SEEK_CUR)
        total += _text_size(kind, data, max_text_bytes - total + 1)
        if total > max_text_bytes:
            raise InvalidRequest(field, too_much)


def _text_size(kind: bytes, data: bytes, budget: int) -> int:
    """Decompressed size of one text chunk, counting no further than ``budget``."""
    if kind == b"tEXt":
        return len(data)
    _, _, rest = data.partition(b"\0")
    if kind == b"zTXt":
        return _inflated_size(rest[1:], budget)
    # iTXt: compression flag, method, language\0, translated keyword\0, text
    compressed = rest[:1] == b"\x01"
    _, _, rest = rest[2:].partition(b"\0")
    _, _, text = rest.partition(b"\0")
    return _inflated_size(text, budget) if compressed else len(text)


def _inflated_size(data: bytes, budget: int) -> int:
    inflater = zlib.decompressobj()
    size = 0
    try:
        while size <= budget and not inflater.eof:
            out = inflater.decompress(data, _INFLATE_STEP)
            data = inflater.unconsumed_tail
            if not out and not data:
                break  # input used up and nothing left buffered
            size += len(out)
    except zlib.error:
        return size  # Pillow drops a corrupt compressed text chunk; what we counted is all it could hold
    return size
