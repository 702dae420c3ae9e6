"""The generation service: the one place where a typed request becomes queued GPU work and saved images.

The Gradio UI, the REST API and the tests all call this; none of them touches models or the queue directly.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any, Callable

from webui import VERSION
from webui.config import Settings
from webui.errors import InvalidRequest, ModelLoadError, ModelNotFound
from webui.atomic import atomic_write_bytes
from webui.image_io import open_image
from webui.models.loader import LoadedModel
from webui.models.manager import ModelManager
from webui.pipelines import img2img, txt2img
from webui.pipelines.common import BatchOutput
from webui.provenance.credentials import ContentCredentials
from webui.provenance.encode import finish_png
from webui.provenance.policy import ProvenancePolicy
from webui.samplers import effective_schedule, resolve_sampler
from webui.services.folders import folder_policy, unused_name
from webui.services.jobs import Job, JobContext, JobQueue
from webui.services.prompt_budget import PromptBudget
from webui.services.safety import SafetyService
from webui.services.storage import ImageStore
from webui.types import GenerationResult, Img2ImgRequest, Txt2ImgRequest

log = logging.getLogger(__name__)
MAX_SEED = 2**32 - 1


def _pixels(count: int) -> str:
    return f"{count / 1e6:.1f} MP" if count >= 100_000 else f"{count} pixels"


def _schedule_label(spec, schedule: str) -> str | None:
    """Record the schedule that really ran, so the infotext reproduces the image; omit it where it is implicit."""
    effective = effective_schedule(spec, schedule)
    return None if effective == "Automatic" else effective


class GenerationService:
    def __init__(self, settings: Settings, manager: ModelManager, queue: JobQueue, store: ImageStore,
                 credentials: ContentCredentials | None = None,
                 provenance: Callable[[], ProvenancePolicy] = ProvenancePolicy,
                 safety: SafetyService | None = None):
        self._settings = settings
        self._safety = safety
        self._manager = manager
        self._queue = queue
        self._store = store
        self._credentials = credentials
        self._provenance = provenance  # read per job, so a settings change applies to the next job
        self._folders = folder_policy(settings)
        self._prompts = PromptBudget(settings.limits)

    def submit_txt2img(self, request: Txt2ImgRequest) -> Job:
        """Validate against the configured limits and queue the work; returns at once with the job."""
        schedule, policy = self._check(request), self._provenance()
        return self._queue.submit("txt2img",
                                  lambda ctx: self._run(ctx, request, schedule, _Txt2Img(request), policy),
                                  request=request)

    def txt2img(self, request: Txt2ImgRequest, timeout: float | None = None) -> GenerationResult:
        return self.submit_txt2img(request).wait(timeout)

    def submit_img2img(self, request: Img2ImgRequest) -> Job:
        schedule, policy = self._check(request), self._provenance()
        if not request.init_images:
            raise InvalidRequest("init_images", "at least one image is required")
        budget = self._settings.limits.max_image_pixels
        for index, image in enumerate(request.init_images):
            if image.width * image.height > budget:
                raise InvalidRequest(f"init_images.{index}", f"{image.width}x{image.height} is over this server's "
                                                             f"limit of {budget} pixels")
        if request.mask is not None:
            init_size = request.init_images[0].size
            if request.mask.size != init_size:
                raise InvalidRequest("mask", f"is {request.mask.size[0]}x{request.mask.size[1]} but the init "
                                             f"image is {init_size[0]}x{init_size[1]}; they must match")
        return self._queue.submit("img2img",
                                  lambda ctx: self._run(ctx, request, schedule, _Img2Img(request), policy),
                                  request=request)

    def img2img(self, request: Img2ImgRequest, timeout: float | None = None) -> GenerationResult:
        return self.submit_img2img(request).wait(timeout)

    def submit_img2img_batch(self, template: Img2ImgRequest, input_dir: str | Path,
                             output_dir: str | Path | None = None) -> Job:
        """Every image in ``input_dir`` through img2img with the template's settings, in one job.

        Both folders must lie inside the allowed roots (see webui/services/folders.py). Results go to
        ``output_dir`` (default: the usual img2img outputs) as ``<input name>.png`` with infotext, never
        overwriting a file already there.
        """
        schedule, policy = self._check(template), self._provenance()
        files = self._folders.input_files(str(input_dir), "input_dir")
        target = None
        if output_dir is not None and str(output_dir).strip():
            target = self._folders.output_folder(str(output_dir), "output_dir")
        return self._queue.submit("img2img-batch",
                                  lambda ctx: self._run_batch_folder(ctx, template, schedule, files, target, policy),
                                  request=template)

    @property
    def batch_folders_enabled(self) -> bool:
        return self._folders.enabled

    def _run_batch_folder(self, ctx: JobContext, template: Img2ImgRequest, schedule: str, files: list[Path],
                          output_dir: Path | None, policy: ProvenancePolicy) -> GenerationResult:
        total = GenerationResult(images=[], seeds=[], infotexts=[])
        for path in files:
            if ctx.interrupted:
                break
            limits = self._settings.limits
            try:
                image = open_image(path, f"input_dir: {path.name}", max_pixels=limits.max_image_pixels,
                                   formats=limits.image_formats).convert("RGB")
            except InvalidRequest as exc:
                total.warnings.append(f"Skipped {exc}")  # one bad file does not cost the rest of the folder
                continue
            request = template.model_copy(update={"init_images": [image],
                                                  "save_images": template.save_images and output_dir is None})
            result = self._run(ctx, request, schedule, _Img2Img(request), policy)
            for k, png in enumerate(result.pngs):
                if output_dir is not None:
                    target = unused_name(output_dir, path.stem if len(result.images) == 1 else f"{path.stem}-{k}")
                    atomic_write_bytes(target, png)
                    total.paths.append(target)
            total.paths.extend(result.paths)
            total.images += result.images
            total.pngs += result.pngs
            total.seeds += result.seeds
            total.infotexts += result.infotexts
            total.warnings += [w for w in result.warnings if w not in total.warnings]
            total.info = result.info
        total.interrupted = ctx.interrupted
        if total.info:
            total.info["warnings"] = list(total.warnings)
        return total

    def _check(self, request: Txt2ImgRequest) -> str:
        limits = self._settings.limits
        for field, value, limit in (("width", request.width, limits.max_width),
                                    ("height", request.height, limits.max_height),
                                    ("steps", request.steps, limits.max_steps),
                                    ("batch_size", request.batch_size, limits.max_batch_size),
                                    ("n_iter", request.n_iter, limits.max_batch_count)):
            if value > limit:
                raise InvalidRequest(field, f"{value} is over this server's limit of {limit}")
        self._check_job_pixels(request)
        self._prompts.check("prompt", request.prompt)
        self._prompts.check("negative_prompt", request.negative_prompt)
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

    def _check_job_pixels(self, request: Txt2ImgRequest) -> None:
        """One budget for the whole job, so many allowed sizes cannot multiply into hours of GPU time."""
        budget = self._settings.limits.max_job_pixels
        total = request.width * request.height * request.batch_size * request.n_iter
        if total > budget:
            # Blame the field the user most likely wants to lower.
            field = "n_iter" if request.n_iter > 1 else "batch_size" if request.batch_size > 1 else "width"
            raise InvalidRequest(field, f"width x height x batch_size x n_iter = {request.width}x{request.height}"
                                        f"x{request.batch_size}x{request.n_iter} = {_pixels(total)}, over this "
                                        f"server's per-job budget of {_pixels(budget)}")

    def _save(self, result: GenerationResult, png: bytes, category: str, seed: int) -> None:
        """Save one finished PNG; a full disk or unwritable outputs folder costs the file, never the image."""
        try:
            result.paths.append(self._store.save(png, category, seed))
        except OSError as exc:
            log.warning("Could not save a %s image: %s", category, exc)
            reason = exc.strerror or type(exc).__name__
            warning = f"Image not saved to the outputs folder ({reason}); it is only returned here."
            if warning not in result.warnings:
                result.warnings.append(warning)

    def _run(self, ctx: JobContext, request: Txt2ImgRequest, schedule: str, task: "_Task",
             policy: ProvenancePolicy) -> GenerationResult:
        """The batch loop both tasks share: seeds, progress, interrupt/skip, infotext, provenance, saving."""
        started = time.time()
        base_seed = request.seed if request.seed != -1 else random.randint(0, MAX_SEED)
        result = GenerationResult(images=[], seeds=[], infotexts=[])
        with self._manager.lease(request.checkpoint) as model:
            task.check_model(model)
            for batch_index in range(request.n_iter):
                if ctx.interrupted:
                    break
                seeds = [base_seed + batch_index * request.batch_size + k for k in range(request.batch_size)]
                ctx.begin_image(batch_index, request.n_iter, task.steps(model),
                                f"Batch {batch_index + 1} of {request.n_iter}")
                out = task.run_batch(model, batch_index, seeds, schedule, ctx, self._settings.preview_every)
                if ctx.consume_skip() and not ctx.interrupted:
                    continue  # Skip drops this batch and moves on to the next one
                images, verdicts = self._review(out.images, policy, result)
                for image, seed, verdict in zip(images, seeds, verdicts):
                    params = self.infotext_params(model, request, schedule, seed, task.extra_params(model))
                    if verdict:
                        params["Safety checker"] = verdict
                    final = finish_png(image, request.prompt, request.negative_prompt, params, policy,
                                       self._credentials, title=f"Stable Studio {task.category}, seed {seed}")
                    result.images.append(final.image)
                    result.pngs.append(final.png)
                    result.seeds.append(seed)
                    result.infotexts.append(final.infotext)
                    if request.save_images:
                        self._save(result, final.png, task.category, seed)
            result.interrupted = ctx.interrupted
            if ctx.limit_message:
                result.warnings.append(f"The job was {ctx.limit_message}; {len(result.images)} image(s) done.")
            result.info = self._info(model, request, result, base_seed, started)
        return result

    def _review(self, images: list, policy: ProvenancePolicy, result: GenerationResult) -> tuple[list, list]:
        """The safety checker's pass when it is on: flagged images blurred; ``None`` verdicts when it is off."""
        if not policy.safety_check:
            return images, [None] * len(images)
        try:
            if self._safety is None:
                raise ModelLoadError("no safety checker is configured on this server")
            review = self._safety.review(images)
        except ModelLoadError as exc:
            # Not silent: the images carry "Safety checker: unavailable" and the job reports why.
            warning = f"The safety checker is on but could not run: {exc}"
            if warning not in result.warnings:
                result.warnings.append(warning)
            return images, ["unavailable"] * len(images)
        return review.images, review.verdicts

    @staticmethod
    def infotext_params(model: LoadedModel, request: Txt2ImgRequest, schedule: str, seed: int,
                        extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The infotext's parameters line; ``finish_png`` adds what provenance was applied and formats it."""
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
            **(extra or {}),
            "Version": f"studio-{VERSION}",
        }
        return params

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
            "denoising_strength": getattr(request, "denoising_strength", None),
            "extra_generation_params": {},
            "index_of_first_image": 0,
            "infotexts": result.infotexts,
            "styles": [],
            "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(started)),
            "clip_skip": request.clip_skip,
            "is_using_inpainting_conditioning": model.variant == "inpaint",
            "version": f"studio-{VERSION}",
            "interrupted": result.interrupted,
            "warnings": list(result.warnings),
        }


class _Task:
    """What differs between txt2img and img2img inside the shared batch loop."""

    category: str

    def check_model(self, model: LoadedModel) -> None: ...
    def steps(self, model: LoadedModel) -> int: ...
    def extra_params(self, model: LoadedModel) -> dict[str, Any]: ...
    def run_batch(self, model: LoadedModel, batch_index: int, seeds: list[int], schedule: str,
                  ctx: JobContext, preview_every: int) -> BatchOutput: ...


class _Txt2Img(_Task):
    category = "txt2img"

    def __init__(self, request: Txt2ImgRequest):
        self.request = request

    def check_model(self, model: LoadedModel) -> None:
        if model.variant != "normal":
            raise InvalidRequest("checkpoint", f"{model.info.title} is an {model.variant} model; use it from img2img.")

    def steps(self, model: LoadedModel) -> int:
        return self.request.steps

    def extra_params(self, model: LoadedModel) -> dict[str, Any]:
        return {}

    def run_batch(self, model, batch_index, seeds, schedule, ctx, preview_every) -> BatchOutput:
        return txt2img.run_batch(model, self.request, seeds, schedule, ctx, preview_every)


class _Img2Img(_Task):
    category = "img2img"

    def __init__(self, request: Img2ImgRequest):
        self.request = request

    def _method(self, model: LoadedModel) -> str:
        return img2img.method_for(model, self.request.mask is not None)

    def check_model(self, model: LoadedModel) -> None:
        pass  # every variant has an image-to-image use

    def steps(self, model: LoadedModel) -> int:
        return img2img.steps_run(self.request.steps, self.request.denoising_strength, self._method(model))

    def extra_params(self, model: LoadedModel) -> dict[str, Any]:
        method, r = self._method(model), self.request
        return {
            "Image CFG scale": r.image_cfg_scale if method == "instruct-pix2pix" else None,
            "Denoising strength": r.denoising_strength if method != "instruct-pix2pix" else None,
            "Mask blur": r.mask_blur if method == "inpaint" and r.mask is not None else None,
            "Inpaint area": "Only masked" if method == "inpaint" and r.inpaint_full_res else None,
            "Masked area padding": r.inpaint_full_res_padding if method == "inpaint" and r.inpaint_full_res else None,
        }

    def run_batch(self, model, batch_index, seeds, schedule, ctx, preview_every) -> BatchOutput:
        method = self._method(model)
        init = self.request.init_images[batch_index % len(self.request.init_images)]
        prepared = img2img.prepare(self.request, init, method)
        return img2img.run_batch(model, self.request, prepared, method, seeds, schedule, ctx, preview_every)
