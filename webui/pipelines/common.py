"""What every diffusion pipeline here shares: a per-job pipeline object, seeded generators, the step callback."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from PIL import Image

from webui.errors import OutOfMemory
from webui.models.loader import LoadedModel
from webui.pipelines import conditioning, decode
from webui.samplers import Sampling, build_scheduler


class StepListener(Protocol):
    def on_step(self, step: int, steps: int, preview: Callable[[], Image.Image] | None) -> None: ...
    def should_stop(self) -> bool: ...


@dataclass(frozen=True)
class BatchOutput:
    images: list[Image.Image]
    stopped_early: bool


def job_pipeline(model: LoadedModel, cls, sampling: Sampling, seeds: list[int]):
    """A pipeline object of ``cls`` for one batch: it shares the loaded weights, never scheduler state."""
    scheduler = build_scheduler(model.scheduler_config, sampling.spec.name, sampling.schedule)
    if hasattr(scheduler, "noise_sampler_seed"):
        scheduler.noise_sampler_seed = list(seeds)  # DPM++ SDE's Brownian noise, one seed per image
    # Built from the constructor rather than from_pipe: from_pipe ends with a .to(dtype) of the shared modules
    # (fp32 unless told otherwise), which would recast the loaded weights and logs warnings on every job.
    params = inspect.signature(cls.__init__).parameters
    available = {**model.pipe.components, "scheduler": scheduler}
    if model.vae is not None:  # the job's VAE file; the shared pipeline keeps its own
        available["vae"] = model.vae
    kwargs = {name: available.get(name) for name, p in params.items()
              if name != "self" and (name in available or p.default is inspect.Parameter.empty)}
    if "requires_safety_checker" in params:
        kwargs["requires_safety_checker"] = False
    runner = cls(**kwargs)
    runner.set_progress_bar_config(disable=True)
    return runner


def generators(seeds: list[int]) -> list[torch.Generator]:
    # CPU generators: the same seed gives the same image on any device.
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def prompt_kwargs(runner, family: str, prompt: str, negative: str, clip_skip: int) -> dict:
    cond, uncond = conditioning.encode_pair(runner, prompt, negative, clip_skip, runner._execution_device)
    kwargs = {"prompt_embeds": cond.embeds, "negative_prompt_embeds": uncond.embeds}
    if family == "sdxl":
        kwargs.update(pooled_prompt_embeds=cond.pooled, negative_pooled_prompt_embeds=uncond.pooled)
    return kwargs


class StepCallback:
    """diffusers' ``callback_on_step_end``: progress, a cheap preview every few steps, interrupt."""

    def __init__(self, listener: StepListener, total_steps: int, preview_every: int, family: str):
        self._listener = listener
        self._total = total_steps
        self._preview_every = preview_every
        self._family = family
        self.stopped = False

    def __call__(self, pipeline, step_index: int, _timestep, tensors: dict) -> dict:
        step = step_index + 1
        latents = tensors["latents"]
        wants_preview = self._preview_every > 0 and step % self._preview_every == 0 and step < self._total
        preview = (lambda: decode.cheap_preview(latents, self._family)) if wants_preview else None
        self._listener.on_step(step, self._total, preview)
        if self._listener.should_stop():
            self.stopped = True
            pipeline._interrupt = True  # diffusers' documented way to end the loop early
        return {}

    def kwargs(self) -> dict:
        return {"callback_on_step_end": self, "callback_on_step_end_tensor_inputs": ["latents"]}


def run_and_decode(runner, kwargs: dict, callback: StepCallback) -> BatchOutput:
    with torch.inference_mode():
        try:
            result = runner(**kwargs, output_type="latent", **callback.kwargs())
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()  # give the memory back before the next job, then explain
            raise OutOfMemory(
                f"Out of GPU memory while sampling {kwargs.get('num_images_per_prompt', 1)} image(s). Lower the "
                "size or batch size, or start with --memory-profile 8gb or 4gb.") from None
        images = decode.decode_latents(runner.vae, result.images)
    return BatchOutput(images=decode.to_pil(images), stopped_early=callback.stopped)
