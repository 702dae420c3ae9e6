"""Read back what an image says about itself: AI marker, invisible watermark, C2PA manifest.

Used by ``python -m webui.provenance detect`` and ``POST /studio/v1/provenance``. Files are opened by
``webui.image_io`` like every other upload (PNG, JPEG and WebP only), keeping the metadata this module reads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image

from webui import image_io
from webui.image_io import DEFAULT_MAX_PIXELS
from webui.provenance import marker, watermark
from webui.provenance.credentials import read_credentials

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

    Raises ``InvalidRequest`` when the bytes are not an acceptable image.
    """
    if image is None:
        image = open_image(data)
    source_type = marker.read_source_type(image.info)
    reading = watermark.detect(image)
    return ProvenanceReport(
        format=image.format or _format_of(data),
        size=image.size,
        ai_generated=marker.is_ai_generated(source_type),
        digital_source_type=source_type,
        watermark=reading.found,
        watermark_score=reading.score,
        c2pa=read_credentials(data),
    )


def _format_of(data: bytes) -> str:
    """The container format from its magic bytes (the guarded reader hands back a copy without ``format``)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return ""


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open with the app's guarded reader (allow-listed formats, pixel budget, capped text), metadata kept.

    Raises ``InvalidRequest`` (field "image") when the bytes are not an acceptable image.
    """
    return image_io.open_image(data, "image", max_pixels=max_pixels, keep_metadata=True)
