"""Prompt matrix (A1111's scripts/prompt_matrix.py): ``base | a | b | c`` makes the 2^3 prompts holding every
combination of the optional parts, one image each, shown in a grid labelled with the parts (struck through where
left out)."""

from __future__ import annotations

import math
import random
from typing import Literal

from PIL import Image
from pydantic import BaseModel, Field

from webui.extensions.api import ExtensionError, GridLabel, ScriptResult, ScriptRun, labelled_grid

TITLE = "Prompt matrix"
MAX_GRID_PIXELS = 200_000_000  # A1111's img_max_size_mp default (200 MP)
A1111_ARGS = ("put_at_start", "different_seeds", "prompt_type", "variations_delimiter", "margin_size")


class PromptMatrixValues(BaseModel):
    put_at_start: bool = Field(False, title="Set at prompt start",
                               description="The varied parts go before the first part instead of after it")
    different_seeds: bool = Field(False, title="Random seeds",
                                  description="A different seed for each image (seed, seed+1, ...)")
    prompt_type: Literal["positive", "negative"] = Field("positive", title="Prompt type")
    variations_delimiter: Literal["comma", "space"] = Field("comma", title="Joining char")
    margin_size: int = Field(0, ge=0, le=500, title="Grid margins")


def matrix_prompts(text: str, put_at_start: bool = False, delimiter: str = ", ") -> list[str]:
    """Every combination of ``text``'s ``|`` parts after the first, in A1111's order: combination ``n`` holds
    part ``i + 1`` when bit ``i`` of ``n`` is set."""
    parts = text.split("|")
    prompts = []
    for number in range(2 ** (len(parts) - 1)):
        chosen = [part.strip().strip(",") for i, part in enumerate(parts[1:]) if number & (1 << i)]
        prompts.append(delimiter.join(chosen + [parts[0]] if put_at_start else [parts[0]] + chosen))
    return prompts


def grid_labels(text: str) -> tuple[list[list[GridLabel]], list[list[GridLabel]]]:
    """Column and row labels (A1111's draw_prompt_matrix): the first half of the optional parts across, the rest
    down; each label lists its parts, the ones left out inactive."""
    parts = [part.strip() for part in text.split("|")[1:]]
    across, down = parts[:math.ceil(len(parts) / 2)], parts[math.ceil(len(parts) / 2):]

    def labels(names: list[str]) -> list[list[GridLabel]]:
        return [[GridLabel(name, active=bool(pos & (1 << i))) for i, name in enumerate(names)] or [GridLabel()]
                for pos in range(1 << len(names))]

    return labels(across), labels(down)


def run_matrix(run: ScriptRun) -> ScriptResult:
    values = run.values if run.values is not None else PromptMatrixValues()
    request = run.request
    text = request.prompt if values.prompt_type == "positive" else request.negative_prompt
    optional = text.count("|")
    if optional > 20 or 2 ** optional * request.width * request.height > MAX_GRID_PIXELS:
        raise ExtensionError(f"prompt: {optional} '|' parts make {2 ** optional} images; the grid would be over "
                             f"{MAX_GRID_PIXELS // 1_000_000} megapixels at {request.width}x{request.height}")
    delimiter = ", " if values.variations_delimiter == "comma" else " "
    prompts = matrix_prompts(text, values.put_at_start, delimiter)
    # A1111's fix_seed: a random seed (and variation seed) is drawn once for the whole matrix
    seed = request.seed if request.seed != -1 else random.randrange(4294967294)
    subseed = request.subseed if request.subseed != -1 else random.randrange(4294967294)
    field = "prompt" if values.prompt_type == "positive" else "negative_prompt"
    context = run.context
    images: list[Image.Image] = []
    infotexts: list[str] = []
    seeds: list[int] = []
    warnings: list[str] = [] if optional else ["Prompt matrix: the prompt has no '|' parts, so one image is made"]
    for i, prompt in enumerate(prompts):
        if context.interrupted:
            break
        context.progress(f"Image {i + 1} of {len(prompts)}", i, len(prompts))
        cell = type(request)(**{**dict(request), field: prompt, "seed": seed + (i if values.different_seeds else 0),
                                "subseed": subseed, "batch_size": 1, "n_iter": 1})
        result = context.generate(cell)
        warnings += [w for w in result.warnings if w not in warnings]
        if not result.images:
            break
        images.append(result.images[0])
        infotexts.append(result.infotexts[0] if result.infotexts else "")
        seeds.append(result.seeds[0] if result.seeds else -1)
        if result.interrupted:
            break
    if not images:
        return ScriptResult(images=[], infotexts=[], warnings=warnings + ["Prompt matrix: no image was made"])
    if len(images) < len(prompts):
        warnings.append(f"Prompt matrix interrupted: {len(images)} of {len(prompts)} images made")
    across, down = grid_labels(text)
    blank = Image.new(images[0].mode, images[0].size)  # images never made (interrupted) stay black
    cells = images + [blank] * (len(prompts) - len(images))
    grid = labelled_grid(cells, across, down, values.margin_size)
    return ScriptResult(images=images, infotexts=infotexts, seeds=seeds, grid=grid, grid_infotext=infotexts[0],
                        warnings=warnings)
