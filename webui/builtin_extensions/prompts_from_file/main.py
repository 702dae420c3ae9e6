"""Prompts from file or textbox (A1111's scripts/prompts_from_file.py), on the public extension API only.

Each non-empty line is one run: either a plain prompt, or A1111's command-line syntax
``--prompt "a cat" --negative_prompt "blurry" --steps 20 --seed 1 --sampler_name "Euler a"`` (shlex quoting; the
values of --prompt and --negative_prompt run up to the next ``--``). The lines are checked when the request is
validated, so a wrong line is refused with its number before anything runs.
"""

from __future__ import annotations

import random
import shlex
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from webui.extensions.api import (IMG2IMG, TXT2IMG, Extension, ExtensionError, GenerationRequest, ModelInfo,
                                  Script, ScriptResult, ScriptRun, Txt2ImgRequest)

TITLE = "Prompts from file or textbox"
MAX_SEED = 4294967294  # A1111's random seed range for fix_seed


def _text(value: str) -> str:
    return value


def _int(value: str) -> int:
    return int(value)


def _float(value: str) -> float:
    return float(value)


def _bool(value: str) -> bool:
    # A1111 treats anything but "true" as false; a typo there would silently flip the meaning, so refuse it.
    if value.lower() not in ("true", "false"):
        raise ValueError(f"must be true or false (got {value!r})")
    return value.lower() == "true"


def _refuse(why: str) -> Callable[[str], Any]:
    def refuse(value: str) -> Any:
        raise ValueError(why)
    return refuse


# A1111's prompt_tags: option -> (parser, request field it sets; None: accepted and has nothing to do here).
OPTIONS: dict[str, tuple[Callable[[str], Any], str | None]] = {
    "sd_model": (_text, "checkpoint"),
    "outpath_samples": (_refuse("output folders cannot be chosen per line (files go to outputs/)"), None),
    "outpath_grids": (_refuse("output folders cannot be chosen per line (files go to outputs/)"), None),
    "prompt_for_display": (_refuse("is not supported (the prompt is shown as it ran)"), None),
    "prompt": (_text, "prompt"),
    "negative_prompt": (_text, "negative_prompt"),
    "styles": (_refuse("styles are not applied per line; put the style's text in --prompt"), None),
    "seed": (_int, "seed"),
    "subseed_strength": (_float, "subseed_strength"),
    "subseed": (_int, "subseed"),
    "seed_resize_from_h": (_int, "seed_resize_from_h"),
    "seed_resize_from_w": (_int, "seed_resize_from_w"),
    "sampler_index": (_refuse("sampler numbers differ between versions; use --sampler_name \"Euler a\""), None),
    "sampler_name": (_text, "sampler_name"),
    "batch_size": (_int, "batch_size"),
    "n_iter": (_int, "n_iter"),
    "steps": (_int, "steps"),
    "cfg_scale": (_float, "cfg_scale"),
    "width": (_int, "width"),
    "height": (_int, "height"),
    "restore_faces": (_bool, "restore_faces"),
    "tiling": (_bool, "tiling"),
    "do_not_save_samples": (_bool, "do_not_save_samples"),
    "do_not_save_grid": (_bool, None),  # a line never makes a grid
}
MULTI_WORD = ("prompt", "negative_prompt")  # A1111 joins the words up to the next --option


def parse_options(line: str) -> dict[str, Any]:
    """One line of ``--key value`` options as request fields; ValueError naming the option otherwise."""
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise ValueError(f"cannot be split into options ({exc})") from None
    fields: dict[str, Any] = {}
    pos = 0
    while pos < len(words):
        word = words[pos]
        if not word.startswith("--"):
            raise ValueError(f"expected an option starting with --, got {word!r}")
        key = word[2:]
        if key not in OPTIONS:
            raise ValueError(f"unknown option {word} (options: {', '.join('--' + k for k in OPTIONS)})")
        if pos + 1 >= len(words):
            raise ValueError(f"{word} needs a value")
        parse, target = OPTIONS[key]
        if key in MULTI_WORD:
            end = pos + 2
            while end < len(words) and not words[end].startswith("--"):
                end += 1
            raw = " ".join(words[pos + 1:end])
            pos = end
        else:
            raw = words[pos + 1]
            pos += 2
        try:
            value = parse(raw)
        except ValueError as exc:
            message = str(exc) if parse not in (_int, _float) else \
                f"must be a{'n integer' if parse is _int else ' number'} (got {raw!r})"
            raise ValueError(f"{word}: {message}") from None
        if target == "restore_faces":
            if value:
                raise ValueError(f"{word}: face restoration is not available in scripts; use the Extras tab")
            continue
        if target == "do_not_save_samples":
            fields["save_images"] = not value
        elif target is not None:
            fields[target] = value
    return fields


def parse_line(line: str) -> dict[str, Any]:
    """A line as request fields: A1111 reads it as options when it holds ``--``, else it is the prompt."""
    return parse_options(line) if "--" in line else {"prompt": line}


def parse_lines(text: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, fields) of every non-empty line; ValueError starting "line N:" at the first wrong one.

    Each line's fields are also checked as a request on their own (types, bounds, sampler names), so a wrong value
    is refused before the first image is made."""
    jobs = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            fields = parse_line(line)
            Txt2ImgRequest.model_validate(fields)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise ValueError(f"line {number}: --{where}: {first.get('msg', 'is not valid')}") from None
        except Exception as exc:  # noqa: BLE001 - our parse errors and the request's own checks alike
            raise ValueError(f"line {number}: {exc}") from None
        jobs.append((number, fields))
    return jobs


class PromptsFromFile(BaseModel):
    """The script's values, in A1111's ``script_args`` order."""

    checkbox_iterate: bool = Field(False, title="Iterate seed every line",
                                   description="Each line's seed is the previous line's plus its image count")
    checkbox_iterate_batch: bool = Field(False, title="Use same random seed for all lines",
                                         description="With seed -1, one random seed is chosen for every line")
    prompt_position: Literal["start", "end"] = Field(
        "start", title="Insert prompts at the",
        description="Where a line's prompt goes when the form's prompt is not empty")
    prompt_txt: str = Field("", title="List of prompt inputs", json_schema_extra={"multiline": True},
                            description="One run per line: a prompt, or --prompt \"...\" --steps 20 --seed 1 ... "
                                        "(paste a file's text here)")

    @field_validator("prompt_txt")
    @classmethod
    def _lines(cls, value: str) -> str:
        # A custom error: the message reaches the user as it is (pydantic prefixes a ValueError's with "Value error")
        try:
            lines = parse_lines(value)
        except ValueError as exc:
            raise PydanticCustomError("prompt_lines", "{reason}", {"reason": str(exc)}) from None
        if not lines:
            raise PydanticCustomError("prompt_lines", "enter at least one line (a prompt, or --prompt \"...\" options)")
        return value


def combine(base: str, line: str, position: str) -> str:
    """A line's prompt joined with the form's, as A1111 does (a space between; the line's alone if either is
    empty)."""
    if not line or not base:
        return line or base
    return f"{line} {base}" if position == "start" else f"{base} {line}"


def line_requests(request: GenerationRequest, values: PromptsFromFile) -> list[tuple[int, GenerationRequest]]:
    """The request each line runs with, seeds as A1111 gives them."""
    jobs = parse_lines(values.prompt_txt)
    seed = request.seed
    if (values.checkbox_iterate or values.checkbox_iterate_batch) and seed == -1:
        seed = random.randrange(MAX_SEED)
    out = []
    for number, fields in jobs:
        fields = {"seed": seed, **fields}
        if fields.get("prompt"):
            fields["prompt"] = combine(request.prompt, fields["prompt"], values.prompt_position)
        if fields.get("negative_prompt"):
            fields["negative_prompt"] = combine(request.negative_prompt, fields["negative_prompt"],
                                                values.prompt_position)
        try:
            line_request = type(request).model_validate({**dict(request), **fields})
        except Exception as exc:  # noqa: BLE001 - the line combined with the form can still be wrong
            raise ExtensionError(f"{TITLE}: line {number}: {exc}") from None
        out.append((number, line_request))
        if values.checkbox_iterate:
            seed = seed + request.batch_size * request.n_iter  # the form's batch, as A1111 counts
    return out


def file_text(data: bytes | None) -> str | None:
    """An uploaded file's lines (stripped, as A1111 loads them); None when the file was cleared. Bytes that are
    not UTF-8 become U+FFFD, so the wrong line shows where the file is damaged."""
    if data is None:
        return None
    return "\n".join(line.strip() for line in data.decode("utf-8", errors="replace").splitlines())


def build_ui(defaults: BaseModel) -> dict[str, Any]:
    """A1111's panel: the model's widgets plus a file upload that fills the list (the file's text is the value)."""
    import gradio as gr  # only the UI needs Gradio

    if not isinstance(defaults, PromptsFromFile):
        defaults = PromptsFromFile()
    fields = PromptsFromFile.model_fields
    iterate = gr.Checkbox(defaults.checkbox_iterate, label=fields["checkbox_iterate"].title,
                          info=fields["checkbox_iterate"].description)
    same = gr.Checkbox(defaults.checkbox_iterate_batch, label=fields["checkbox_iterate_batch"].title,
                       info=fields["checkbox_iterate_batch"].description)
    position = gr.Radio(["start", "end"], value=defaults.prompt_position, label=fields["prompt_position"].title)
    text = gr.Textbox(defaults.prompt_txt, label=fields["prompt_txt"].title, lines=4,
                      info=fields["prompt_txt"].description)
    upload = gr.File(label="Upload prompt inputs", type="binary", file_types=[".txt"])

    def load(data: bytes | None):
        content = file_text(data)
        return None, (gr.skip() if content is None else content)

    upload.upload(load, inputs=upload, outputs=[upload, text], show_progress="hidden", api_visibility="private")
    return {"checkbox_iterate": iterate, "checkbox_iterate_batch": same, "prompt_position": position,
            "prompt_txt": text}


def known_checkpoint(wanted: str, checkpoints: list[ModelInfo]) -> bool:
    """Whether ``--sd_model`` names a checkpoint: its title, file name, name or hash, or (A1111's closest match) a
    part of a title."""
    wanted = wanted.strip().lower()
    for info in checkpoints:
        names = {info.title.lower(), info.title.split(" [")[0].lower(), info.name.lower(), (info.hash or "").lower()}
        if wanted in names or wanted in info.title.lower():
            return True
    return False


def run(run: ScriptRun) -> ScriptResult:
    values = run.values if isinstance(run.values, PromptsFromFile) else PromptsFromFile()
    jobs = line_requests(run.request, values)
    checkpoints = None
    for number, request in jobs:  # a checkpoint that does not exist is refused before the first line runs
        if request.checkpoint and request.checkpoint != run.request.checkpoint:
            checkpoints = checkpoints if checkpoints is not None else run.context.checkpoints()
            if not known_checkpoint(request.checkpoint, checkpoints):
                raise ExtensionError(f"{TITLE}: line {number}: --sd_model: no checkpoint named "
                                     f"'{request.checkpoint}' (choose one of "
                                     f"{', '.join(i.name for i in checkpoints) or 'none'})")
    images, infotexts, seeds, warnings = [], [], [], []
    for done, (number, request) in enumerate(jobs):
        if run.context.interrupted:
            warnings.append(f"Interrupted after {done} of {len(jobs)} lines.")
            break
        run.context.progress(f"Line {number}: {done + 1} of {len(jobs)}", done, len(jobs))
        result = run.context.generate(request)
        images += result.images
        infotexts += result.infotexts
        seeds += result.seeds
        warnings += result.warnings
        if result.interrupted:
            warnings.append(f"Interrupted in line {number}.")
            break
    return ScriptResult(images=images, infotexts=infotexts, seeds=seeds, warnings=warnings)


def setup(ext: Extension) -> None:
    ext.add_script(Script(title=TITLE, run=run, params=PromptsFromFile, tabs=(TXT2IMG, IMG2IMG), ui=build_ui,
                          a1111_args=("checkbox_iterate", "checkbox_iterate_batch", "prompt_position",
                                      "prompt_txt"),
                          description="One run per line of the list; lines may set --steps, --seed and other "
                                      "options as A1111's script reads them."))
