"""Text to image: one batch through the diffusers pipeline with our own conditioning, sampler and decode.

diffusers runs the denoising loop; we hand it A1111-style prompt embeddings, the chosen scheduler, one seeded
generator per image (so image k of a batch equals a single run with seed + k), and a step callback that reports
progress, previews and honours interrupt. Decoding happens here so NaN and out-of-memory fallbacks apply.
"""

from __future__ import annotations

import torch

from webui.models.loader import LoadedModel
from webui.pipelines import common
from webui.pipelines.common import BatchOutput, StepListener
from webui.pipelines.prompt_switch import PromptSwitch
from webui.types import Txt2ImgRequest


def run_batch(model: LoadedModel, request: Txt2ImgRequest, seeds: list[int], listener: StepListener,
              preview_every: int) -> BatchOutput:
    runner = common.job_pipeline(model, type(model.pipe), request.sampling, seeds)
    gens = common.generators(seeds)
    prompts = PromptSwitch.encode(runner, model.family, request.prompt, request.negative_prompt, request.clip_skip,
                                  request.steps, len(seeds))
    kwargs = dict(
        prompts.kwargs(),
        num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
        width=request.width, height=request.height, num_images_per_prompt=len(seeds),
        latents=_initial_latents(runner, request, gens),
        generator=gens,  # the generators also feed ancestral/SDE samplers' noise
    )
    callback = common.StepCallback(listener, request.steps, preview_every, model.family, prompts)
    return common.run_and_decode(runner, kwargs, callback)


def _initial_latents(pipe, request: Txt2ImgRequest, generators: list[torch.Generator]) -> torch.Tensor:
    """Noise drawn per image from its own generator; diffusers scales it by the scheduler's init sigma."""
    shape = (1, pipe.vae.config.latent_channels,
             request.height // pipe.vae_scale_factor, request.width // pipe.vae_scale_factor)
    noise = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.cat(noise).to(pipe._execution_device, dtype=pipe.unet.dtype)
