"""The one function that turns a generated image into its final PNG: every saved file and API image comes from it.

Order matters: the watermark changes pixels, so it goes first; the infotext then records what was applied; the
C2PA manifest signs the finished file, so it goes last (a manifest covers the bytes it was made for).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

from PIL import Image, PngImagePlugin

from webui.infotext import format_infotext
from webui.provenance import marker, watermark
from webui.provenance.credentials import ContentCredentials, CredentialsUnavailable
from webui.provenance.policy import ProvenancePolicy


@dataclass(frozen=True)
class FinalPng:
    image: Image.Image  # the pixels delivered (watermarked when the watermark was applied)
    png: bytes          # the file: infotext, marker, watermark and manifest as the policy asked
    infotext: str       # as embedded, including what provenance was applied or why not


def finish_png(image: Image.Image, prompt: str, negative_prompt: str, params: Mapping[str, object],
               policy: ProvenancePolicy, credentials: ContentCredentials | None, *, title: str) -> FinalPng:
    """Apply the policy's marks to one image; a mark that cannot be applied is recorded, never fatal."""
    applied: dict[str, object] = {}
    if policy.watermark:
        marked = watermark.embed(image)
        if marked is None:
            applied["Watermark skipped"] = f"image under {watermark.MIN_PIXELS} pixels (256x256)"
        else:
            image = marked
            applied["Watermark"] = watermark.PAYLOAD.decode("ascii")
    if policy.c2pa:
        applied["Content credentials"] = "C2PA"
    infotext = format_infotext(prompt, negative_prompt, {**params, **applied})
    png = _png(image, infotext, policy.ai_marker)
    if policy.c2pa:
        try:
            if credentials is None:
                raise CredentialsUnavailable("no signer configured")
            png = credentials.sign(png, title=title, infotext=infotext)
        except CredentialsUnavailable as exc:
            # The image is kept; its infotext must not claim a manifest it does not carry.
            del applied["Content credentials"]
            applied["Content credentials skipped"] = str(exc)
            infotext = format_infotext(prompt, negative_prompt, {**params, **applied})
            png = _png(image, infotext, policy.ai_marker)
    return FinalPng(image=image, png=png, infotext=infotext)


def _png(image: Image.Image, infotext: str, ai_marker: bool) -> bytes:
    pnginfo = PngImagePlugin.PngInfo()
    pnginfo.add_text("parameters", infotext)
    if ai_marker:
        marker.add_marker(pnginfo)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=pnginfo)
    return buffer.getvalue()
