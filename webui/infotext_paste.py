"""What pasting an infotext into a tab sets ("Send to txt2img/img2img"), and what it cannot set.

Pure: the parameter table (``webui.parameters``) decides which keys become which request fields. Like A1111's
paste, a few fields take their default when the text leaves them out (A1111 omits them at their default):
the negative prompt is emptied, ``Clip skip`` is 1 and, once a sampler is given, ``Schedule type`` Automatic. Every other key we cannot apply (a
field the tab lacks, a value we do not support, a key no row reads, e.g. ``Hires upscale`` or an extension's
``ADetailer model``) is named in ``not_applied``, so nothing is dropped silently.

A leaf module: no torch, gradio or fastapi.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from webui.infotext import parse_infotext
from webui.parameters import BY_NAME, NEGATIVE_KEY, PARAMS, PROMPT_KEY
from webui.samplers import AUTOMATIC, sampler_names, schedules_for

__all__ = ["Paste", "paste"]

CHECKPOINT_KEYS = ("Model hash", "Model")
# Keys that describe the image rather than set anything: nothing to apply, nothing to report.
RECORD_KEYS = frozenset({
    "Version", "Lora hashes", "TI hashes", "Hashes", "Watermark", "Watermark skipped", "Content credentials",
    "Safety checker", "VAE hash", *CHECKPOINT_KEYS,
})


@dataclass(frozen=True)
class Paste:
    """``values``: request field -> value for the tab's fields; ``model_hash``/``model_name``: the checkpoint the
    image was made with (None when the text has none); ``not_applied``: infotext keys that set nothing."""

    values: dict[str, Any] = field(default_factory=dict)
    model_hash: str | None = None
    model_name: str | None = None
    not_applied: tuple[str, ...] = ()


def paste(text: str, fields: Collection[str]) -> Paste:
    """The values ``text`` sets on a tab whose request fields are ``fields``."""
    parsed = parse_infotext(text)
    raw = {PROMPT_KEY: parsed.prompt, NEGATIVE_KEY: parsed.negative_prompt, **parsed.params}
    values: dict[str, Any] = {}
    refused: list[str] = []
    rules = {rule.key: rule for p in PARAMS for rule in p.infotext}
    for key, value in raw.items():
        if key in RECORD_KEYS:
            continue
        rule = rules.get(key)
        try:
            got = rule.read(value if key in (PROMPT_KEY, NEGATIVE_KEY) else value.strip()) if rule else None
        except ValueError:
            got = None
        if not got or not set(got) <= set(fields) or any(_problem(name, v) for name, v in got.items()):
            refused.append(key)
            continue
        values.update(got)
    _sampling(values, fields, refused)
    if "clip_skip" in fields and "clip_skip" not in values:
        values["clip_skip"] = BY_NAME["clip_skip"].default  # A1111 leaves clip skip 1 out of the text
    return Paste(values, parsed.params.get("Model hash") or None, parsed.params.get("Model") or None,
                 tuple(refused))


def _problem(name: str, value: Any) -> str | None:
    """Type and bounds of the row; the sampler and schedule are checked together in ``_sampling``."""
    param = BY_NAME.get(name)
    if param is None or name in ("sampler_name", "scheduler"):
        return None
    if param.multiple_of and isinstance(value, int) and value % param.multiple_of:
        return f"must be a multiple of {param.multiple_of}"
    return param.problem(value)


def _sampling(values: dict[str, Any], fields: Collection[str], refused: list[str]) -> None:
    """The sampler and its schedule set together, as one choice: a sampler we lack sets neither."""
    sampler = values.get("sampler_name")
    if sampler is not None and sampler not in sampler_names():
        values.pop("sampler_name")
        values.pop("scheduler", None)
        refused.append("Sampler")
        return
    schedule = values.get("scheduler")
    if sampler is None:
        if schedule is not None and schedule not in schedules_for(BY_NAME["sampler_name"].default):
            values.pop("scheduler")  # the tab's sampler is unknown here: keep only what every sampler has
            refused.append("Schedule type")
        return
    if "scheduler" not in fields:
        return
    if schedule is None:
        values["scheduler"] = AUTOMATIC  # A1111 reads a text without "Schedule type" as Automatic
    elif schedule not in schedules_for(sampler):
        values["scheduler"] = AUTOMATIC
        refused.append("Schedule type")
