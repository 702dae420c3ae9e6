"""Images as the A1111 API carries them: base64 PNG (optionally with a ``parameters`` infotext) and back."""

from __future__ import annotations

import base64
import io

from PIL import Image, PngImagePlugin


def png_b64_of(image: Image.Image, parameters: str | None = None) -> str:
    info = None
    if parameters:
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode()


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))
