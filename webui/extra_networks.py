"""A1111's extra-network tags in prompts: ``<lora:name:0.8>``, ``<lora:name:te:unet>``, ``<lyco:...>``.

A tag is ``<kind:arg1:arg2...>`` (A1111's ``extra_networks.re_extra_net``); every tag is removed from the text
before it is encoded, whatever its kind, as A1111 does. Arguments with ``=`` are named (``te=0.5``, ``unet=1``).
For a LoRA the first positional argument is the name, the second the text-encoder weight (default 1, as
A1111's ``extra_networks_lora.activate``; its ``extra_networks_default_multiplier`` option only sets the weight
the Extra Networks cards insert), the third the UNet weight (default: the text-encoder weight); ``te=`` and
``unet=`` override them. ``lyco`` is A1111's alias of ``lora``. A1111 reads the tags of the prompt only: tags in the
negative prompt are removed from its text and reported, not applied.

A leaf module: no torch, gradio or fastapi.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from webui.errors import InvalidRequest

TAG = re.compile(r"<(\w+):([^>]+)>")  # A1111's extra_networks.re_extra_net
LORA_KINDS = ("lora", "lyco")  # lyco: the LyCORIS extension's name, an alias in A1111
_HASHED_LORA = re.compile(r"<lora:([^:>]+):")  # A1111's re_lora in lora_script.infotext_pasted
MAX_LORAS = 32  # per prompt: each LoRA costs a pass over the model's weights before the job's first step


@dataclass(frozen=True)
class NetworkTag:
    kind: str
    positional: tuple[str, ...]
    named: dict[str, str] = field(default_factory=dict)
    text: str = ""  # the tag as written


@dataclass(frozen=True)
class LoraUse:
    """One LoRA a prompt asks for: its name (file stem or alias) and its two weights."""

    name: str
    te_weight: float
    unet_weight: float


@dataclass(frozen=True)
class PromptNetworks:
    """What a job's prompts ask for beyond text: the LoRAs to apply and what is reported instead of applied."""

    loras: tuple[LoraUse, ...] = ()
    warnings: tuple[str, ...] = ()


def parse_tags(prompt: str) -> tuple[str, list[NetworkTag]]:
    """(prompt without its tags, the tags in order)."""
    tags: list[NetworkTag] = []

    def found(match: re.Match) -> str:
        positional: list[str] = []
        named: dict[str, str] = {}
        for item in match.group(2).split(":"):
            parts = item.split("=", 2)  # A1111: exactly one "=" makes a named argument
            if len(parts) == 2:
                named[parts[0]] = parts[1]
            else:
                positional.append(item)
        tags.append(NetworkTag(match.group(1), tuple(positional), named, match.group(0)))
        return ""

    return TAG.sub(found, prompt), tags


def strip_tags(prompt: str) -> str:
    """The text the encoder sees: every extra-network tag removed."""
    return TAG.sub("", prompt)


def _weight(tag: NetworkTag, text: str, field_name: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequest(field_name, f"{tag.text}: the {what} weight '{text}' is not a number") from None
    if not math.isfinite(value):
        raise InvalidRequest(field_name, f"{tag.text}: the {what} weight must be a finite number")
    return value


def lora_use(tag: NetworkTag, default_weight: float = 1.0, field_name: str = "prompt") -> LoraUse:
    """A1111's reading of a LoRA tag's arguments (extra_networks_lora.activate); InvalidRequest for a weight
    that is not a number, a missing name, or ``dyn=`` (dynamic rank), which this server does not do."""
    if not tag.positional or not tag.positional[0].strip():
        raise InvalidRequest(field_name, f"{tag.text}: the LoRA name is missing")
    if "dyn" in tag.named or len(tag.positional) > 3:
        raise InvalidRequest(field_name, f"{tag.text}: dyn (dynamic LoRA rank) is not supported; "
                                         "use <lora:name:te_weight:unet_weight>")
    te = _weight(tag, tag.positional[1], field_name, "text-encoder") if len(tag.positional) > 1 else default_weight
    if "te" in tag.named:
        te = _weight(tag, tag.named["te"], field_name, "text-encoder")
    unet = _weight(tag, tag.positional[2], field_name, "UNet") if len(tag.positional) > 2 else te
    if "unet" in tag.named:
        unet = _weight(tag, tag.named["unet"], field_name, "UNet")
    return LoraUse(tag.positional[0].strip(), te, unet)


def prompt_networks(prompt: str, negative_prompt: str = "", default_weight: float = 1.0,
                    field_name: str = "prompt") -> PromptNetworks:
    """The LoRAs ``prompt`` asks for, and warnings for tags that do nothing here (unknown kinds such as
    ``<hypernet:...>``, LoRA tags in the negative prompt)."""
    _, tags = parse_tags(prompt)
    loras: list[LoraUse] = []
    warnings: list[str] = []
    for tag in tags:
        if tag.kind in LORA_KINDS:
            loras.append(lora_use(tag, default_weight, field_name))
        else:
            warnings.append(f"Extra network not supported, ignored: {tag.text}")
    if len(loras) > MAX_LORAS:
        raise InvalidRequest(field_name, f"{len(loras)} LoRA tags is over this server's limit of {MAX_LORAS}")
    _, negative_tags = parse_tags(negative_prompt)
    if negative_tags:
        warnings.append("Extra networks in the negative prompt are not applied (as in A1111): "
                        + ", ".join(tag.text for tag in negative_tags))
    return PromptNetworks(tuple(loras), tuple(dict.fromkeys(warnings)))


def format_lora_hashes(pairs: list[tuple[str, str]]) -> str:
    """A1111's ``Lora hashes`` value: ``name: hash, ...``, with ``:`` and ``,`` removed from names."""
    seen: dict[str, str] = {}
    for name, short_hash in pairs:
        seen[name.translate(str.maketrans("", "", ":,"))] = short_hash
    return ", ".join(f"{name}: {short_hash}" for name, short_hash in seen.items())


def parse_lora_hashes(value: str) -> dict[str, str]:
    """``Lora hashes`` back into name -> short hash (A1111's infotext_pasted reading)."""
    hashes: dict[str, str] = {}
    for item in value.split(","):
        name, sep, short_hash = item.strip().partition(":")
        if sep and name.strip() and short_hash.strip():
            hashes[name.strip()] = short_hash.strip()
    return hashes


def rename_by_hash(prompt: str, lora_hashes: str, name_for_hash: Callable[[str], str | None]) -> str:
    """A1111's paste rule: each ``<lora:NAME:`` whose NAME has a hash in ``lora_hashes`` is renamed to the local
    file with that hash (``name_for_hash`` returns its name, or None when no local file has it)."""
    hashes = parse_lora_hashes(lora_hashes)
    if not hashes:
        return prompt

    def replace(match: re.Match) -> str:
        short_hash = hashes.get(match.group(1))
        local = name_for_hash(short_hash) if short_hash else None
        return f"<lora:{local}:" if local else match.group(0)

    return _HASHED_LORA.sub(replace, prompt)
