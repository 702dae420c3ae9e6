"""Text to image: one batch through the diffusers pipeline with our own conditioning, sampler and decode.

diffusers runs the denoising loop; we hand it A1111-style prompt embeddings, the chosen scheduler, the starting
noise made as A1111 makes it (webui/pipelines/noise.py: RNG source, variation seed, seed resize) with one stream
per image for the sampler's own noise (so image k of a batch equals a single run with its seed), and a step callback
that reports progress, previews and honours interrupt. Decoding happens here so NaN and out-of-memory fallbacks apply.
"""

from __future__ import annotations

import torch

from webui.models.loader import LoadedModel
from webui.pipelines import blank_inpaint, common, noise, refiner, sampler_options
from webui.pipelines.common import BatchOutput, StepListener
from webui.pipelines.preview import PreviewSettings
from webui.pipelines.prompt_switch import PromptSwitch
from webui.types import Txt2ImgRequest


def run_batch(model: LoadedModel, request: Txt2ImgRequest, seeds: list[int], listener: StepListener,
              preview_every: PreviewSettings | int, subseeds: list[int] | None = None,
              lease_refiner: refiner.Lease | None = None) -> BatchOutput:
    """``lease_refiner``: borrows the request's refiner checkpoint (webui/pipelines/refiner.py)."""
    if lease_refiner is not None:
        return refiner.run_batch(model, request, seeds, listener, preview_every,
                                 lambda runner: _initial_latents(runner, request, seeds, subseeds or []),
                                 lease_refiner)
    return common.run_and_decode(*prepare(model, request, seeds, listener, preview_every, subseeds,
                                          request.steps))


def prepare(model: LoadedModel, request: Txt2ImgRequest, seeds: list[int], listener: StepListener,
            preview_every: PreviewSettings | int, subseeds: list[int] | None, total_steps: int,
            preview_size: tuple[int, int] | None = None) -> tuple[object, dict, common.StepCallback]:
    """The runner, its arguments and the step callback of one batch (``total_steps``: what progress counts to;
    more than ``request.steps`` when a hires pass follows; ``preview_size``: the final image's, when it differs
    from this pass's)."""
    runner = common.job_pipeline(model, type(model.pipe), request.sampling, seeds)
    if model.variant == "inpaint":  # A1111: the whole blank image is the area to paint
        conditioning = blank_inpaint.blank_conditioning(runner.vae, request.height, request.width)
        runner.unet = blank_inpaint.BlankInpaintUNet(runner.unet, conditioning)
    latents, image_noise = _initial_latents(runner, request, seeds, subseeds or [])
    if hasattr(runner.scheduler, "step_noise"):
        runner.scheduler.step_noise = image_noise  # A1111's rng.next(): each image's own stream, continued
        runner.scheduler.options = sampler_options.from_request(request)  # eta, churn, sigma overrides...
    prompts = PromptSwitch.encode(runner, model.family, request.prompt, request.negative_prompt, request.clip_skip,
                                  request.steps, len(seeds), embeddings=model.embeddings)
    prompts.install(runner)  # composable AND
    kwargs = dict(
        prompts.kwargs(),
        num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
        width=request.width, height=request.height, num_images_per_prompt=len(seeds),
        latents=latents,
        generator=image_noise.torch_generators(),  # diffusers' own schedulers' noise (DDIM's eta)
        **common.eta_kwargs(request),
    )
    callback = common.StepCallback(listener, total_steps, preview_every, model.family, prompts, preview_size)
    return runner, kwargs, callback


def _initial_latents(pipe, request: Txt2ImgRequest, seeds: list[int],
                     subseeds: list[int]) -> tuple[torch.Tensor, noise.ImageNoise]:
    """A1111's starting noise (diffusers scales it by the scheduler's init sigma) and the source of step noise."""
    shape = (pipe.vae.config.latent_channels, request.height // pipe.vae_scale_factor,
             request.width // pipe.vae_scale_factor)
    settings = noise.NoiseSettings(request.randn_source, request.subseed_strength, request.seed_resize_from_w,
                                   request.seed_resize_from_h, request.eta_noise_seed_delta)
    device = pipe._execution_device
    image_noise = noise.ImageNoise(shape, seeds, subseeds, settings, device)
    return image_noise.first().to(device, dtype=pipe.unet.dtype), image_noise
