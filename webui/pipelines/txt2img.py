"""Text to image: one batch through the diffusers pipeline with our own conditioning, sampler and decode.

diffusers runs the denoising loop; we hand it A1111-style prompt embeddings, the chosen scheduler, one seeded
generator per image (so image k of a batch equals a single run with seed + k), and a step callback that reports
progress, previews and honours interrupt. Decoding happens here so NaN and out-of-memory fallbacks apply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from PIL import Image

from webui.models.loader import LoadedModel
from webui.pipelines import conditioning, decode
from webui.samplers import build_scheduler
from webui.types import Txt2ImgRequest


class StepListener(Protocol):
    def on_step(self, step: int, steps: int, preview: Callable[[], Image.Image] | None) -> None: ...
    def should_stop(self) -> bool: ...


@dataclass(frozen=True)
class BatchOutput:
    images: list[Image.Image]
    stopped_early: bool


def run_batch(model: LoadedModel, request: Txt2ImgRequest, seeds: list[int], schedule: str,
              listener: StepListener, preview_every: int) -> BatchOutput:
    pipe = model.pipe
    device = pipe._execution_device
    scheduler = build_scheduler(model.scheduler_config, request.sampler_name, schedule)
    # A fresh pipeline object per batch shares the weights but not scheduler state with other jobs.
    extra = {"requires_safety_checker": False} if "requires_safety_checker" in pipe.config else {}
    runner = type(pipe)(**{**pipe.components, "scheduler": scheduler}, **extra)
    runner.set_progress_bar_config(disable=True)
    cond, uncond = conditioning.encode_pair(runner, request.prompt, request.negative_prompt,
                                            request.clip_skip, device)
    # Seeds drive CPU generators: the same seed gives the same image on any device.
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
    latents = _initial_latents(runner, request, generators)
    stopped = False

    def on_step_end(pipeline, step_index: int, _timestep, tensors: dict) -> dict:
        nonlocal stopped
        step = step_index + 1
        current = tensors["latents"]
        wants_preview = preview_every > 0 and (step % preview_every == 0) and step < request.steps
        listener.on_step(step, request.steps,
                         (lambda: decode.cheap_preview(current, model.family)) if wants_preview else None)
        if listener.should_stop():
            stopped = True
            pipeline._interrupt = True  # diffusers' documented way to end the loop early
        return {}

    kwargs = dict(
        prompt_embeds=cond.embeds, negative_prompt_embeds=uncond.embeds,
        num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
        width=request.width, height=request.height, num_images_per_prompt=len(seeds),
        latents=latents, generator=generators,  # generators also feed ancestral/SDE samplers' noise
        output_type="latent",
        callback_on_step_end=on_step_end, callback_on_step_end_tensor_inputs=["latents"],
    )
    if model.family == "sdxl":
        kwargs.update(pooled_prompt_embeds=cond.pooled, negative_pooled_prompt_embeds=uncond.pooled)
    with torch.inference_mode():
        result = runner(**kwargs)
        images = decode.decode_latents(runner.vae, result.images)
    return BatchOutput(images=decode.to_pil(images), stopped_early=stopped)


def _initial_latents(pipe, request: Txt2ImgRequest, generators: list[torch.Generator]) -> torch.Tensor:
    """Noise drawn per image from its own generator; diffusers scales it by the scheduler's init sigma."""
    shape = (1, pipe.vae.config.latent_channels, request.height // pipe.vae_scale_factor, request.width // pipe.vae_scale_factor)
    noise = [torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]
    return torch.cat(noise).to(pipe._execution_device, dtype=pipe.unet.dtype)
