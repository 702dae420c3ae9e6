"""The explicit "AI-generated" marker: IPTC digital source type in an XMP packet and in plain PNG text.

XMP (``iTXt`` chunk ``XML:com.adobe.xmp``) is what photo tools and platforms read; the ``DigitalSourceType`` text
chunk says the same to anything that lists PNG text (our PNG Info, A1111's, ``exiftool``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from xml.sax.saxutils import quoteattr

from PIL import PngImagePlugin

from webui import VERSION

TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
CREATOR_TOOL = f"Stable Studio {VERSION}"
XMP_KEY = "XML:com.adobe.xmp"
TEXT_KEY = "DigitalSourceType"

# Attribute (DigitalSourceType="...") or element (<...:DigitalSourceType>...</...>) form; a regex rather than an
# XML parser, so a hostile packet cannot make reading it expensive.
_XMP_SOURCE_TYPE = re.compile(r"DigitalSourceType(?:\s*=\s*[\"']|>)\s*(https?://[^\"'<\s]{1,200})")
_SOURCE_TYPE_URI = re.compile(r"https?://cv\.iptc\.org/newscodes/digitalsourcetype/\w{1,64}")


def xmp_packet(source_type: str = TRAINED_ALGORITHMIC_MEDIA, creator_tool: str = CREATOR_TOOL) -> str:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        f"    Iptc4xmpExt:DigitalSourceType={quoteattr(source_type)}\n"
        f"    xmp:CreatorTool={quoteattr(creator_tool)}/>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="r"?>'
    )


def add_marker(pnginfo: PngImagePlugin.PngInfo) -> None:
    """Add the XMP packet and the plain-text twin (plus the standard PNG ``Software`` keyword)."""
    pnginfo.add_itxt(XMP_KEY, xmp_packet(), zip=False)  # XMP in PNG must be uncompressed iTXt
    pnginfo.add_text(TEXT_KEY, TRAINED_ALGORITHMIC_MEDIA)
    pnginfo.add_text("Software", CREATOR_TOOL)


def read_source_type(info: Mapping[str, object]) -> str | None:
    """The IPTC digital source type an image declares (PIL ``image.info``), from PNG text or XMP; None if none."""
    text = info.get(TEXT_KEY)
    if isinstance(text, str) and (match := _SOURCE_TYPE_URI.fullmatch(text.strip())):
        return match.group(0)
    xmp = info.get("xmp", info.get(XMP_KEY))  # Pillow files PNG, JPEG and WebP XMP under "xmp"
    if isinstance(xmp, bytes):
        xmp = xmp.decode("utf-8", "replace")
    if isinstance(xmp, str) and (match := _XMP_SOURCE_TYPE.search(xmp)):
        return match.group(1)
    return None


def is_ai_generated(source_type: str | None) -> bool:
    return source_type is not None and source_type.rstrip("/").endswith(
        ("/trainedAlgorithmicMedia", "/compositeWithTrainedAlgorithmicMedia"))
