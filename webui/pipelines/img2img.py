"""Image to image: img2img, inpainting and InstructPix2Pix, one batch per call.

The checkpoint decides the method: 8-channel UNets are InstructPix2Pix (edit instruction, text and image CFG);
a mask (or a 9-channel inpainting UNet) means inpainting; otherwise plain img2img at the denoising strength.
Inpainting follows A1111: blur/invert the mask, optionally work on the masked region only at full resolution,
and paste the result back over the original through the blurred mask so unmasked pixels stay untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from diffusers import (StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline,
                       StableDiffusionInstructPix2PixPipeline, StableDiffusionXLImg2ImgPipeline,
                       StableDiffusionXLInpaintPipeline, StableDiffusionXLInstructPix2PixPipeline)
from PIL import Image

from webui import images as imageops
from webui.models.loader import LoadedModel
from webui.pipelines import common
from webui.pipelines.common import BatchOutput, StepListener
from webui.pipelines.prompt_switch import PromptSwitch
from webui.types import Img2ImgRequest

_CLASSES = {
    ("sd", "img2img"): StableDiffusionImg2ImgPipeline,
    ("sd", "inpaint"): StableDiffusionInpaintPipeline,
    ("sd", "instruct-pix2pix"): StableDiffusionInstructPix2PixPipeline,
    ("sdxl", "img2img"): StableDiffusionXLImg2ImgPipeline,
    ("sdxl", "inpaint"): StableDiffusionXLInpaintPipeline,
    ("sdxl", "instruct-pix2pix"): StableDiffusionXLInstructPix2PixPipeline,
}


def method_for(model: LoadedModel, has_mask: bool) -> str:
    if model.variant == "instruct-pix2pix":
        return "instruct-pix2pix"
    if has_mask or model.variant == "inpaint":
        return "inpaint"
    return "img2img"


def schedule_steps(steps: int, strength: float, method: str) -> int:
    """Steps of the full schedule to ask diffusers for; raised when a low strength would run none at all."""
    if method == "instruct-pix2pix" or strength <= 0 or int(steps * strength) >= 1:
        return steps
    return math.ceil(1 / strength)


def steps_run(steps: int, strength: float, method: str) -> int:
    """Steps diffusers actually runs: img2img/inpaint run only the last ``strength`` of the schedule."""
    if method == "instruct-pix2pix":
        return steps
    scheduled = schedule_steps(steps, strength, method)
    return min(int(scheduled * strength), scheduled)


@dataclass(frozen=True)
class PreparedInput:
    """The init image and mask at generation size, plus how to put the result back (inpainting)."""

    image: Image.Image
    mask: Image.Image | None
    original: Image.Image
    full_mask: Image.Image | None  # blurred mask at the original size, for compositing
    region: tuple[int, int, int, int] | None  # "only masked" crop box in the original


def prepare(request: Img2ImgRequest, init: Image.Image, method: str) -> PreparedInput:
    size = (request.width, request.height)
    if method != "inpaint":
        return PreparedInput(imageops.resize_image(init, *size, request.resize_mode), None, init, None, None)
    original = imageops.resize_image(init, *size, request.resize_mode) if not request.inpaint_full_res \
        else init.convert("RGB")
    mask_source = request.mask if request.mask is not None else Image.new("L", init.size, 255)
    full_mask = imageops.prepare_mask(mask_source, original.size, request.mask_blur,
                                      request.inpainting_mask_invert)
    region = None
    image, mask = original, full_mask
    if request.inpaint_full_res:
        region = imageops.masked_region(full_mask, request.inpaint_full_res_padding, *size)
        if region is not None:
            image, mask = original.crop(region), full_mask.crop(region)
    image, mask = image.resize(size, Image.LANCZOS), mask.resize(size, Image.LANCZOS)
    if request.inpainting_fill == 0:
        image = imageops.pre_fill(image, mask)
    elif request.inpainting_fill in (2, 3):
        image = _masked_fill(image, mask, noise=request.inpainting_fill == 2)
    return PreparedInput(image, mask, original, full_mask, region)


def _masked_fill(image: Image.Image, mask: Image.Image, noise: bool) -> Image.Image:
    """Approximate A1111's "latent noise"/"latent nothing" in pixel space: noise or grey under the mask."""
    if noise:
        rng = np.random.default_rng(0)
        fill = Image.fromarray(rng.integers(0, 256, (image.height, image.width, 3), dtype=np.uint8))
    else:
        fill = Image.new("RGB", image.size, (127, 127, 127))
    return Image.composite(fill, image, mask.point(lambda v: 255 if v > 127 else 0))


def finish(prepared: PreparedInput, generated: Image.Image) -> Image.Image:
    """Paste an inpainting result back over the original through the blurred mask."""
    if prepared.full_mask is None:
        return generated
    original = prepared.original
    if prepared.region is not None:
        x1, y1, x2, y2 = prepared.region
        canvas = original.copy()
        canvas.paste(generated.resize((x2 - x1, y2 - y1), Image.LANCZOS), (x1, y1))
        return Image.composite(canvas, original, prepared.full_mask)
    return Image.composite(generated, original, prepared.full_mask)


def run_batch(model: LoadedModel, request: Img2ImgRequest, prepared: PreparedInput, method: str,
              seeds: list[int], listener: StepListener, preview_every: int) -> BatchOutput:
    total = steps_run(request.steps, request.denoising_strength, method)
    if total == 0:  # denoising strength 0: nothing to do, like A1111 the input comes back
        return BatchOutput([finish(prepared, prepared.image) for _ in seeds], stopped_early=False)
    family = "sdxl" if model.family == "sdxl" else "sd"
    runner = common.job_pipeline(model, _CLASSES[(family, method)], request.sampling, seeds)
    # A1111 schedules an img2img prompt over the full steps and counts from 0 where sampling starts.
    prompts = PromptSwitch.encode(runner, model.family, request.prompt, request.negative_prompt, request.clip_skip,
                                  request.steps, len(seeds))
    if method == "instruct-pix2pix":
        prompts.refuse_switching("with InstructPix2Pix checkpoints")  # their loops lay embeddings out differently
    prompts.install(runner)  # composable AND
    kwargs = dict(
        prompts.kwargs(),
        image=prepared.image, guidance_scale=request.cfg_scale,
        num_inference_steps=schedule_steps(request.steps, request.denoising_strength, method),
        num_images_per_prompt=len(seeds), generator=common.generators(seeds), **common.eta_kwargs(request),
    )
    if method == "instruct-pix2pix":
        kwargs["image_guidance_scale"] = request.image_cfg_scale
    else:
        kwargs["strength"] = request.denoising_strength
    if method == "inpaint":
        kwargs.update(mask_image=prepared.mask, width=request.width, height=request.height)
    callback = common.StepCallback(listener, total, preview_every, model.family, prompts)
    out = common.run_and_decode(runner, kwargs, callback)
    return BatchOutput([finish(prepared, image) for image in out.images], out.stopped_early)
