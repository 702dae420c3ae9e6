"""Base64 images in and out of the API, with errors that name the field."""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, PngImagePlugin

from webui.errors import InvalidRequest

MAX_PIXELS = 4096 * 4096


def decode_image(data: str, field: str, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Accept plain base64 or a ``data:image/...;base64,`` URL (webuiapi sends the latter)."""
    if not isinstance(data, str) or not data:
        raise InvalidRequest(field, "expected a base64-encoded image")
    if data.startswith("data:"):
        _, _, data = data.partition(",")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(field, "is not valid base64") from None
    try:
        image = Image.open(io.BytesIO(raw))
        # Check the size from the header before decoding any pixels: a tiny file can claim a huge image.
        if image.width * image.height > max_pixels:
            raise InvalidRequest(field, f"image of {image.width}x{image.height} is over the pixel budget "
                                        f"of {max_pixels} pixels")
        image.load()
    except InvalidRequest:
        raise
    except (OSError, ValueError, Image.DecompressionBombError):
        raise InvalidRequest(field, "is not a readable image (PNG, JPEG or WebP expected)") from None
    return image


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
