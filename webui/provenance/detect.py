"""Read back what an image says about itself: AI marker, invisible watermark, C2PA manifest.

Used by ``python -m webui.provenance detect`` and ``POST /studio/v1/provenance``. Only PNG, JPEG and WebP are
opened (no format that makes Pillow run external programs).
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image

from webui.provenance import marker, watermark
from webui.provenance.credentials import read_credentials

FORMATS = ("PNG", "JPEG", "WEBP")


@dataclass(frozen=True)
class ProvenanceReport:
    format: str
    size: tuple[int, int]
    ai_generated: bool             # the file declares itself AI-generated (XMP or PNG text)
    digital_source_type: str | None
    watermark: bool | None         # None: too small to tell
    watermark_score: float | None  # fraction of watermark blocks agreeing (about 0.5 when there is none)
    c2pa: dict[str, Any]           # present / valid / state / problem, see credentials.read_credentials

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["size"] = list(self.size)
        return data

    def summary(self) -> str:
        source = f"yes ({self.digital_source_type.rsplit('/', 1)[-1]})" if self.ai_generated else (
            f"no ({self.digital_source_type})" if self.digital_source_type else "no")
        if self.watermark is None:
            mark = f"not checked (under {watermark.MIN_PIXELS} pixels)"
        else:
            mark = f"{'found' if self.watermark else 'not found'} (score {self.watermark_score:.2f})"
        c2pa = self.c2pa
        if c2pa["present"] is None:
            manifest = f"not checked ({c2pa['problem']})"
        elif not c2pa["present"]:
            manifest = "none"
        else:
            manifest = "present, " + ("valid" if c2pa["valid"] else "INVALID")
            manifest += f" ({c2pa['state'] or c2pa['problem']})" if c2pa["state"] or c2pa["problem"] else ""
        return f"AI-generated marker: {source}; watermark: {mark}; C2PA manifest: {manifest}"


def inspect(data: bytes, image: Image.Image | None = None) -> ProvenanceReport:
    """Report on an image file's bytes; ``image`` is the same file already opened (and checked) by the caller.

    Raises ``ValueError`` when the bytes are not a PNG, JPEG or WebP image.
    """
    if image is None:
        image = open_image(data)
    source_type = marker.read_source_type(image.info)
    reading = watermark.detect(image)
    return ProvenanceReport(
        format=image.format or "",
        size=image.size,
        ai_generated=marker.is_ai_generated(source_type),
        digital_source_type=source_type,
        watermark=reading.found,
        watermark_score=reading.score,
        c2pa=read_credentials(data),
    )


def open_image(data: bytes, max_pixels: int = 4096 * 4096) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
        if image.width * image.height > max_pixels:  # from the header, before decoding
            raise ValueError(f"{image.width}x{image.height} is over {max_pixels} pixels")
        image.load()
    except (OSError, Image.DecompressionBombError):
        raise ValueError("not a readable PNG, JPEG or WebP image") from None
    return image
