"""A1111's file and folder name patterns (``samples_filename_pattern``, ``directories_filename_pattern``).

Tags as A1111's ``FilenameGenerator`` (modules/images.py) knows them: ``[seed]``, ``[prompt_words]``,
``[model_name]``, ``[datetime<%Y%m%d>]``... A tag that does not apply (``[batch_number]`` with one image per batch)
also drops the text just before it; an unknown tag stays as written. Every rendered part is sanitised as A1111
does (``sanitize_filename_part``) and further so that no name can leave the folder it is made for: no path
separators, no ``..``, no control characters, no Windows-reserved device names, bounded length.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import string
from dataclasses import dataclass, field

INVALID_CHARS = '#<>:"/\\|?*\n\r\t'  # A1111's invalid_filename_chars
MAX_PART = 128  # A1111's max_filename_part_length
MAX_NAME_BYTES = 200  # a whole file name, leaving room for the number, extension and a temp suffix under 255
_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}
_RE_PATTERN = re.compile(r"(.*?)(?:\[([^\[\]]+)\]|$)")
_RE_PATTERN_ARG = re.compile(r"(.*)<([^>]*)>$")
_RE_NONLETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + "]+")
_SKIP = object()  # A1111's NOTHING_AND_SKIP_PREVIOUS_TEXT


@dataclass(frozen=True)
class NameContext:
    """What one saved image's name may be made of."""

    seed: int | None = None
    prompt: str = ""
    negative_prompt: str = ""
    model_name: str = ""
    model_hash: str = ""
    sampler: str = ""
    scheduler: str = ""
    steps: int = 0
    cfg: float = 0.0
    width: int = 0
    height: int = 0
    clip_skip: int = 1
    denoising: float | None = None
    batch_index: int = 0   # the image's place in its batch
    batch_size: int = 1
    iteration: int = 0     # the batch's number in the job (A1111's p.iteration)
    n_iter: int = 1
    seeds: tuple[int, ...] = ()  # every seed of the job, for [seed_first] / [seed_last]
    vae_name: str = ""
    job_timestamp: dt.datetime = field(default_factory=dt.datetime.now)
    now: dt.datetime | None = None  # None: the time of rendering


def sanitize_part(text: str, replace_spaces: bool = True) -> str:
    """A1111's ``sanitize_filename_part`` plus what keeps a part a single, portable name."""
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate({ord(c): "_" for c in INVALID_CHARS})
    text = "".join("_" if ord(c) < 32 or ord(c) == 127 else c for c in text)  # NUL and other controls
    text = text.lstrip(" ")[:MAX_PART].rstrip(" .")
    if set(text) <= {"."}:  # "." and ".." would name a folder, not a file
        text = ""
    if text.split(".")[0].upper() in _WINDOWS_RESERVED:
        text = "_" + text
    return text


def _prompt_words(prompt: str, max_words: int) -> str:
    words = [w for w in _RE_NONLETTERS.split(prompt or "") if w] or ["empty"]
    return sanitize_part(" ".join(words[:max_words]), replace_spaces=False)


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def _datetime(ctx: NameContext, fmt: str = "", zone: str = "") -> str:
    """``[datetime]``, ``[datetime<%Y%m%d_%H%M%S>]``; a time-zone argument is accepted and ignored (local time)."""
    now = ctx.now or dt.datetime.now()
    try:
        return now.strftime(fmt or "%Y%m%d%H%M%S")
    except ValueError:  # a format the C library refuses: the default, as A1111 falls back
        return now.strftime("%Y%m%d%H%M%S")


def _replacements(ctx: NameContext, max_prompt_words: int) -> dict:
    one_image = ctx.batch_size == 1 and ctx.n_iter == 1
    return {
        "seed": lambda: ctx.seed if ctx.seed is not None else "",
        "seed_first": lambda: ctx.seeds[0] if ctx.seeds else ctx.seed,
        "seed_last": lambda: ctx.seeds[-1] if ctx.seeds else ctx.seed,
        "steps": lambda: ctx.steps,
        "cfg": lambda: f"{ctx.cfg:g}",
        "width": lambda: ctx.width,
        "height": lambda: ctx.height,
        "sampler": lambda: sanitize_part(ctx.sampler, replace_spaces=False),
        "scheduler": lambda: sanitize_part(ctx.scheduler, replace_spaces=False),
        "model_hash": lambda: ctx.model_hash,
        "model_name": lambda: sanitize_part(ctx.model_name, replace_spaces=False),
        "date": lambda: (ctx.now or dt.datetime.now()).strftime("%Y-%m-%d"),
        "datetime": lambda *args: _datetime(ctx, *args),
        "job_timestamp": lambda: ctx.job_timestamp.strftime("%Y%m%d%H%M%S"),
        "prompt_hash": lambda *args: _short_hash(ctx.prompt),
        "negative_prompt_hash": lambda *args: _short_hash(ctx.negative_prompt),
        "full_prompt_hash": lambda *args: _short_hash(f"{ctx.prompt} {ctx.negative_prompt}"),
        "prompt": lambda: sanitize_part(ctx.prompt),
        "prompt_no_styles": lambda: sanitize_part(ctx.prompt),  # styles are applied before this point
        "prompt_spaces": lambda: sanitize_part(ctx.prompt, replace_spaces=False),
        "prompt_words": lambda: _prompt_words(ctx.prompt, max_prompt_words),
        "batch_number": lambda: _SKIP if ctx.batch_size == 1 else ctx.batch_index + 1,
        "batch_size": lambda: ctx.batch_size,
        "generation_number": lambda: _SKIP if one_image else ctx.iteration * ctx.batch_size + ctx.batch_index + 1,
        "hasprompt": lambda *args: _hasprompt(ctx, *args),
        "clip_skip": lambda: ctx.clip_skip,
        "denoising": lambda: ctx.denoising if ctx.denoising is not None else _SKIP,
        "vae_filename": lambda: sanitize_part(ctx.vae_name.rsplit(".", 1)[0], replace_spaces=False),
        "user": lambda: _SKIP,  # no per-user logins in file names here
        "none": lambda: "",
    }


def _hasprompt(ctx: NameContext, *args: str) -> str:
    """``[hasprompt<cat|dog>]``: each listed word that is in the prompt (``word|fallback`` form as A1111)."""
    lower, out = ctx.prompt.lower(), ""
    for arg in args:
        if arg:
            wanted, _, fallback = arg.partition("|")
            if wanted.lower() in lower:
                out = f"{out} {wanted}"
            elif fallback:
                out = f"{out} {fallback}"
    return sanitize_part(out)


def render(pattern: str, ctx: NameContext, max_prompt_words: int = 8) -> str:
    """The pattern with its tags replaced (not yet sanitised as a whole: see ``file_stem``/``folder_parts``)."""
    table = _replacements(ctx, max_prompt_words)
    out = ""
    for match in _RE_PATTERN.finditer(pattern):
        text, tag = match.groups()
        if tag is None:
            out += text
            continue
        args: list[str] = []
        name = tag
        while (arg_match := _RE_PATTERN_ARG.match(name)) is not None:
            name, arg = arg_match.groups()
            args.insert(0, arg)
        func = table.get(name.lower())
        if func is None:
            out += f"{text}[{tag}]"  # unknown tags are kept, as A1111 keeps them
            continue
        try:
            value = func(*args)
        except TypeError:  # arguments given to a tag that takes none
            value = func()
        if value is _SKIP:
            continue
        out += f"{text}{value}"
    return out


def _fit(name: str, limit: int = MAX_NAME_BYTES) -> str:
    encoded = name.encode("utf-8")
    if len(encoded) <= limit:
        return name
    return encoded[:limit].decode("utf-8", "ignore").rstrip(" .")


def file_stem(pattern: str, ctx: NameContext, max_prompt_words: int = 8) -> str:
    """The rendered file name without number or extension, safe as one name (may be empty)."""
    return _fit(sanitize_part(render(pattern, ctx, max_prompt_words), replace_spaces=False))


def folder_parts(pattern: str, ctx: NameContext, max_prompt_words: int = 8) -> list[str]:
    """The rendered sub-folder path (``/`` may separate levels, as A1111 allows), each level one safe name."""
    rendered = render(pattern, ctx, max_prompt_words).replace("\\", "/")
    parts = [_fit(sanitize_part(part, replace_spaces=False)) for part in rendered.split("/")]
    return [part for part in parts if part]
