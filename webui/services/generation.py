"""The generation service: the one place where a typed request becomes queued GPU work and saved images.

The Gradio UI, the REST API and the tests all call this; none of them touches models or the queue directly.
"""

from __future__ import annotations

import random
import time
from typing import Any

from webui import VERSION
from webui.config import Settings
from webui.errors import InvalidRequest, ModelNotFound
from webui.infotext import format_infotext
from webui.models.loader import LoadedModel
from webui.models.manager import ModelManager
from webui.pipelines import txt2img
from webui.samplers import effective_schedule, resolve_sampler
from webui.services.jobs import Job, JobContext, JobQueue
from webui.services.storage import ImageStore
from webui.types import GenerationResult, Txt2ImgRequest

MAX_SEED = 2**32 - 1


def _schedule_label(spec, schedule: str) -> str | None:
    """Record the schedule that really ran, so the infotext reproduces the image; omit it where it is implicit."""
    effective = effective_schedule(spec, schedule)
    return None if effective == "Automatic" else effective


class GenerationService:
    def __init__(self, settings: Settings, manager: ModelManager, queue: JobQueue, store: ImageStore):
        self._settings = settings
        self._manager = manager
        self._queue = queue
        self._store = store

    def submit_txt2img(self, request: Txt2ImgRequest) -> Job:
        """Validate against the configured limits and queue the work; returns at once with the job."""
        schedule = self._check(request)
        return self._queue.submit("txt2img", lambda ctx: self._run_txt2img(ctx, request, schedule))

    def txt2img(self, request: Txt2ImgRequest, timeout: float | None = None) -> GenerationResult:
        return self.submit_txt2img(request).wait(timeout)

    def _check(self, request: Txt2ImgRequest) -> str:
        limits = self._settings.limits
        for field, value, limit in (("width", request.width, limits.max_width),
                                    ("height", request.height, limits.max_height),
                                    ("steps", request.steps, limits.max_steps),
                                    ("batch_size", request.batch_size, limits.max_batch_size),
                                    ("n_iter", request.n_iter, limits.max_batch_count)):
            if value > limit:
                raise InvalidRequest(field, f"{value} is over this server's limit of {limit}")
        try:
            _, schedule = resolve_sampler(request.sampler_name, request.scheduler)
        except ValueError as exc:
            raise InvalidRequest("sampler_name", str(exc)) from None
        if request.checkpoint:
            try:
                self._manager.registry.find(request.checkpoint)
            except ModelNotFound as exc:
                raise InvalidRequest("checkpoint", str(exc)) from None
        return schedule

    def _run_txt2img(self, ctx: JobContext, request: Txt2ImgRequest, schedule: str) -> GenerationResult:
        started = time.time()
        base_seed = request.seed if request.seed != -1 else random.randint(0, MAX_SEED)
        result = GenerationResult(images=[], seeds=[], infotexts=[])
        with self._manager.lease(request.checkpoint) as model:
            if model.variant != "normal":
                raise InvalidRequest("checkpoint", f"{model.info.title} is an {model.variant} model; "
                                                   "use it from img2img.")
            for batch_index in range(request.n_iter):
                if ctx.interrupted:
                    break
                seeds = [base_seed + batch_index * request.batch_size + k for k in range(request.batch_size)]
                ctx.begin_image(batch_index, request.n_iter, request.steps,
                                f"Batch {batch_index + 1} of {request.n_iter}")
                out = txt2img.run_batch(model, request, seeds, schedule, ctx, self._settings.preview_every)
                if ctx.consume_skip() and not ctx.interrupted:
                    continue  # Skip drops this batch and moves on to the next one
                for image, seed in zip(out.images, seeds):
                    infotext = self.infotext(model, request, schedule, seed)
                    result.images.append(image)
                    result.seeds.append(seed)
                    result.infotexts.append(infotext)
                    if request.save_images:
                        result.paths.append(self._store.save(image, "txt2img", seed, infotext))
            result.interrupted = ctx.interrupted
            result.info = self._info(model, request, result, base_seed, started)
        return result

    @staticmethod
    def infotext(model: LoadedModel, request: Txt2ImgRequest, schedule: str, seed: int) -> str:
        spec, _ = resolve_sampler(request.sampler_name, request.scheduler)
        params: dict[str, Any] = {
            "Steps": request.steps,
            "Sampler": spec.name,
            "Schedule type": _schedule_label(spec, schedule),
            "CFG scale": request.cfg_scale,
            "Seed": seed,
            "Size": f"{request.width}x{request.height}",
            "Model hash": model.info.short_hash,
            "Model": model.info.model_name,
            "Clip skip": request.clip_skip if request.clip_skip > 1 else None,
            "Version": f"studio-{VERSION}",
        }
        return format_infotext(request.prompt, request.negative_prompt, params)

    @staticmethod
    def _info(model: LoadedModel, request: Txt2ImgRequest, result: GenerationResult, base_seed: int,
              started: float) -> dict[str, Any]:
        """The A1111 ``info`` object clients parse (as JSON) from API responses."""
        count = len(result.images)
        spec, schedule = resolve_sampler(request.sampler_name, request.scheduler)
        return {
            "prompt": request.prompt,
            "all_prompts": [request.prompt] * count,
            "negative_prompt": request.negative_prompt,
            "all_negative_prompts": [request.negative_prompt] * count,
            "seed": base_seed,
            "all_seeds": result.seeds,
            "subseed": -1,
            "all_subseeds": [-1] * count,
            "subseed_strength": 0,
            "width": request.width,
            "height": request.height,
            "sampler_name": spec.name,
            "scheduler": schedule,
            "cfg_scale": request.cfg_scale,
            "steps": request.steps,
            "batch_size": request.batch_size,
            "restore_faces": False,
            "face_restoration_model": None,
            "sd_model_name": model.info.model_name,
            "sd_model_hash": model.info.short_hash,
            "sd_vae_name": None,
            "sd_vae_hash": None,
            "seed_resize_from_w": -1,
            "seed_resize_from_h": -1,
            "denoising_strength": None,
            "extra_generation_params": {},
            "index_of_first_image": 0,
            "infotexts": result.infotexts,
            "styles": [],
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(started)),
            "clip_skip": request.clip_skip,
            "is_using_inpainting_conditioning": False,
            "version": f"studio-{VERSION}",
            "interrupted": result.interrupted,
        }
