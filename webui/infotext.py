"""Read and write the A1111 "parameters" text ("infotext") stored in generated images.

Layout (the format AUTOMATIC1111 writes and that tools like Civitai read)::

    <prompt, may span lines>
    Negative prompt: <negative, may span lines>      <- omitted when empty
    Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 512x512, ...

The last line is a comma-separated list of ``Key: value`` pairs. Values holding ``,``
``:`` or a newline are JSON-quoted so the line stays parseable. When parsing, the last
line counts as parameters only if it has at least three pairs; otherwise it is part of
the prompt (or negative prompt), exactly like A1111's ``parse_generation_parameters``.

Unlike A1111 we don't strip whitespace from every prompt line, so multi-line prompts
round-trip unchanged; only whitespace around the whole text is dropped.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from PIL import ExifTags, Image

from webui.image_io import DEFAULT_MAX_PIXELS, open_image
from webui.parameters import parse_params

__all__ = [
    "ParsedInfotext",
    "format_infotext",
    "parse_infotext",
    "read_png_infotext",
    "to_generation_fields",
]

NEGATIVE_PREFIX = "Negative prompt:"

# Canonical position of well-known keys; anything else follows in insertion order,
# and "Version" always goes last (matches A1111's create_infotext).
_KEY_ORDER: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Size",
    "Model hash",
    "Model",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Denoising strength",
    "Clip skip",
)
_LAST_KEY = "Version"

# A1111's own regex, so we accept exactly what A1111 accepts.
_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_SIZE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")
_MIN_PARAM_PAIRS = 3

# EXIF UserComment starts with an 8-byte character-code prefix (EXIF 2.3, section 4.6.5).
_USER_COMMENT_CODECS: tuple[tuple[bytes, str], ...] = (
    (b"UNICODE\x00", "utf-16"),  # byte order resolved in _decode_utf16
    (b"ASCII\x00\x00\x00", "ascii"),
    (b"JIS\x00\x00\x00\x00\x00", "shift_jis"),
    (b"\x00" * 8, "utf-8"),  # "undefined" code: best guess is UTF-8
)


@dataclass(frozen=True)
class ParsedInfotext:
    """Infotext split into its three parts; ``params`` values are raw (unquoted) strings."""

    prompt: str
    negative_prompt: str = ""
    params: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- formatting


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """Build the A1111 infotext; ``params`` is keyed by display name (``"CFG scale"``...).

    None values are skipped, and so is ``Clip skip`` of 1 (A1111's default).
    """
    lines = [prompt]
    if negative_prompt:
        lines.append(f"{NEGATIVE_PREFIX} {negative_prompt}")
    params_line = _format_params_line(params)
    if params_line:
        lines.append(params_line)
    return "\n".join(lines)


def _format_params_line(params: Mapping[str, object]) -> str:
    pairs = (f"{key}: {_quote(_format_value(value))}" for key, value in _ordered_params(params))
    return ", ".join(pairs)


def _ordered_params(params: Mapping[str, object]) -> list[tuple[str, object]]:
    """Known keys first in canonical order, extras as given, Version last; drops no-op values."""
    known = [key for key in _KEY_ORDER if key in params]
    extras = [key for key in params if key not in _KEY_ORDER and key != _LAST_KEY]
    tail = [_LAST_KEY] if _LAST_KEY in params else []
    return [(key, params[key]) for key in known + extras + tail if _should_write(key, params[key])]


def _should_write(key: str, value: object) -> bool:
    if value is None:
        return False
    if key == "Clip skip":
        return not _is_default_clip_skip(value)
    return True


def _is_default_clip_skip(value: object) -> bool:
    """Clip skip <= 1 means "no skip"; A1111 leaves it out of the infotext."""
    try:
        return int(str(value)) <= 1
    except ValueError:
        return False


def _format_value(value: object) -> str:
    """Stringify like A1111's UI does: whole floats lose their ``.0`` (7.0 -> "7")."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _quote(text: str) -> str:
    """JSON-quote values that would otherwise break the ``Key: value, ...`` line.

    A leading double quote is quoted as well, because parsers JSON-decode any value
    wrapped in quotes and would otherwise eat it.
    """
    if any(ch in text for ch in ",:\n") or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


# ----------------------------------------------------------------------------- parsing


def parse_infotext(text: str) -> ParsedInfotext:
    """Split an infotext into prompt, negative prompt and raw ``Key -> value`` params."""
    lines = text.replace("\r\n", "\n").strip().split("\n")
    params: dict[str, str] = {}
    if _looks_like_params_line(lines[-1]):
        params = _parse_params_line(lines.pop())
    prompt, negative_prompt = _split_prompt_lines(lines)
    return ParsedInfotext(prompt=prompt, negative_prompt=negative_prompt, params=params)


def _looks_like_params_line(line: str) -> bool:
    return len(_RE_PARAM.findall(line)) >= _MIN_PARAM_PAIRS


def _parse_params_line(line: str) -> dict[str, str]:
    return {key: _unquote(value) for key, value in _RE_PARAM.findall(line)}


def _unquote(value: str) -> str:
    if len(value) < 2 or not (value.startswith('"') and value.endswith('"')):
        return value
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError:
        return value
    return decoded if isinstance(decoded, str) else value


def _split_prompt_lines(lines: list[str]) -> tuple[str, str]:
    """Everything before the first "Negative prompt:" line is prompt, the rest negative."""
    for index, line in enumerate(lines):
        stripped = line.lstrip()
        if stripped.startswith(NEGATIVE_PREFIX):
            first = stripped[len(NEGATIVE_PREFIX) :].lstrip()
            return "\n".join(lines[:index]), "\n".join([first, *lines[index + 1 :]])
    return "\n".join(lines), ""


# ---------------------------------------------------------------------- typed fields

def to_generation_fields(parsed: ParsedInfotext) -> dict[str, object]:
    """Map parsed params to typed generation fields, skipping missing or unparsable ones.

    One key per request field that ``webui.parameters`` declares an infotext key for (prompt, negative_prompt,
    steps, sampler_name, scheduler, cfg_scale, seed, width, height, clip_skip, denoising_strength, the inpainting
    fields...), plus model_hash and model_name. Old fused samplers (``"DPM++ 2M Karras"``) are split into sampler
    and scheduler.
    """
    return parse_params(parsed.prompt, parsed.negative_prompt, parsed.params)


# -------------------------------------------------------------------- reading images


def read_png_infotext(source: str | os.PathLike[str] | Image.Image, *,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> str | None:
    """The infotext embedded in an image file (or open PIL image), or None if it has none.

    PNG keeps it in a "parameters" text chunk; JPEG and WebP in the EXIF UserComment. Files are opened
    through ``webui.image_io`` (PNG/JPEG/WebP only, pixel budget, capped text chunks): raises InvalidRequest.
    """
    if isinstance(source, Image.Image):
        return _infotext_from_image(source)
    return _infotext_from_image(open_image(source, "image", max_pixels=max_pixels, keep_metadata=True))


def _infotext_from_image(image: Image.Image) -> str | None:
    parameters = image.info.get("parameters")
    if isinstance(parameters, str) and parameters:
        return parameters
    return _exif_user_comment(image)


def _exif_user_comment(image: Image.Image) -> str | None:
    try:
        exif_ifd = image.getexif().get_ifd(ExifTags.IFD.Exif)
    except (SyntaxError, ValueError, OSError, EOFError, IndexError, struct.error):
        return None  # damaged EXIF (Pillow parses it lazily, here): no infotext, not a crash
    raw = exif_ifd.get(ExifTags.Base.UserComment)
    if isinstance(raw, str):
        return raw.rstrip("\x00") or None
    if isinstance(raw, bytes):
        return _decode_user_comment(raw) or None
    return None


def _decode_user_comment(raw: bytes) -> str:
    for prefix, codec in _USER_COMMENT_CODECS:
        if raw.startswith(prefix):
            payload = raw[len(prefix) :]
            text = _decode_utf16(payload) if codec == "utf-16" else payload.decode(codec, "replace")
            return text.rstrip("\x00")
    return raw.decode("utf-8", "replace").rstrip("\x00")  # no prefix: non-conforming writer


def _decode_utf16(payload: bytes) -> str:
    """EXIF says big-endian (what A1111/piexif write), but some tools write little-endian."""
    if payload.startswith((b"\xfe\xff", b"\xff\xfe")):
        return payload.decode("utf-16", "replace")
    little_endian = len(payload) >= 2 and payload[0] != 0 and payload[1] == 0
    return payload.decode("utf-16-le" if little_endian else "utf-16-be", "replace")
