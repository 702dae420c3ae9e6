"""The finished image in A1111's other file formats: JPEG and WebP, infotext in the EXIF UserComment.

A1111 writes ``piexif.helper.UserComment.dump(infotext, encoding="unicode")``: the 8-byte ``UNICODE\\0`` code then
UTF-16 big-endian text, in the Exif IFD. The AI-generated marker goes in the file's XMP packet (Pillow writes it for
both formats), and the watermark is in the pixels already. The C2PA manifest is signed over PNG bytes only, so a
JPEG or WebP file does not carry one and its infotext says so instead of claiming it.
"""

from __future__ import annotations

import io

from PIL import ExifTags, Image

from webui.provenance import marker

FORMATS = ("png", "jpg", "jpeg", "webp")
_C2PA_CLAIM = "Content credentials: C2PA"
NO_C2PA = "Content credentials skipped: only PNG files carry a C2PA manifest here"
JPEG_MAX_SIDE = 65_535  # the JPEG format's own limit; WebP's is 16,383


def file_infotext(infotext: str, fmt: str) -> str:
    """The infotext a file of ``fmt`` may carry: a PNG keeps its manifest claim, other formats say it is absent."""
    if fmt == "png" or _C2PA_CLAIM not in infotext:
        return infotext
    return infotext.replace(_C2PA_CLAIM, NO_C2PA)


def user_comment(text: str) -> bytes:
    return b"UNICODE\x00" + text.encode("utf-16-be")


def encode(image: Image.Image, infotext: str, fmt: str, *, quality: int = 80, lossless: bool = False,
           ai_marker: bool = True) -> bytes:
    """JPEG or WebP bytes of ``image`` with ``infotext`` (already made for that format, see ``file_infotext``)."""
    fmt = "jpg" if fmt == "jpeg" else fmt
    if fmt not in ("jpg", "webp"):
        raise ValueError(f"not a JPEG or WebP format: {fmt}")
    limit = JPEG_MAX_SIDE if fmt == "jpg" else 16_383
    if max(image.size) > limit:
        raise ValueError(f"{image.width}x{image.height} is too large for {fmt.upper()} (at most {limit} per side)")
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = user_comment(infotext)
    extra = {"xmp": marker.xmp_packet().encode("utf-8")} if ai_marker else {}
    buffer = io.BytesIO()
    rgb = image.convert("RGB")
    if fmt == "jpg":
        rgb.save(buffer, format="JPEG", quality=quality, exif=exif.tobytes(), **extra)
    else:
        rgb.save(buffer, format="WEBP", quality=quality, lossless=lossless, exif=exif.tobytes(), **extra)
    return buffer.getvalue()
