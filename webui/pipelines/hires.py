"""Hires fix: txt2img at the first-pass size, upscale, then an img2img pass at the larger size (A1111 1.10's
``StableDiffusionProcessingTxt2Img.sample`` / ``sample_hr_pass``).

- Upscale: a latent mode (``torch.nn.functional.interpolate`` of the latents, as A1111) or a pixel upscaler
  (decode, PIL resize or an upscaler model such as ESRGAN, encode again); then A1111's crop when both target sides
  were given.
- Second pass: A1111's ``sample_img2img`` with ``steps = hr_second_pass_steps or steps`` always run in full (its
  "fixed steps" rule), through :meth:`KDiffusionScheduler.start_from_image`, with fresh noise of the larger size
  from the same seeds (A1111 builds a new ``ImageRNG`` for the pass), and the hires prompts scheduled over the
  pass. Samplers without a k-diffusion algorithm (DDIM, UniPC, ...) use diffusers' own img2img slicing: close,
  not exact.
- Denoising strength 0 samples nothing: the upscaled latents are decoded, as in A1111.
- Progress counts both passes (``steps + hires steps``). The decodes go through ``decode.decode_latents``; with
  the 8gb/4gb memory profiles the checkpoint's own VAE has tiling on (webui/models/memory.py), so the larger
  second pass decodes (and a pixel upscaler encodes) tiled; any VAE retries tiled when it runs out of memory.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionXLImg2ImgPipeline
from PIL import Image

from webui.hires_fix import LATENT_MODES, HiresSize
from webui.k_samplers import ImageStart
from webui.models.loader import LoadedModel
from webui.pipelines import common, decode, noise, sampler_options, txt2img
from webui.pipelines.common import BatchOutput, StepListener
from webui.pipelines.preview import PreviewSettings
from webui.pipelines.prompt_switch import PromptSwitch
from webui.types import Txt2ImgRequest

_IMG2IMG = {"sd": StableDiffusionImg2ImgPipeline, "sdxl": StableDiffusionXLImg2ImgPipeline}
# (image, exact size, upscaler name) -> image: an upscaler model, run by the caller's service on the job's device.
ModelUpscale = Callable[[Image.Image, tuple[int, int], str], Image.Image]
_PIXEL_RESAMPLING = {"None": Image.Resampling.LANCZOS, "Lanczos": Image.Resampling.LANCZOS,
                     "Nearest": Image.Resampling.NEAREST}


def hires_steps(request: Txt2ImgRequest) -> int:
    return request.hr_second_pass_steps or request.steps


class _SecondPass:
    """The step listener of the second pass: steps continue after the first pass's."""

    def __init__(self, listener: StepListener, offset: int):
        self._listener, self._offset = listener, offset
        hook = getattr(listener, "step_hook", None)  # extensions' step hooks count steps as progress does
        self.step_hook = None if hook is None else (
            lambda step, steps, latents, guidance: hook(step + offset, steps, latents, guidance))

    def on_step(self, step, steps, preview) -> None:
        self._listener.on_step(step + self._offset, steps, preview)

    def should_stop(self) -> bool:
        return self._listener.should_stop()


def run_batch(model: LoadedModel, request: Txt2ImgRequest, seeds: list[int], listener: StepListener,
              preview_every: PreviewSettings | int, subseeds: list[int], keep_first_pass: bool = False,
              model_upscale: ModelUpscale | None = None) -> BatchOutput:
    """``keep_first_pass``: also return the first pass's images (A1111's save_images_before_highres_fix);
    ``model_upscale``: runs an upscaler model (ESRGAN...) when ``hr_upscaler`` names one."""
    total = request.steps + hires_steps(request)
    # The first pass previews at the final size too: the preview shows the output as it will be.
    runner, kwargs, callback = txt2img.prepare(model, request, seeds, listener, preview_every, subseeds, total,
                                               preview_size=request.hires_size.final())
    latents = common.run_latents(runner, kwargs, callback)
    if callback.stopped:  # interrupted in the first pass: A1111 returns the first pass's images
        return _decoded(runner.vae, latents, stopped=True)
    first = _decoded(runner.vae, latents, stopped=False).images if keep_first_pass else []
    size = request.hires_size
    with torch.inference_mode():
        factor = runner.vae_scale_factor
        latents = _crop(upscale(runner.vae, latents, request.hr_upscaler, size, factor, model_upscale),
                        size.truncate(factor))
    if request.denoising_strength == 0:
        out = _decoded(runner.vae, latents, stopped=False)
    else:
        out = _second_pass(model, request, seeds, subseeds, latents, _SecondPass(listener, request.steps),
                           preview_every, total)
    return replace(out, first_pass=first)


def upscale(vae, latents: torch.Tensor, upscaler: str, size: HiresSize, factor: int = 8,
            model_upscale: ModelUpscale | None = None) -> torch.Tensor:
    """The first pass's latents at the hires size (before the crop), by a latent mode or a pixel upscaler
    (built in, or a model run by ``model_upscale``).

    ``factor``: pixels per latent cell (A1111 assumes 8, as every real checkpoint has).
    """
    if upscaler in LATENT_MODES:
        mode, antialias = LATENT_MODES[upscaler]
        cells = (size.upscale_y // factor, size.upscale_x // factor)
        return torch.nn.functional.interpolate(latents.float(), size=cells,
                                               mode=mode, antialias=antialias)
    images = decode.decode_latents(vae, latents)
    # A1111 truncates to 8 bits (astype(np.uint8)) before resizing.
    arrays = (255.0 * ((images.float() + 1.0) / 2.0).clamp(0, 1)).permute(0, 2, 3, 1).cpu().numpy()
    resized = [_resize(Image.fromarray(a.astype(np.uint8)), size.upscale_x, size.upscale_y, upscaler, model_upscale)
               for a in arrays]
    pixels = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in resized]))
    return encode(vae, pixels.permute(0, 3, 1, 2) * 2.0 - 1.0)


def _resize(image: Image.Image, width: int, height: int, upscaler: str,
            model_upscale: ModelUpscale | None = None) -> Image.Image:
    """A1111's ``resize_image(0, ...)`` with an upscaler: that upscaler to the scale (rounded down to a multiple
    of 8), then Lanczos to the exact size if it differs ("None": Lanczos straight away)."""
    if upscaler != "None":
        scale = max(width / image.width, height / image.height)
        dest = (int(image.width * scale) // 8 * 8, int(image.height * scale) // 8 * 8)
        if upscaler in _PIXEL_RESAMPLING:
            image = image.resize(dest, resample=_PIXEL_RESAMPLING[upscaler])
        elif model_upscale is not None:
            image = model_upscale(image, dest, upscaler)
        else:
            raise ValueError(f"upscaler {upscaler!r} is a model and no model runner was given")
    if image.size != (width, height):
        image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
    return image


def encode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] to scaled latents: the distribution's mean (A1111 samples from it, with unseeded noise;
    the mean keeps a fixed seed reproducible)."""
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return dist.mean.float() * vae.config.scaling_factor


def _crop(latents: torch.Tensor, truncate: tuple[int, int]) -> torch.Tensor:
    """A1111's centred crop of the cells beyond the requested box (only when both resize sides are given)."""
    ty, tx = truncate
    return latents[:, :, ty // 2:latents.shape[2] - (ty + 1) // 2, tx // 2:latents.shape[3] - (tx + 1) // 2]


def _decoded(vae, latents: torch.Tensor, stopped: bool) -> BatchOutput:
    with torch.inference_mode():
        images = decode.decode_latents(vae, latents)
    return BatchOutput(images=decode.to_pil(images), stopped_early=stopped)


def _second_pass(model: LoadedModel, request: Txt2ImgRequest, seeds: list[int], subseeds: list[int],
                 latents: torch.Tensor, listener: StepListener, preview_every: PreviewSettings | int, total: int) -> BatchOutput:
    steps = hires_steps(request)
    family = "sdxl" if model.family == "sdxl" else "sd"
    runner = common.job_pipeline(model, _IMG2IMG[family], request.hires_sampling, seeds, exact=True)
    device = runner._execution_device
    settings = noise.NoiseSettings(request.randn_source, request.subseed_strength, request.seed_resize_from_w,
                                   request.seed_resize_from_h, request.eta_noise_seed_delta)
    # A1111 makes the second pass's noise afresh from the same seeds (a new ImageRNG at the hires size).
    image_noise = noise.ImageNoise(tuple(latents.shape[1:]), seeds, subseeds, settings, device)
    start_noise = image_noise.first()
    generators = image_noise.torch_generators()
    prompts = PromptSwitch.encode(runner, model.family, request.hr_prompt or request.prompt,
                                  request.hr_negative_prompt or request.negative_prompt, request.clip_skip,
                                  request.steps, len(seeds), hires_steps=steps,
                                  embeddings=model.embeddings)
    prompts.install(runner)  # composable AND
    kwargs = dict(prompts.kwargs(), image=latents.to(device, runner.unet.dtype), guidance_scale=request.cfg_scale,
                  num_images_per_prompt=len(seeds), generator=generators, **common.eta_kwargs(request))
    if hasattr(runner.scheduler, "start_from_image"):
        runner.scheduler.start_from_image(ImageStart(latents.float(), start_noise, request.denoising_strength,
                                                     fixed_steps=True))
        runner.scheduler.step_noise = image_noise  # the step noise continues each image's stream
        runner.scheduler.options = sampler_options.from_request(request)
        # diffusers draws a noise tensor it will not use: from throwaway generators
        kwargs.update(strength=1.0, num_inference_steps=steps, generator=common.generators(seeds))
    else:  # diffusers' slicing: about ``steps`` steps of a schedule stretched as A1111's fixed steps
        strength = min(request.denoising_strength, 0.999)
        kwargs.update(strength=strength, num_inference_steps=max(steps, int(steps / strength)))
    callback = common.StepCallback(listener, total, preview_every, model.family, prompts)
    return common.run_and_decode(runner, kwargs, callback)
