"""The ``parameters`` object of A1111's ``POST /sdapi/v1/png-info``, as A1111 1.10 builds it.

A1111 answers with ``infotext_utils.parse_generation_parameters``: the raw ``Key: value`` strings, ``WxH`` values
split into ``Key-1``/``Key-2``, ``Prompt``/``Negative prompt`` with each line stripped, and the defaults it adds for
keys an image leaves out (``Clip skip: "1"``, ``Schedule type: "Automatic"``, ``RNG: "GPU"``, the hires and inpaint
defaults...). Clients written against A1111 read those keys, so we give them the same shape, value types included
(strings from the text; the few numeric and boolean defaults A1111 adds as numbers and booleans).

One deliberate difference: an old fused sampler name (``Sampler: DPM++ 2M Karras``) with no ``Schedule type`` key
gives ``Schedule type: "Karras"`` instead of ``"Automatic"``; the sampler is left as written. A1111 splits it the
same way when it pastes such a text into its UI, so the schedule it reports here was never the one it applies.

A leaf module: no torch, gradio or fastapi.
"""

from __future__ import annotations

import json
import re
from typing import Any

from webui.prompts import BREAK_MARKER, parse_prompt_attention
from webui.samplers import split_fused_sampler_name

__all__ = ["a1111_parameters"]

_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')  # A1111's re_param
_RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")  # A1111's re_imagesize: no spaces
_RE_VERSION = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)(?:-(?:RC)?(\d+))?")
_NEGATIVE = "Negative prompt:"

# Added when the text lacks them, in A1111's order and with A1111's value types.
_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
)
_LATE_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
)


def a1111_parameters(text: str) -> dict[str, Any]:
    """The dict A1111 1.10's png-info route returns for infotext ``text`` (an empty text gives its defaults)."""
    *lines, last = text.strip().split("\n")
    if len(_RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative = _prompts(lines)

    res: dict[str, Any] = {}
    for key, value in _RE_PARAM.findall(last):
        value = _unquote(value)
        size = _RE_IMAGESIZE.match(value)
        if size:
            res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
        else:
            res[key] = value
    res["Prompt"], res["Negative prompt"] = prompt, negative
    res.setdefault("Clip skip", "1")  # A1111 leaves out clip skip 1
    if "Hypernet" in res:
        res["Prompt"] += f"<hypernet:{res['Hypernet']}:{res.get('Hypernet strength', '1.0')}>"
    if "Hires resize-1" not in res:
        res["Hires resize-1"] = res["Hires resize-2"] = 0
    for key, default in _DEFAULTS:
        res.setdefault(key, default)
    _old_hires_first_pass(res)
    if "Schedule type" not in res and isinstance(res.get("Sampler"), str):
        _, fused = split_fused_sampler_name(res["Sampler"])
        if fused:
            res["Schedule type"] = fused
    for key, default in _LATE_DEFAULTS:
        res.setdefault(key, default)
    if "Cache FP16 weight for LoRA" not in res and res["FP8 weight"] != "Disable":
        res["Cache FP16 weight for LoRA"] = False
    if "Emphasis" not in res and _uses_emphasis(prompt, negative):
        res["Emphasis"] = "Original"
    res.setdefault("Refiner switch by sampling steps", False)
    _backcompat(res)
    return res


def _prompts(lines: list[str]) -> tuple[str, str]:
    """A1111 strips every line; from the first "Negative prompt:" line on, lines go to the negative prompt
    (a later such line loses its prefix too, and an empty part adds no line break: A1111's own quirks)."""
    prompt = negative = ""
    done_with_prompt = False
    for line in lines:
        line = line.strip()
        if line.startswith(_NEGATIVE):
            done_with_prompt = True
            line = line[len(_NEGATIVE):].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    return prompt, negative


def _unquote(value: str) -> str:
    if not value or value[0] != '"' or value[-1] != '"':
        return value
    try:
        decoded = json.loads(value)
    except ValueError:
        return value
    return decoded if isinstance(decoded, str) else value


def _old_hires_first_pass(res: dict[str, Any]) -> None:
    """Texts from before A1111 1.0 give the first pass size; A1111 turns it into Size and Hires resize."""
    first_w, first_h = res.get("First pass size-1"), res.get("First pass size-2")
    if first_w is None or first_h is None:
        return
    first_w, first_h = int(first_w), int(first_h)
    width, height = int(res.get("Size-1", 512)), int(res.get("Size-2", 512))
    if first_w == 0 or first_h == 0:
        first_w, first_h = _old_first_pass_dimensions(width, height)
    res["Size-1"], res["Size-2"] = first_w, first_h
    res["Hires resize-1"], res["Hires resize-2"] = width, height


def _old_first_pass_dimensions(width: int, height: int) -> tuple[int, int]:
    """A1111's ``old_hires_fix_first_pass_dimensions``: the largest multiple of 64 with about 512² pixels."""
    desired = 512 * 512
    actual = width * height
    scale = (desired / actual) ** 0.5
    return int(round(width * scale / 64) * 64), int(round(height * scale / 64) * 64)


def _uses_emphasis(prompt: str, negative: str) -> bool:
    pieces = parse_prompt_attention(prompt) + parse_prompt_attention(negative)
    return any(weight != 1.0 and text != BREAK_MARKER[0] for text, weight in pieces)


def _version(text: object) -> tuple[int, int, int, int] | None:
    """A1111's ``Version`` ("v1.7.0-225-g...", "v1.10.1") as comparable numbers; None when unparsable."""
    match = _RE_VERSION.match(text) if isinstance(text, str) else None
    if match is None:
        return None
    major, minor, patch, commits = match.groups()
    return int(major), int(minor), int(patch), int(commits or 0)


def _backcompat(res: dict[str, Any]) -> None:
    """The compatibility keys A1111 (``infotext_versions.backcompat``) adds for texts of older versions."""
    version = _version(res.get("Version"))
    if version is None:
        return
    if version < (1, 6, 0, 0) and "[" in res.get("Prompt", ""):
        res["Old prompt editing timelines"] = True
    if version < (1, 6, 0, 0) and res.get("Sampler", "") in ("DDIM", "PLMS"):
        res["Pad conds v0"] = True
    if version < (1, 7, 0, 225):
        res["Downcast alphas_cumprod"] = True
    if version < (1, 8, 0, 0) and res.get("Refiner"):
        res["Refiner switch by sampling steps"] = True
