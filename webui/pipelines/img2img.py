"""Image to image: img2img, inpainting and InstructPix2Pix, one batch per call.

The checkpoint decides the method: 8-channel UNets are InstructPix2Pix (edit instruction, text and image CFG);
a mask (or a 9-channel inpainting UNet) means inpainting; otherwise plain img2img at the denoising strength.
Inpainting follows A1111: blur/invert the mask, optionally work on the masked region only at full resolution,
and paste the result back over the original through the blurred mask so unmasked pixels stay untouched.

With A1111's k-diffusion samplers (Euler, DPM++ ...) sampling is A1111's ``sample_img2img``: the tail of the
schedule from ``int(strength * steps)``, its noise (RNG source, variation seeds, seed resize), and for inpainting
the latent mask applied to each denoised prediction and the latent fills ("latent noise", "latent nothing").
The timestep samplers (DDIM, PLMS, UniPC ...) and InstructPix2Pix run on diffusers' own pipelines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import (StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline,
                       StableDiffusionInstructPix2PixPipeline, StableDiffusionXLImg2ImgPipeline,
                       StableDiffusionXLInpaintPipeline, StableDiffusionXLInstructPix2PixPipeline)
from PIL import Image

from webui import images as imageops
from webui.errors import InvalidRequest
from webui.models.loader import LoadedModel
from webui.k_samplers import ImageStart, img2img_steps
from webui.parameters import unapplied_sampler_option
from webui.pipelines import common, noise, sampler_options
from webui.pipelines.common import BatchOutput, StepListener
from webui.pipelines.encode import encode_images
from webui.pipelines.preview import PreviewSettings
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


def is_exact(request: Img2ImgRequest, method: str) -> bool:
    """Whether the job samples as A1111 does: its k-diffusion samplers from an image. DDIM, PLMS, UniPC and the
    other timestep samplers (and InstructPix2Pix) run on diffusers' schedulers, which slice their own timesteps."""
    return method != "instruct-pix2pix" and bool(request.sampling.spec.k_algorithm)


def steps_run(request: Img2ImgRequest, method: str) -> int:
    """Sampling steps a job runs; none at strength 0, where the input comes back.

    A1111's k-diffusion samplers run ``t_enc + 1`` steps (``int(strength * steps) + 1``, all of them at strength 1);
    diffusers' img2img runs ``int(strength * steps)``; InstructPix2Pix runs every step.
    """
    steps, strength = request.steps, request.denoising_strength
    if method == "instruct-pix2pix":
        return steps
    if strength <= 0:
        return 0
    if is_exact(request, method):
        _schedule, t_enc = img2img_steps(steps, strength, fixed_steps=request.img2img_fix_steps)
        return t_enc + 1
    scheduled = _diffusers_schedule_steps(request)
    return min(int(scheduled * strength), scheduled)


def _diffusers_schedule_steps(request: Img2ImgRequest) -> int:
    """Steps of the full schedule to ask diffusers for: stretched with A1111's ``img2img_fix_steps`` so that about
    ``steps`` run, and raised when a low strength would run none at all."""
    steps, strength = request.steps, min(request.denoising_strength, 0.999)
    if request.img2img_fix_steps and strength > 0:
        return max(steps, int(steps / strength))
    if strength <= 0 or int(steps * strength) >= 1:
        return steps
    return math.ceil(1 / strength)


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
    if request.inpainting_fill != 1:  # every mode but "original" starts from A1111's blurred fill
        image = imageops.pre_fill(image, mask)
    if request.inpainting_fill in (2, 3) and not is_exact(request, method):
        image = _masked_fill(image, mask, noise=request.inpainting_fill == 2)
    return PreparedInput(image, mask, original, full_mask, region)


def _masked_fill(image: Image.Image, mask: Image.Image, noise: bool) -> Image.Image:
    """"latent noise"/"latent nothing" approximated in pixel space, for the diffusers samplers (the k-diffusion
    path fills the latents as A1111 does): noise or grey under the mask."""
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
              seeds: list[int], listener: StepListener, preview_every: PreviewSettings | int,
              subseeds: list[int] | None = None) -> BatchOutput:
    total = steps_run(request, method)
    if total == 0:
        # denoising strength 0: nothing to do, the input comes back (A1111 would still run one step at the
        # lowest noise level, through a VAE round trip)
        return BatchOutput([finish(prepared, prepared.image) for _ in seeds], stopped_early=False)
    if not is_exact(request, method):
        return _run_diffusers(model, request, prepared, method, seeds, listener, total, preview_every)
    family = "sdxl" if model.family == "sdxl" else "sd"
    # A 4-channel UNet inpaints through the plain img2img pipeline: the mask is applied as A1111 applies it, to
    # every denoised prediction (ImageStart.keep_mask), not as diffusers' inpainting pipeline blends noisy latents.
    nine_channels = model.variant == "inpaint"
    cls = _CLASSES[(family, "inpaint" if nine_channels else "img2img")]
    runner = common.job_pipeline(model, cls, request.sampling, seeds, exact=True)
    start, image_noise = _image_start(runner, request, prepared, seeds, subseeds or [])
    runner.scheduler.start_from_image(start)
    runner.scheduler.step_noise = image_noise  # A1111's rng.next(): each image's stream, continued
    runner.scheduler.options = sampler_options.from_request(request)  # eta, churn, sigma overrides...
    # A1111 schedules an img2img prompt over the full steps and counts from 0 where sampling starts.
    prompts = PromptSwitch.encode(runner, model.family, request.prompt, request.negative_prompt, request.clip_skip,
                                  request.steps, len(seeds), embeddings=model.embeddings)
    prompts.install(runner)  # composable AND
    kwargs = dict(
        prompts.kwargs(),
        guidance_scale=request.cfg_scale, num_inference_steps=request.steps, num_images_per_prompt=len(seeds),
        strength=1.0,  # the scheduler runs A1111's part of the schedule itself
        generator=common.generators(seeds),
    )
    if nine_channels:  # the UNet also sees the masked image and the mask; sampling starts where the scheduler says
        kwargs.update(image=prepared.image, mask_image=prepared.mask if prepared.mask is not None else
                      Image.new("L", prepared.image.size, 255),
                      # The pipeline's copy, in the UNet's dtype as it concatenates it with the mask and masked
                      # image (the sampler keeps its own float32 latents, see k_samplers.ImageStart).
                      latents=start.noise.to(runner.unet.dtype),
                      width=request.width, height=request.height)
    else:
        kwargs["image"] = start.latents
    callback = common.StepCallback(listener, total, preview_every, model.family, prompts)
    out = common.run_and_decode(runner, kwargs, callback)
    return BatchOutput([finish(prepared, image) for image in out.images], out.stopped_early)


def _image_start(runner, request: Img2ImgRequest, prepared: PreparedInput, seeds: list[int],
                 subseeds: list[int]) -> tuple[ImageStart, noise.ImageNoise]:
    """A1111's img2img start: the init image's latents (masked-content fills applied), the image RNG's noise, and
    for inpainting the latent mask (the blurred mask at latent size, rounded)."""
    latents = encode_images(runner, [prepared.image] * len(seeds), seeds)
    settings = noise.NoiseSettings(request.randn_source, request.subseed_strength, request.seed_resize_from_w,
                                   request.seed_resize_from_h, request.eta_noise_seed_delta)
    device = latents.device
    image_noise = noise.ImageNoise(tuple(latents.shape[1:]), seeds, subseeds, settings, device)
    start_noise = image_noise.first()
    keep = None
    if prepared.mask is not None:
        height, width = latents.shape[-2:]
        latent_mask = np.asarray(prepared.mask.convert("RGB").resize((width, height)), dtype=np.float32)[..., 0]
        masked = torch.from_numpy(np.around(latent_mask / 255)).to(device)
        keep = (1 - masked)[None, None].expand_as(latents).contiguous()
        if request.inpainting_fill == 2:  # latent noise: the image seeds' noise (create_random_tensors)
            plain = noise.NoiseSettings(request.randn_source)
            fill, _ = noise.initial_noise(tuple(latents.shape[1:]), seeds, [], plain, device)
            latents = latents * keep + fill.to(device) * (1 - keep)
        elif request.inpainting_fill == 3:  # latent nothing
            latents = latents * keep
    start = ImageStart(latents, start_noise.to(device), request.denoising_strength,
                       fixed_steps=request.img2img_fix_steps, keep_mask=keep)
    return start, image_noise


def _run_diffusers(model: LoadedModel, request: Img2ImgRequest, prepared: PreparedInput, method: str,
                   seeds: list[int], listener: StepListener, total: int, preview_every: PreviewSettings | int) -> BatchOutput:
    """diffusers' own img2img, inpainting and InstructPix2Pix pipelines and schedulers (DDIM, PLMS, UniPC...)."""
    _refuse_noise_options(request, method)
    if (option := unapplied_sampler_option(request)) is not None:
        raise InvalidRequest(option, f"{request.sampler_name} runs with A1111's default {option} with "
                                     "InstructPix2Pix checkpoints (diffusers' scheduler)")
    family = "sdxl" if model.family == "sdxl" else "sd"
    try:
        runner = common.job_pipeline(model, _CLASSES[(family, method)], request.sampling, seeds)
    except ValueError as exc:  # a schedule type diffusers' scheduler for this sampler cannot make
        raise InvalidRequest("scheduler", str(exc)) from None
    prompts = PromptSwitch.encode(runner, model.family, request.prompt, request.negative_prompt, request.clip_skip,
                                  request.steps, len(seeds), embeddings=model.embeddings)
    if method == "instruct-pix2pix":
        prompts.refuse_switching("with InstructPix2Pix checkpoints")  # their loops lay embeddings out differently
    prompts.install(runner)  # composable AND
    kwargs = dict(
        prompts.kwargs(),
        image=prepared.image, guidance_scale=request.cfg_scale, num_images_per_prompt=len(seeds),
        generator=common.generators(seeds), **common.eta_kwargs(request),
    )
    if method == "instruct-pix2pix":
        kwargs.update(image_guidance_scale=request.image_cfg_scale, num_inference_steps=request.steps)
    else:
        kwargs.update(strength=request.denoising_strength,
                      num_inference_steps=_diffusers_schedule_steps(request))
    if method == "inpaint":
        kwargs.update(mask_image=prepared.mask, width=request.width, height=request.height)
    callback = common.StepCallback(listener, total, preview_every, model.family, prompts)
    out = common.run_and_decode(runner, kwargs, callback)
    return BatchOutput([finish(prepared, image) for image in out.images], out.stopped_early)


def _refuse_noise_options(request: Img2ImgRequest, method: str) -> None:
    """diffusers' pipelines draw their noise from torch generators: variation seeds, seed resize and Philox (NV)
    noise cannot be applied there, so they are refused rather than silently ignored."""
    why = "with InstructPix2Pix checkpoints" if method == "instruct-pix2pix" else \
        f"with the {request.sampling.spec.name} sampler in img2img (use a k-diffusion sampler such as Euler or DPM++)"
    if request.subseed_strength:
        raise InvalidRequest("subseed_strength", f"variation seeds are not supported {why}; send 0")
    if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
        raise InvalidRequest("seed_resize_from_w", f"seed resize is not supported {why}")
    if request.randn_source == "NV":
        raise InvalidRequest("randn_source", f"NV noise is not supported {why}; use GPU or CPU")
