"""What every diffusion pipeline here shares: a per-job pipeline object, seeded generators, the step callback."""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol

import torch
from PIL import Image

from webui.errors import OutOfMemory
from webui.models.loader import LoadedModel
from webui.pipelines import conditioning, decode
from webui.pipelines.prompt_switch import PromptSwitch
from webui.samplers import Sampling, build_scheduler


@contextmanager
def seamless(model: LoadedModel, enabled: bool) -> Iterator[None]:
    """A1111's "Tiling": circular padding in every convolution of the UNet and VAE for the job, so the image tiles
    without seams; the padding is restored when the job ends, whatever happens. The model is the job's own for its
    duration (its device runs one job at a time)."""
    if not enabled:
        yield
        return
    convs = [layer for name in ("unet", "vae") for layer in getattr(model.pipe, name).modules()
             if isinstance(layer, torch.nn.Conv2d)]
    saved = [(layer, layer.padding_mode) for layer in convs]
    for layer in convs:
        layer.padding_mode = "circular"
    try:
        yield
    finally:
        for layer, mode in saved:
            layer.padding_mode = mode


class StepListener(Protocol):
    def on_step(self, step: int, steps: int, preview: Callable[[], Image.Image] | None) -> None: ...
    def should_stop(self) -> bool: ...


@dataclass(frozen=True)
class BatchOutput:
    images: list[Image.Image]
    stopped_early: bool
    refiner: str | None = None  # the refiner's "name [hash]" when sampling switched to it (A1111's "Refiner")
    first_pass: list[Image.Image] = field(default_factory=list)  # hires fix: the images before it, when asked


def job_pipeline(model: LoadedModel, cls, sampling: Sampling, seeds: list[int], *, exact: bool | None = None):
    """A pipeline object of ``cls`` for one batch: it shares the loaded weights, never scheduler state.

    Pipelines that sample the whole schedule from noise (txt2img: no init ``image``) get A1111's exact
    k-diffusion samplers and sigmas; img2img-style pipelines slice diffusers' timesteps, so they keep
    diffusers' schedulers unless ``exact`` asks for the k-diffusion ones (then the caller must use
    ``KDiffusionScheduler.start_from_image`` and ``strength=1.0``, as the hires pass does).
    """
    if exact is None:
        exact = "image" not in inspect.signature(cls.__call__).parameters
    scheduler = build_scheduler(model.scheduler_config, sampling.spec.name, sampling.schedule,
                                exact=exact, sdxl=model.family == "sdxl")
    if hasattr(scheduler, "noise_sampler_seed"):
        scheduler.noise_sampler_seed = list(seeds)  # the SDE samplers' Brownian noise, one seed per image
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


def eta_kwargs(request) -> dict:
    """DDIM's eta for the diffusers pipeline (A1111's default for DDIM is 0); other samplers take none."""
    if request.eta is None or request.sampling.spec.name != "DDIM":
        return {}
    return {"eta": request.eta}


def prompt_kwargs(runner, family: str, prompt: str, negative: str, clip_skip: int) -> dict:
    cond, uncond = conditioning.encode_pair(runner, prompt, negative, clip_skip, runner._execution_device)
    kwargs = {"prompt_embeds": cond.embeds, "negative_prompt_embeds": uncond.embeds}
    if family == "sdxl":
        kwargs.update(pooled_prompt_embeds=cond.pooled, negative_pooled_prompt_embeds=uncond.pooled)
    return kwargs


class StepCallback:
    """diffusers' ``callback_on_step_end``: progress, a cheap preview every few steps, interrupt, and the prompt
    embeddings of the next step when the prompt is scheduled (``prompts``)."""

    def __init__(self, listener: StepListener, total_steps: int, preview_every: int, family: str,
                 prompts: PromptSwitch | None = None):
        self._listener = listener
        self._prompts = prompts
        self._total = total_steps
        self._preview_every = preview_every
        self._family = family
        self.stopped = False

    def __call__(self, pipeline, step_index: int, _timestep, tensors: dict) -> dict:
        # Second-order k-diffusion samplers call the UNet twice a step; progress counts steps, as A1111 does.
        step_of_call = getattr(pipeline.scheduler, "step_of_call", None)
        step = step_of_call[step_index] if step_of_call and step_index < len(step_of_call) else step_index + 1
        latents = tensors["latents"]
        wants_preview = self._preview_every > 0 and step % self._preview_every == 0 and step < self._total
        preview = (lambda: decode.cheap_preview(latents, self._family)) if wants_preview else None
        self._listener.on_step(step, self._total, preview)
        if self._listener.should_stop():
            self.stopped = True
            pipeline._interrupt = True  # diffusers' documented way to end the loop early
        # step_index counts from 0, so the step after this one is `step`.
        return self._prompts.outputs(pipeline, step) if self._prompts is not None else {}

    def kwargs(self) -> dict:
        return {"callback_on_step_end": self, "callback_on_step_end_tensor_inputs": ["latents"]}


def run_and_decode(runner, kwargs: dict, callback: StepCallback) -> BatchOutput:
    latents = run_latents(runner, kwargs, callback)
    with torch.inference_mode():
        images = decode.decode_latents(runner.vae, latents)
    return BatchOutput(images=decode.to_pil(images), stopped_early=callback.stopped)


def run_latents(runner, kwargs: dict, callback: StepCallback) -> torch.Tensor:
    """Sample and return the final latents (undecoded), with the out-of-memory message."""
    with torch.inference_mode():
        try:
            return runner(**kwargs, output_type="latent", **callback.kwargs()).images
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()  # give the memory back before the next job, then explain
            raise OutOfMemory(
                f"Out of GPU memory while sampling {kwargs.get('num_images_per_prompt', 1)} image(s). Lower the "
                "size or batch size, or start with --memory-profile 8gb or 4gb.") from None
