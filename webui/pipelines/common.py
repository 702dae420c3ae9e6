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
from webui.pipelines import conditioning, decode, interrupt
from webui.pipelines.preview import COMBINED, PreviewSettings, render
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


StepHook = Callable[[int, int, torch.Tensor, float], "tuple[torch.Tensor, float, bool]"]
"""Extensions' step hooks as one plain function (the service builds it; pipelines know nothing of extensions):
``(step, steps, latents, guidance) -> (latents, guidance, cancel)``. A listener may carry one as ``step_hook``."""


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


def prompt_kwargs(runner, family: str, prompt: str, negative: str, clip_skip: int, embeddings=None) -> dict:
    cond, uncond = conditioning.encode_pair(runner, prompt, negative, clip_skip, runner._execution_device,
                                            embeddings)
    kwargs = {"prompt_embeds": cond.embeds, "negative_prompt_embeds": uncond.embeds}
    if family == "sdxl":
        kwargs.update(pooled_prompt_embeds=cond.pooled, negative_pooled_prompt_embeds=uncond.pooled)
    return kwargs


class StepCallback:
    """diffusers' ``callback_on_step_end``: progress, a live preview every few steps, interrupt, and the prompt
    embeddings of the next step when the prompt is scheduled (``prompts``).

    ``preview``: the job's preview settings, or a bare step period. The preview is drawn at ``preview_size``
    (width, height; default: the size the latents decode to), so it shows at the output's size.
    """

    def __init__(self, listener: StepListener, total_steps: int, preview: PreviewSettings | int, family: str,
                 prompts: PromptSwitch | None = None, preview_size: tuple[int, int] | None = None):
        self._listener = listener
        self._prompts = prompts
        self._total = total_steps
        self._preview = PreviewSettings.of(preview)
        self._preview_size = preview_size
        self._family = family
        self.stopped = False
        self.latents: torch.Tensor | None = None  # after the last finished step

    def __call__(self, pipeline, step_index: int, _timestep, tensors: dict) -> dict:
        # Second-order k-diffusion samplers call the UNet twice a step; progress counts steps, as A1111 does.
        step_of_call = getattr(pipeline.scheduler, "step_of_call", None)
        step = step_of_call[step_index] if step_of_call and step_index < len(step_of_call) else step_index + 1
        latents = tensors["latents"]
        outputs: dict = {}
        hook: StepHook | None = getattr(self._listener, "step_hook", None)
        if hook is not None and completes_step(step_of_call, step_index):
            latents, outputs = self._run_hook(hook, pipeline, step, latents)
        self.latents = latents
        preview = self._preview_of(pipeline, latents) if self._preview.due(step, self._total) else None
        self._listener.on_step(step, self._total, preview)
        if self._listener.should_stop():
            self.stopped = True
            pipeline._interrupt = True  # diffusers' documented way to end the loop early
        # step_index counts from 0, so the step after this one is `step`.
        if self._prompts is not None:
            outputs.update(self._prompts.outputs(pipeline, step))
        return outputs

    def _run_hook(self, hook: StepHook, pipeline, step: int, latents: torch.Tensor) -> tuple[torch.Tensor, dict]:
        guidance = float(getattr(pipeline, "_guidance_scale", 0.0))
        new_latents, new_guidance, cancel = hook(step, self._total, latents, guidance)
        if new_guidance != guidance and hasattr(pipeline, "_guidance_scale"):
            pipeline._guidance_scale = new_guidance  # diffusers' dynamic CFG: read each step through guidance_scale
        if cancel:
            self.stopped = True
            pipeline._interrupt = True
        if new_latents is latents:
            return latents, {}
        return new_latents, {"latents": new_latents}  # diffusers takes the step's latents back from this dict

    def _preview_of(self, pipeline, latents: torch.Tensor) -> Callable[[], Image.Image]:
        # "Combined": the sampler's denoised prediction (k-diffusion samplers keep it); diffusers' own
        # schedulers do not hand it out, so theirs shows the current latents.
        shown = self.denoised(pipeline.scheduler, latents) if self._preview.content == COMBINED else latents
        factor = getattr(pipeline, "vae_scale_factor", 8)
        size = self._preview_size or (shown.shape[-1] * factor, shown.shape[-2] * factor)
        settings, family = self._preview, self._family
        # Lazy: drawn (and TAESD's decoder loaded) only when the job is watched (webui/services/jobs.py).
        return lambda: render(shown, family, size, settings.method, pipeline.vae, settings.tiny_decoder(family))

    @staticmethod
    def denoised(scheduler, latents: torch.Tensor) -> torch.Tensor:
        value = getattr(scheduler, "denoised", None)
        return value if value is not None else latents

    def should_stop(self) -> bool:
        return self._listener.should_stop()

    def stopped_latents(self, pipeline, fallback: torch.Tensor | None) -> torch.Tensor | None:
        """What an interrupted or skipped batch returns, as A1111 does: the sampler's last denoised prediction
        (k-diffusion samplers), else the latents of the last finished step, else ``fallback``."""
        value = getattr(pipeline.scheduler, "denoised", None)
        if value is None:
            value = self.latents if self.latents is not None else fallback
        return value

    def kwargs(self) -> dict:
        return {"callback_on_step_end": self, "callback_on_step_end_tensor_inputs": ["latents"]}


def completes_step(step_of_call: list[int] | None, index: int) -> bool:
    """Whether denoiser call ``index`` ends a sampler step: second-order samplers call the UNet twice a step, and
    extensions' step hooks see whole steps only (never a half-step's intermediate latents)."""
    if not step_of_call or index + 1 >= len(step_of_call):
        return True
    return step_of_call[index + 1] != step_of_call[index]


def run_and_decode(runner, kwargs: dict, callback: StepCallback) -> BatchOutput:
    latents = run_latents(runner, kwargs, callback)
    with torch.inference_mode():
        images = decode.decode_latents(runner.vae, latents)
    return BatchOutput(images=decode.to_pil(images), stopped_early=callback.stopped)


def run_latents(runner, kwargs: dict, callback: StepCallback) -> torch.Tensor:
    """Sample and return the final latents (undecoded), with the out-of-memory message.

    An interrupt or skip stops the sampling inside the UNet when it comes mid-step (webui/pipelines/interrupt.py),
    or at the step's end; either way the batch's latents so far come back (no image when it was stopped before
    its first step ended).
    """
    with torch.inference_mode(), interrupt.inside_steps(runner.unet, callback.should_stop):
        try:
            latents = runner(**kwargs, output_type="latent", **callback.kwargs()).images
        except interrupt.Interrupted:
            callback.stopped = True
            latents = None
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()  # give the memory back before the next job, then explain
            raise OutOfMemory(_sampling_oom_message(kwargs)) from None
        if not callback.stopped:
            return latents
        stopped = callback.stopped_latents(runner, latents)
        return stopped if stopped is not None else torch.empty(0, 4, 1, 1)  # nothing finished: no image


def _sampling_oom_message(kwargs: dict) -> str:
    count = kwargs.get("num_images_per_prompt", 1)
    size = f" of {kwargs['width']}x{kwargs['height']}" if kwargs.get("width") and kwargs.get("height") else ""
    return (f"Out of GPU memory while sampling {count} image(s){size}. Lower the size or batch size, or start "
            "with --memory-profile 8gb or 4gb. The model stays loaded: the next job can run.")
