"""Loopback (A1111's scripts/loopback.py), on the public extension API only.

img2img runs ``loops`` times, each output the next run's input, each run's seed one more than the last, the
denoising strength moving from the form's to ``final_denoising_strength`` along a curve. Batch count repeats the
whole loop from the original image. As in A1111: with one batch every loop's image is returned, with several the
last image of each; a one-row grid of those comes first when there are two or more. After the first loop, inpainting
fills the mask from the previous image ("original"). Each image carries the infotext of the run that made it, plus
``Final denoising strength`` and ``Denoising curve``.
"""

from __future__ import annotations

import math
import random
from typing import Literal

from PIL import Image
from pydantic import BaseModel, Field

from webui.extensions.api import (IMG2IMG, Extension, ExtensionError, Img2ImgRequest, Script, ScriptResult, ScriptRun,
                                  with_infotext_fields)

TITLE = "Loopback"
MAX_SEED = 4294967294
ORIGINAL = 1  # inpainting_fill "original"


class Loopback(BaseModel):
    """The script's values, in A1111's ``script_args`` order."""

    loops: int = Field(4, ge=1, le=32, title="Loops")
    final_denoising_strength: float = Field(0.5, ge=0.0, le=1.0, title="Final denoising strength")
    denoising_curve: Literal["Aggressive", "Linear", "Lazy"] = Field(
        "Linear", title="Denoising strength curve",
        description="Aggressive changes the strength early, Lazy late, Linear evenly")
    append_interrogation: Literal["None", "CLIP", "DeepBooru"] = Field(
        "None", title="Append interrogated prompt at each iteration",
        description="Interrogation is not available in Stable Studio: only None runs")


def denoising_strength(loop: int, loops: int, initial: float, final: float, curve: str) -> float:
    """The strength of run ``loop`` (0 is the first, at ``initial``), as A1111's calculate_denoising_strength."""
    if loops == 1 or loop == 0:
        return initial
    progress = loop / (loops - 1)
    if curve == "Aggressive":
        shape = math.sin(progress * math.pi * 0.5)
    elif curve == "Lazy":
        shape = 1 - math.cos(progress * math.pi * 0.5)
    else:
        shape = progress
    return initial + (final - initial) * shape


def image_row(images: list[Image.Image]) -> Image.Image:
    """A1111's image_grid(rows=1): the images side by side in cells of the first one's size."""
    width, height = images[0].size
    row = Image.new("RGB", (width * len(images), height), "black")
    for index, image in enumerate(images):
        row.paste(image, (index * width, 0))
    return row


def run(run: ScriptRun) -> ScriptResult:
    request = run.request
    values = run.values if isinstance(run.values, Loopback) else Loopback()
    if not isinstance(request, Img2ImgRequest) or not request.init_images:
        raise ExtensionError(f"{TITLE} needs an init image (img2img)")
    if values.append_interrogation != "None":
        raise ExtensionError(f"{TITLE}: append_interrogation: {values.append_interrogation} interrogation is not "
                             "available in Stable Studio; choose None")
    context = run.context
    fields = {"Final denoising strength": values.final_denoising_strength,
              "Denoising curve": values.denoising_curve}
    seed = request.seed if request.seed != -1 else random.randrange(MAX_SEED)
    batches, loops = request.n_iter, values.loops
    images, infotexts, seeds, history, warnings = [], [], [], [], []
    stopped = False
    for batch in range(batches):
        current = list(request.init_images)
        fill = request.inpainting_fill
        last = None
        for loop in range(loops):
            if context.interrupted:
                stopped = True
                break
            context.progress(f"Iteration {loop + 1}/{loops}, batch {batch + 1}/{batches}",
                             batch * loops + loop, batches * loops)
            strength = denoising_strength(loop, loops, request.denoising_strength,
                                          values.final_denoising_strength, values.denoising_curve)
            loop_request = Img2ImgRequest.model_validate({
                **dict(request), "init_images": current, "batch_size": 1, "n_iter": 1, "seed": seed,
                "denoising_strength": strength, "inpainting_fill": fill})
            out = context.generate(loop_request)
            if not out.images:
                stopped = True
                break
            seed = out.seeds[0] + 1 if out.seeds else seed + 1
            last = (out.images[0], with_infotext_fields(out.infotexts[0], fields), out.seeds[0] if out.seeds else 0)
            current, fill = [out.images[0]], ORIGINAL
            if batches == 1:
                history.append(last)
            if out.interrupted:
                stopped = True
                break
        if batches > 1 and last is not None and not stopped:
            history.append(last)
        if stopped:
            warnings.append(f"Interrupted in iteration {loop + 1} of batch {batch + 1}.")
            break
    for image, info, image_seed in history:
        images.append(image)
        infotexts.append(info)
        seeds.append(image_seed)
    grid = image_row(images) if len(images) > 1 else None
    return ScriptResult(images=images, infotexts=infotexts, seeds=seeds, grid=grid,
                        grid_infotext=infotexts[0] if grid is not None else "", warnings=warnings)


def setup(ext: Extension) -> None:
    ext.add_script(Script(title=TITLE, run=run, params=Loopback, tabs=(IMG2IMG,),
                          a1111_args=("loops", "final_denoising_strength", "denoising_curve",
                                      "append_interrogation"),
                          description="Runs img2img several times, each output the next input."))
