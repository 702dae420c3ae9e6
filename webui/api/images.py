"""Base64 images in and out of the API, with errors that name the field."""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Iterable

from PIL import Image, PngImagePlugin

from webui.errors import InvalidRequest
from webui.image_io import DEFAULT_FORMATS, DEFAULT_MAX_PIXELS, open_image

MAX_PIXELS = DEFAULT_MAX_PIXELS


def decode_image(data: str, field: str, max_pixels: int = MAX_PIXELS, *,
                 formats: Iterable[str] = DEFAULT_FORMATS, keep_metadata: bool = False) -> Image.Image:
    """Accept plain base64 or a ``data:image/...;base64,`` URL (webuiapi sends the latter).

    Opened by ``webui.image_io.open_image``: allow-listed formats, pixel budget from the header, capped PNG
    text, EXIF/XMP dropped unless ``keep_metadata`` (PNG Info).
    """
    if not isinstance(data, str) or not data:
        raise InvalidRequest(field, "expected a base64-encoded image")
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(field, "is not valid base64") from None
    return open_image(raw, field, max_pixels=max_pixels, formats=formats, keep_metadata=keep_metadata)


def png_base64(png: bytes) -> str:
    """A finished PNG from the services (infotext, AI marker, watermark, C2PA applied) as the API returns it.

    Sent byte for byte: re-encoding would drop the marks and break the C2PA manifest's hash of the file.
    """
    return base64.b64encode(png).decode("ascii")


def encode_png(image: Image.Image, infotext: str | None = None) -> str:
    """Encode an image that is not a finished output (a progress preview, a plain resize); no provenance marks."""
    pnginfo = None
    if infotext:
        pnginfo = PngImagePlugin.PngInfo()
        pnginfo.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=pnginfo)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
