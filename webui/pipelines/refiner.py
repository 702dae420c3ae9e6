"""The refiner, as A1111 1.6+ runs it: one sampler over the whole schedule, two models.

Before every denoiser call A1111 checks how far sampling has come (by noise level, see
``KDiffusionScheduler.refiner_switch_call``); once ``refiner_switch_at`` is reached it loads the refiner, encodes
the prompts again with the refiner's text encoders and CONTINUES the same sampler: the latents, a multistep
sampler's history (LMS, DPM++ 2M) and the noise streams carry on. Here the base model runs in diffusers' pipeline,
stopped (``_interrupt``) right before the switching call; the scheduler object keeps the sampler's state, and the
remaining calls run in the short loop below with the refiner's UNet (the same steps diffusers' loop takes:
scale, UNet, classifier-free guidance, ``scheduler.step``). Real SDXL refiners condition on OpenCLIP-G only and
on an aesthetic score in their time ids (A1111's defaults: 6 for the prompt, 2.5 for the negative prompt).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable

import torch

from webui.errors import InvalidRequest, OutOfMemory
from webui.k_samplers import KDiffusionScheduler
from webui.models.embeddings import JobEmbeddings
from webui.models.loader import LoadedModel
from webui.pipelines import common, decode, noise, sampler_options
from webui.pipelines.common import BatchOutput, StepListener
from webui.pipelines.preview import PreviewSettings, render
from webui.pipelines.prompt_switch import PromptSwitch
from webui.types import Txt2ImgRequest

HIGH_AESTHETIC_SCORE = 6.0  # A1111's sdxl_refiner_high_aesthetic_score (the prompt)
LOW_AESTHETIC_SCORE = 2.5   # A1111's sdxl_refiner_low_aesthetic_score (the negative prompt)

Lease = Callable[[], AbstractContextManager[LoadedModel]]


def short_title(model: LoadedModel) -> str:
    """How A1111 names the refiner in the infotext: file name without extension, and short hash."""
    info = model.info
    return f"{info.model_name} [{info.short_hash}]" if info.short_hash else info.model_name


def check_pair(base: LoadedModel, refiner: LoadedModel) -> None:
    """Refuse a refiner whose latents mean something else than the base's (SD 1.x/2.x vs SDXL), or that needs an
    image to condition on."""
    if (base.family == "sdxl") != (refiner.family == "sdxl"):
        raise InvalidRequest("refiner_checkpoint", f"{refiner.info.title} is an {_label(refiner)} model and "
                                                   f"{base.info.title} an {_label(base)} one: their latent "
                                                   "spaces differ, so one cannot continue the other's image")
    if refiner.variant not in ("normal", "refiner"):
        raise InvalidRequest("refiner_checkpoint", f"{refiner.info.title} is an {refiner.variant} model; a "
                                                   "refiner must be a text-to-image checkpoint")


def _label(model: LoadedModel) -> str:
    return "SDXL" if model.family == "sdxl" else "SD 1.x/2.x"


def run_batch(model: LoadedModel, request: Txt2ImgRequest, seeds: list[int], listener: StepListener,
              preview_every: PreviewSettings | int, initial: Callable[[object], tuple[torch.Tensor, noise.ImageNoise]],
              lease_refiner: Lease) -> BatchOutput:
    """txt2img with ``model`` until the switch, then with the leased refiner; ``initial(runner)`` gives the
    starting noise and the step noise exactly as the refiner-less path makes them."""
    if model.variant != "normal":
        raise InvalidRequest("refiner_checkpoint", f"{model.info.title} is an {model.variant} model; the refiner "
                                                   "continues a text-to-image checkpoint")
    runner = common.job_pipeline(model, type(model.pipe), request.sampling, seeds)
    scheduler = runner.scheduler
    if not isinstance(scheduler, KDiffusionScheduler):
        raise InvalidRequest("refiner_checkpoint", f"the refiner needs one of the k-diffusion samplers; "
                                                   f"{request.sampling.spec.name} is not one")
    latents, image_noise = initial(runner)
    scheduler.step_noise = image_noise  # A1111's rng.next(): each image's stream, continued on the refiner too
    scheduler.options = sampler_options.from_request(request)
    gens = image_noise.torch_generators()
    prompts = PromptSwitch.encode(runner, model.family, request.prompt, request.negative_prompt, request.clip_skip,
                                  request.steps, len(seeds), embeddings=model.embeddings)
    if prompts.pair.composable:
        raise InvalidRequest("prompt", "composable prompts (AND) are not supported with a refiner yet; leave the "
                                       "refiner out or write \"and\" in lower case to mean the word")
    device = runner._execution_device
    scheduler.set_timesteps(request.steps, device=device)  # the pipeline sets the same again; nothing ran yet
    switch = scheduler.refiner_switch_call(request.refiner_switch_at)
    callback = _StopBefore(common.StepCallback(listener, request.steps, preview_every, model.family, prompts),
                           switch)
    kwargs = dict(
        prompts.kwargs(),
        num_inference_steps=request.steps, guidance_scale=request.cfg_scale,
        width=request.width, height=request.height, num_images_per_prompt=len(seeds),
        latents=latents, generator=gens,
    )
    # Borrowed (and checked) before the base pass, so a refiner that cannot continue this model costs no sampling;
    # not at all when sampling never reaches the switch (A1111 does not load it then either).
    with torch.inference_mode(), (lease_refiner() if switch is not None else nullcontext()) as refiner:
        try:
            if refiner is not None:
                check_pair(model, refiner)
            if switch != 0:
                latents = runner(**kwargs, output_type="latent", **callback.kwargs()).images
            else:  # the refiner from the first call on: the pipeline would only scale the noise
                latents = latents * scheduler.init_noise_sigma
            if refiner is None or callback.inner.stopped:
                images = decode.decode_latents(runner.vae, latents)
                return BatchOutput(decode.to_pil(images), stopped_early=callback.inner.stopped)
            with common.seamless(refiner, request.tiling):
                latents, stopped = _continue(refiner, scheduler, latents, gens, request, len(seeds), switch,
                                             listener, preview_every, model.embeddings)
                # A1111 decodes with the model loaded at the end (the refiner, with the job's VAE file if any).
                vae = model.vae if model.vae is not None else refiner.pipe.vae
                images = decode.decode_latents(vae, latents)
            return BatchOutput(decode.to_pil(images), stopped_early=stopped, refiner=short_title(refiner))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise OutOfMemory(f"Out of GPU memory while sampling {len(seeds)} image(s) with a refiner. Lower the "
                              "size or batch size, or start with --memory-profile 8gb or 4gb.") from None


class _StopBefore:
    """The base pass's step callback: progress as usual, and the loop ended before denoiser call ``call``."""

    def __init__(self, inner: common.StepCallback, call: int | None):
        self.inner = inner
        self._call = call

    def __call__(self, pipeline, step_index: int, timestep, tensors: dict) -> dict:
        outputs = self.inner(pipeline, step_index, timestep, tensors)
        if self._call is not None and step_index + 1 >= self._call:
            pipeline._interrupt = True  # the scheduler keeps the sampler's state for the refiner
        return outputs

    def kwargs(self) -> dict:
        return {"callback_on_step_end": self, "callback_on_step_end_tensor_inputs": ["latents"]}


def _continue(refiner: LoadedModel, scheduler: KDiffusionScheduler, latents: torch.Tensor,
              gens: list[torch.Generator], request: Txt2ImgRequest, images: int, first_call: int,
              listener: StepListener, preview_every: PreviewSettings | int,
              embeddings: JobEmbeddings | None = None) -> tuple[torch.Tensor, bool]:
    """Denoiser calls ``first_call``.. of the running sampler with the refiner's UNet and prompts (with the job's
    embeddings that fit the refiner's text encoder)."""
    pipe = refiner.pipe
    unet = pipe.unet
    device = pipe._execution_device
    pair = PromptSwitch.encode(pipe, refiner.family, request.prompt, request.negative_prompt, request.clip_skip,
                               request.steps, images,
                               embeddings=embeddings.for_pipe(pipe) if embeddings is not None else None).pair
    guided = request.cfg_scale > 1  # as diffusers' pipelines decide, so the base pass and this one agree
    # The refiner's UNet may predict v where the base's predicts eps (an SD 2.x-v refiner of SD 1.5): the sampler
    # turns its output into denoised latents the refiner's way from here on. The job's scheduler is its own.
    prediction = refiner.scheduler_config.get("prediction_type", "epsilon")
    if prediction != scheduler.config.prediction_type:
        scheduler.register_to_config(prediction_type=prediction)
    latents = latents.to(device, unet.dtype)
    hook = getattr(listener, "step_hook", None)  # extensions' step hooks (common.StepHook), as in the base pass
    guidance = request.cfg_scale
    for index in range(first_call, len(scheduler.timesteps)):
        # The prompt schedule's step, as the base pass's callback counts it (sampler steps done so far).
        step = scheduler.step_of_call[index - 1] if index else 0
        cond_index, uncond_index = pair.indexes_at(step)
        cond, uncond = pair.conds[cond_index], pair.unconds[uncond_index]
        embeds, added = _unet_conditioning(refiner, cond, uncond, request, images, guided, device)
        timestep = scheduler.timesteps[index]
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = scheduler.scale_model_input(model_input, timestep)
        noise_pred = unet(model_input, timestep, encoder_hidden_states=embeds.to(unet.dtype),
                          added_cond_kwargs=added, return_dict=False)[0]
        if guided:
            noise_uncond, noise_cond = noise_pred.chunk(2)
            noise_pred = noise_uncond + guidance * (noise_cond - noise_uncond)
        latents = scheduler.step(noise_pred, timestep, latents, generator=gens, return_dict=False)[0]
        done = scheduler.step_of_call[index]
        if hook is not None and common.completes_step(scheduler.step_of_call, index):
            latents, guidance, cancel = hook(done, request.steps, latents, guidance)
            if cancel:
                return latents, True
        settings = PreviewSettings.of(preview_every)
        shown = common.StepCallback.denoised(scheduler, latents)
        size = (request.width, request.height)
        preview = (_drawing(shown, refiner.family, size, settings, pipe.vae)
                   if settings.due(done, request.steps) else None)
        listener.on_step(done, request.steps, preview)
        if listener.should_stop():
            return latents, True
    return latents, False


def _unet_conditioning(model: LoadedModel, cond, uncond, request: Txt2ImgRequest, images: int, guided: bool,
                       device: torch.device) -> tuple[torch.Tensor, dict | None]:
    """Prompt embeddings laid out as diffusers lays them ([uncond x n, cond x n]) and SDXL's added conditioning."""
    def batch(c: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        repeat = (images,) + (1,) * (c.dim() - 1)
        return torch.cat([u.repeat(repeat), c.repeat(repeat)]) if guided else c.repeat(repeat)

    embeds = batch(cond.embeds, uncond.embeds).to(device)
    if model.family != "sdxl":
        return embeds, None
    config = model.pipe.unet.config
    pooled_dim = cond.pooled.shape[-1]
    time_ids_count = (config.projection_class_embeddings_input_dim - pooled_dim) // config.addition_time_embed_dim
    size = [request.height, request.width]
    if time_ids_count == 5:  # a real refiner: original size, crop, aesthetic score
        positive, negative = size + [0, 0, HIGH_AESTHETIC_SCORE], size + [0, 0, LOW_AESTHETIC_SCORE]
    else:  # an SDXL base as refiner: original size, crop, target size
        positive = negative = size + [0, 0] + size
    dtype = model.pipe.unet.dtype
    time_ids = batch(torch.tensor([positive], dtype=dtype), torch.tensor([negative], dtype=dtype)).to(device)
    pooled = batch(cond.pooled, uncond.pooled).to(device, dtype)
    return embeds, {"text_embeds": pooled, "time_ids": time_ids}


def _drawing(shown: torch.Tensor, family: str, size: tuple[int, int], settings: PreviewSettings, vae):
    """The preview of one step, drawn only if the job is watched when it is called (TAESD loaded then too)."""
    return lambda: render(shown, family, size, settings.method, vae, settings.tiny_decoder(family))
