"""The generation service: the one place where a typed request becomes queued GPU work and saved images.

The Gradio UI, the REST API and the tests all call this; none of them touches models or the queue directly.
"""

from __future__ import annotations

import datetime
import logging
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Protocol

from webui import VERSION
from webui.config import Settings
from webui.hires_fix import UPSCALERS
from webui.errors import InvalidRequest, ModelLoadError, ModelNotFound, NoModelAvailable
from webui.extensions.hooks import Hooks, kind_of
from webui.atomic import atomic_write_bytes
from webui.image_io import open_image
from webui.infotext import parse_infotext
from webui.parameters import InfotextContext, infotext_params
from webui.models.loader import LoadedModel
from webui.models.embeddings import EmbeddingLibrary, JobEmbeddings
from webui.models.loras import LoraRegistry
from webui.models.manager import ModelManager
from webui.models.native_size import FALLBACK as FALLBACK_SIZE
from webui.models.native_size import native_size
from webui.models.vae import AUTOMATIC as AUTOMATIC_VAE
from webui.models.vae import VaeChoice, VaeFiles, load_vae
from webui.pipelines import hires, img2img, txt2img
from webui.pipelines.common import BatchOutput, seamless
from webui.pipelines.preview import PreviewSettings
from webui.provenance.credentials import ContentCredentials
from webui.provenance.encode import FinalPng, finish_png
from webui.provenance.policy import ProvenancePolicy
from webui.services.folders import folder_policy, unused_name
from webui.services.job_estimate import JobEstimate, JobSpeed, LongJobWarning, work
from webui.services.job_loras import JobLoras
from webui.services.jobs import LONG, Job, JobContext, JobKind, JobQueue
from webui.services.prompt_budget import PromptBudget
from webui.services.safety import SafetyService
from webui.services.file_names import NameContext
from webui.services.saving import ImageSaver, SaveOptions, image_bytes
from webui.services.storage import ImageStore
from webui.grids import image_grid
from webui.services.upscaling import UpscalingService
from webui.types import (CheckpointInfo, GenerationResult, Img2ImgBatchRequest, Img2ImgRequest, Txt2ImgRequest,
                         safe_label)

log = logging.getLogger(__name__)
MAX_SEED = 2**32 - 1
Confirm = Callable[[JobEstimate], bool]
MAX_LOADED_VAES = 2  # VAE files kept on a device between jobs (about 160 MB each in fp16)


def _pixels(count: int) -> str:
    return f"{count / 1e6:.1f} MP" if count >= 100_000 else f"{count} pixels"


class RemoteGenerator(Protocol):
    """Makes a job's images elsewhere (a Ray replica, webui/scaleout/remote.py): the same generation, returned
    unmarked and unsaved; this process applies provenance and saves, so results land in one place."""

    def generate(self, ctx: JobContext, request: Txt2ImgRequest, safety_check: bool) -> GenerationResult: ...


class GenerationService:
    def __init__(self, settings: Settings, manager: ModelManager, queue: JobQueue, store: ImageStore,
                 credentials: ContentCredentials | None = None,
                 provenance: Callable[[], ProvenancePolicy] = ProvenancePolicy,
                 safety: SafetyService | None = None, *, vaes: VaeFiles | None = None,
                 vae_option: Callable[[], str] = lambda: AUTOMATIC_VAE,
                 save_before_hires: Callable[[], bool] = lambda: False,
                 saving: Callable[[], SaveOptions] = SaveOptions, upscalers: UpscalingService | None = None,
                 preview: Callable[[], PreviewSettings] = PreviewSettings,
                 confirm_after: Callable[[], float] = lambda: 0, embeddings: EmbeddingLibrary | None = None,
                 loras: JobLoras | None = None, hooks: Hooks | None = None, remote: RemoteGenerator | None = None):
        """``upscalers``: the upscaler models hires fix may use (None: only the built-in ones); ``embeddings``:
        the textual-inversion files prompts may name (None: none); ``loras``: the LoRAs prompts may name (None: a
        registry over ``models/Lora`` of its own); ``hooks``: the extensions' hooks (None: no extensions);
        ``remote``: scale-out: where images are made (Ray replicas); this process then finishes and saves them."""
        self._remote = remote
        self._embeddings = embeddings
        self._hooks = hooks or Hooks.none()
        self._loras = loras or JobLoras(LoraRegistry(settings.lora_dir,
                                                     allow_external_links=settings.allow_external_model_links),
                                        allow_pickle=settings.allow_pickle)
        self._settings = settings
        self._saving = saving  # A1111's saving options (names, format, .txt, grids), read per job
        self._saver = ImageSaver(store.root)
        self._upscalers = upscalers
        self._vaes = vaes  # None: every job uses its checkpoint's own VAE
        self._vae_option = vae_option  # read per job, like the provenance policy
        self._save_before_hires = save_before_hires  # A1111's save_images_before_highres_fix, read per job
        self._preview = preview  # the live preview options, read per job
        self._confirm_after = confirm_after  # seconds past which the UI asks before starting a job; 0: never
        self.speed = JobSpeed()  # measured on this process's batches
        self._safety = safety
        self._manager = manager
        self._queue = queue
        self._store = store
        self._credentials = credentials
        self._provenance = provenance  # read per job, so a settings change applies to the next job
        self._folders = folder_policy(settings)
        self._prompts = PromptBudget(settings.limits)
        queue.register(JobKind("txt2img", self._txt2img_job, uses_checkpoint=True))
        queue.register(JobKind("img2img", self._img2img_job, uses_checkpoint=True))
        # A folder can take hours: it runs between interactive jobs and can be paused between images.
        queue.register(JobKind("img2img-batch", self._batch_job, uses_checkpoint=True, pausable=True,
                               priority=LONG))

    def submit_txt2img(self, request: Txt2ImgRequest, confirm: Confirm | None = None) -> Job:
        """Validate against the configured limits and queue the work; returns at once with the job.

        ``confirm``: asked whether a job estimated past the ``confirm_long_jobs_seconds`` option may start
        (LongJobWarning when it says no); None (the API) starts it and logs the estimate."""
        self._check(request)
        self._check_duration(request, confirm)
        return self._queue.submit("txt2img", request, checkpoint=self._title(request.checkpoint))

    def estimate(self, request: Txt2ImgRequest) -> JobEstimate:
        """How long ``request`` should take on this server's first device, from what its jobs measured."""
        return self.speed.estimate(request, self._queue.devices[0])

    def _check_duration(self, request: Txt2ImgRequest, confirm: Confirm | None) -> None:
        threshold = self._confirm_after()
        if not threshold:
            return
        estimate = self.estimate(request)
        if estimate.seconds <= threshold:
            return
        if confirm is None:
            log.warning("%s Started without asking (an API request).", estimate.describe())
        elif not confirm(estimate):
            raise LongJobWarning(estimate)

    def _title(self, query: str | None) -> str | None:
        return self._manager.registry.find(query).title if query else None

    def _txt2img_job(self, ctx: JobContext, request: Txt2ImgRequest) -> GenerationResult:
        return self._run(ctx, request, self._txt2img_task(ctx, request), self._provenance())

    def _txt2img_task(self, ctx: JobContext, request: Txt2ImgRequest) -> "_Txt2Img":
        keep = request.enable_hr and request.save_images and self._save_before_hires()
        upscalers = self._upscalers
        model_upscale = None if upscalers is None else (
            lambda image, size, name: upscalers.upscale_with_model(ctx, image, size, name))
        return _Txt2Img(request, keep_first_pass=keep, model_upscale=model_upscale)

    def _img2img_job(self, ctx: JobContext, request: Img2ImgRequest) -> GenerationResult:
        return self._run(ctx, request, _Img2Img(request), self._provenance())


    def txt2img(self, request: Txt2ImgRequest, timeout: float | None = None) -> GenerationResult:
        return self.submit_txt2img(request).wait(timeout)

    def submit_img2img(self, request: Img2ImgRequest, confirm: Confirm | None = None) -> Job:
        self._check_img2img(request)
        self._check_duration(request, confirm)
        return self._queue.submit("img2img", request, checkpoint=self._title(request.checkpoint))

    def _check_img2img(self, request: Img2ImgRequest) -> None:
        self._check(request)
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

    def img2img(self, request: Img2ImgRequest, timeout: float | None = None) -> GenerationResult:
        return self.submit_img2img(request).wait(timeout)

    def submit_img2img_batch(self, template: Img2ImgRequest, input_dir: str | Path,
                             output_dir: str | Path | None = None) -> Job:
        """Every image in ``input_dir`` through img2img with the template's settings, in one job.

        Both folders must lie inside the allowed roots (see webui/services/folders.py). Results go to
        ``output_dir`` (default: the usual img2img outputs) as ``<input name>.png`` with infotext, never
        overwriting a file already there.
        """
        self._check(template)
        self._folders.input_files(str(input_dir), "input_dir")
        output = str(output_dir) if output_dir is not None and str(output_dir).strip() else None
        if output is not None:
            self._folders.output_folder(output, "output_dir")
        request = Img2ImgBatchRequest(template=template, input_dir=str(input_dir), output_dir=output)
        return self._queue.submit("img2img-batch", request, checkpoint=self._title(template.checkpoint))

    def _batch_job(self, ctx: JobContext, request: Img2ImgBatchRequest) -> GenerationResult:
        # The folders are checked again when the job starts: they may have changed while it waited.
        files = self._folders.input_files(request.input_dir, "input_dir")
        target = self._folders.output_folder(request.output_dir, "output_dir") if request.output_dir else None
        # The whole folder runs on the checkpoint that was the default when it started, even if the user
        # switches models while it runs (interactive jobs may run between its images).
        template = request.template.model_copy(update={"checkpoint": self._manager.resolve(
            request.template.checkpoint).title})
        return self._run_batch_folder(ctx, template, files, target, self._provenance())

    @property
    def batch_folders_enabled(self) -> bool:
        return self._folders.enabled

    def _run_batch_folder(self, ctx: JobContext, template: Img2ImgRequest, files: list[Path],
                          output_dir: Path | None, policy: ProvenancePolicy) -> GenerationResult:
        total = GenerationResult(images=[], seeds=[], infotexts=[])
        for path in files:
            ctx.safe_point()  # a pause, or interactive jobs waiting for this device, happen here
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
            result = self._run(ctx, request, _Img2Img(request), policy, grids=False)
            for k, png in enumerate(result.pngs):
                if output_dir is not None:
                    target = unused_name(output_dir, path.stem if len(result.images) == 1 else f"{path.stem}-{k}")
                    atomic_write_bytes(target, png)
                    total.paths.append(target)
            total.paths.extend(result.paths)
            total.images += result.images
            total.pngs += result.pngs
            total.seeds += result.seeds
            total.subseeds += result.subseeds
            total.infotexts += result.infotexts
            total.warnings += [w for w in result.warnings if w not in total.warnings]
            total.request, total.base_seed, total.started = result.request, result.base_seed, result.started
            total.model_name, total.model_hash = result.model_name, result.model_hash
            total.model_variant = result.model_variant
        total.interrupted = ctx.interrupted
        return total

    def _check(self, request: Txt2ImgRequest) -> None:
        limits = self._settings.limits
        for field, value, limit in (("width", request.width, limits.max_width),
                                    ("height", request.height, limits.max_height),
                                    ("steps", request.steps, limits.max_steps),
                                    ("batch_size", request.batch_size, limits.max_batch_size),
                                    ("n_iter", request.n_iter, limits.max_batch_count)):
            if value > limit:
                raise InvalidRequest(field, f"{value} is over this server's limit of {limit}")
        self._check_job_pixels(request)
        self._prompts.check("prompt", request.prompt, request.steps, composable=True)
        self._prompts.check("negative_prompt", request.negative_prompt, request.steps)
        self._loras.check(request)
        if getattr(request, "enable_hr", False) and not hasattr(request, "init_images"):
            self._check_hires(request)
        if request.sd_vae is not None and self._vaes is not None:
            self._vaes.check("sd_vae", request.sd_vae)
        if request.checkpoint:
            try:
                self._manager.registry.find(request.checkpoint)
            except ModelNotFound as exc:
                raise InvalidRequest("checkpoint", str(exc)) from None
        self._check_refiner(request)
        self._hooks.values(request)  # each extension's values against its model: extensions.<name>.<field>

    def native_size(self, checkpoint: str | None = None) -> int:
        """The native image size of ``checkpoint`` (None: the current one), known without loading it; A1111's 512
        when there is no checkpoint (the job then says so)."""
        try:
            return native_size(self._manager.resolve(checkpoint))
        except (ModelNotFound, NoModelAvailable):
            return FALLBACK_SIZE

    def _check_refiner(self, request: Txt2ImgRequest) -> None:
        """The refiner must exist and be able to continue the sampler; its family is checked when it loads."""
        refiner = request.refiner_checkpoint
        if refiner is None:
            return
        if isinstance(request, Img2ImgRequest):
            raise InvalidRequest("refiner_checkpoint", "the refiner is supported in txt2img only on this server "
                                                       "yet; leave it out")
        try:
            self._manager.registry.find(refiner)
        except ModelNotFound as exc:
            raise InvalidRequest("refiner_checkpoint", str(exc)) from None
        if request.enable_hr:
            raise InvalidRequest("refiner_checkpoint", "the refiner together with hires fix is not supported on "
                                                       "this server yet; use one of them")
        if not request.sampling.spec.k_algorithm:
            raise InvalidRequest("refiner_checkpoint", f"the refiner needs one of the k-diffusion samplers; "
                                                       f"{request.sampling.spec.name} is not one")

    def _check_hires(self, request: Txt2ImgRequest) -> None:
        """The hires pass against the same limits as a first pass of its size."""
        limits = self._settings.limits
        width, height = request.hires_size.final()
        field = "hr_resize_x" if request.hr_resize_x or request.hr_resize_y else "hr_scale"
        if request.hr_upscaler not in UPSCALERS:
            models = [m.name for m in self._upscalers.models()] if self._upscalers is not None else []
            if request.hr_upscaler.lower() not in (m.lower() for m in models):
                raise InvalidRequest("hr_upscaler", f"unknown upscaler {safe_label(request.hr_upscaler)!r}; choose "
                                                    f"one of {', '.join([*UPSCALERS, *models])} (GET "
                                                    "/sdapi/v1/upscalers and /sdapi/v1/latent-upscale-modes)")
        if width < 8 or height < 8:
            raise InvalidRequest(field, f"the hires size {width}x{height} is too small")
        for side, value, limit in (("width", width, limits.max_width), ("height", height, limits.max_height)):
            if value > limit:
                raise InvalidRequest(field, f"the hires {side} {value} is over this server's limit of {limit}")
        if request.hr_second_pass_steps > limits.max_steps:
            raise InvalidRequest("hr_second_pass_steps", f"{request.hr_second_pass_steps} is over this server's "
                                                         f"limit of {limits.max_steps}")
        total = width * height * request.batch_size * request.n_iter
        if total > limits.max_job_pixels:
            raise InvalidRequest(field, f"the hires size {width}x{height} x batch_size x n_iter is "
                                        f"{_pixels(total)}, over this server's per-job budget of "
                                        f"{_pixels(limits.max_job_pixels)}")
        steps = hires.hires_steps(request)
        self._prompts.check("hr_prompt", request.hr_prompt, steps, composable=True)
        self._prompts.check("hr_negative_prompt", request.hr_negative_prompt, steps)

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

    def _save(self, result: GenerationResult, final: FinalPng, category: str, name: NameContext,
              options: SaveOptions, policy: ProvenancePolicy, grid: bool = False, suffix: str = "") -> Path | None:
        """Save one finished image as the options say; a full disk, unwritable folder or a folder option that
        leads out of outputs/ costs the file, never the image (the reason is in the job's warnings)."""
        fmt = options.extension(grid)
        try:
            data, text = image_bytes(final.image, final.png, final.infotext, fmt, options, policy.ai_marker)
            path = self._saver.save(data, text, category, name, options, grid=grid, suffix=suffix)
        except (OSError, ValueError, InvalidRequest) as exc:
            log.warning("Could not save a %s image: %s", category, exc)
            reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
            warning = f"Image not saved to the outputs folder ({reason}); it is only returned here."
            if warning not in result.warnings:
                result.warnings.append(warning)
            return None
        if not grid:
            result.paths.append(path)
        self._hooks.image_saved(category, path, final.infotext, result.request, result.warnings)
        return path

    def _run(self, ctx: JobContext, request: Txt2ImgRequest, task: "_Task",
             policy: ProvenancePolicy, grids: bool = True) -> GenerationResult:
        """The batch loop both tasks share: seeds, progress, interrupt/skip, infotext, provenance, saving.
        ``grids``: False for a batch folder's images, which get no grid (as A1111's img2img batch)."""
        if self._remote is not None:
            return self._finish_remote(ctx, request, task, policy, grids)
        started = time.time()
        saving = self._saving()
        warnings: list[str] = []
        values = self._hooks.values(request)
        changed = self._hooks.before_job(request, values, warnings)
        if changed is not request:  # an extension edited the request: it passes the same checks as the user's
            self._check(changed)
            request = task.request = changed
            values = self._hooks.values(request)
        extension_params = self._hooks.infotext(values)
        base_seed = request.seed if request.seed != -1 else random.randint(0, MAX_SEED)
        base_subseed = request.subseed if request.subseed != -1 else random.randint(0, MAX_SEED)
        result = GenerationResult(images=[], seeds=[], infotexts=[], request=request, base_seed=base_seed,
                                  started=started, base_subseed=base_subseed, warnings=warnings)
        first_params: dict = {}  # the first image's infotext parameters: a grid carries them, as in A1111
        with self._step_hooks(ctx, request, values, warnings), ctx.models.lease(request.checkpoint) as model, \
                self._job_vae(ctx, request, model) as (model, vae), seamless(model, request.tiling), \
                self._loras.applied(model, request, result.warnings) as lora_params:
            task.check_model(model)
            model = self._job_embeddings(model)
            result.model_name, result.model_hash = model.info.model_name, model.info.short_hash
            result.model_variant = model.variant
            result.vae_name, result.vae_hash = vae.name, vae.short_hash
            # A1111's [seed_first] / [seed_last] name tags: the job's first and last seeds.
            job_seeds = (batch_seeds(request, base_seed, base_subseed, 0)[0][0],
                         batch_seeds(request, base_seed, base_subseed, request.n_iter - 1)[0][-1])
            preview = self._preview().on(ctx.device)  # a TAESD preview's decoder goes on the job's device
            for batch_index in range(request.n_iter):
                if ctx.interrupted:
                    break
                seeds, subseeds = batch_seeds(request, base_seed, base_subseed, batch_index)
                ctx.begin_image(batch_index, request.n_iter, task.steps(model),
                                f"Batch {batch_index + 1} of {request.n_iter}")
                batch_started = time.monotonic()
                out = task.run_batch(model, batch_index, seeds, ctx, preview, subseeds)
                if not out.stopped_early:
                    self.speed.record(ctx.device.name, work(request)[0] / request.n_iter,
                                      time.monotonic() - batch_started)
                # Skip ends this batch's sampling and keeps what it made (A1111); the next batch runs as usual.
                ctx.consume_skip()
                if preview.after_batch and out.images:
                    ctx.show_preview(out.images[0])
                hooked, added = [], []  # extensions' on_image: before the safety checker and provenance
                for index, (image, seed) in enumerate(zip(out.images, seeds)):
                    image, fields = self._hooks.on_image(request, image, batch_index * request.batch_size + index,
                                                         seed, values, result.warnings)
                    hooked.append(image)
                    added.append(fields)
                images, verdicts = self._review(ctx, hooked, policy, result)
                batch_params = []
                for index, (image, seed, subseed, verdict) in enumerate(zip(images, seeds, subseeds, verdicts)):
                    context = InfotextContext(seed, model.info.model_name, model.info.short_hash, task.method(model),
                                              subseed=subseed, vae_name=vae.name, vae_hash=vae.short_hash,
                                              refiner=out.refiner)
                    params = {**infotext_params(request, context), **_ti_hashes(model), **lora_params,
                              **extension_params, **added[index], "Version": f"studio-{VERSION}"}
                    batch_params.append(dict(params))
                    first_params = first_params or dict(params)
                    if verdict:
                        params["Safety checker"] = verdict
                    final = finish_png(image, request.prompt, request.negative_prompt, params, policy,
                                       self._credentials, title=f"Stable Studio {task.category}, seed {seed}")
                    result.images.append(final.image)
                    result.pngs.append(final.png)
                    result.seeds.append(seed)
                    result.subseeds.append(subseed)
                    result.infotexts.append(final.infotext)
                    if request.save_images and saving.samples_save:
                        name = replace(_name_context(request, model.info, seed, batch_index, index, started, task,
                                                     vae.name), seeds=job_seeds)
                        self._save(result, final, task.category, name, saving, policy)
                if out.first_pass:
                    names = [replace(_name_context(request, model.info, seed, batch_index, index, started, task,
                                                   vae.name), seeds=job_seeds) for index, seed in enumerate(seeds)]
                    self._save_first_pass(ctx, out.first_pass, names, batch_params, request, policy, task, result,
                                          saving)
            if grids:
                self._grid(result, request, saving, policy, task, started, first_params, vae.name)
            result.interrupted = ctx.interrupted
            if ctx.limit_message:
                result.warnings.append(f"The job was {ctx.limit_message}; {len(result.images)} image(s) done.")
        return result

    def _finish_remote(self, ctx: JobContext, request: Txt2ImgRequest, task: "_Task", policy: ProvenancePolicy,
                       grids: bool) -> GenerationResult:
        """Scale-out: a replica makes the images (``run_for_front`` there); here they get provenance, are saved
        and gridded exactly as ``_run`` does it, so outputs and history stay in this one place."""
        result = self._remote.generate(ctx, request, policy.safety_check)
        ran = result.request or request
        result.request = ran.model_copy(update={"save_images": request.save_images})
        if getattr(task, "keep_first_pass", False):
            result.warnings.append("The images before hires fix are not saved when generating on Ray replicas "
                                   "(scale-out) yet; only the final images are.")
        saving = self._saving()
        images, infotexts = result.images, result.infotexts
        result.images, result.infotexts, result.pngs = [], [], []
        job_seeds = (result.seeds[0], result.seeds[-1]) if result.seeds else ()
        names = _ModelNames(result.model_name or "", result.model_hash)
        first_params: dict = {}
        for index, (image, infotext, seed) in enumerate(zip(images, infotexts, result.seeds)):
            parsed = parse_infotext(infotext)
            params = dict(parsed.params)
            first_params = first_params or {k: v for k, v in params.items() if k != "Safety checker"}
            final = finish_png(image, parsed.prompt, parsed.negative_prompt, params, policy, self._credentials,
                               title=f"Stable Studio {task.category}, seed {seed}")
            result.images.append(final.image)
            result.pngs.append(final.png)
            result.infotexts.append(final.infotext)
            if request.save_images and saving.samples_save:
                batch_index, in_batch = divmod(index, request.batch_size)
                name = replace(_name_context(request, names, seed, batch_index, in_batch, result.started, task,
                                             result.vae_name), seeds=job_seeds)
                self._save(result, final, task.category, name, saving, policy)
        if grids:
            self._grid(result, request, saving, policy, task, result.started, first_params, result.vae_name)
        return result

    def run_for_front(self, ctx: JobContext, request: Txt2ImgRequest, safety_check: bool) -> GenerationResult:
        """On a scale-out replica: the generation the front asked for, checked again against this process's
        limits and files, with the extensions' hooks and the safety checker (``safety_check``) but without
        provenance marks or saving: the front applies those (``_finish_remote``)."""
        self.check_request(request)
        request = request.model_copy(update={"save_images": False})
        policy = ProvenancePolicy(ai_marker=False, watermark=False, c2pa=False, safety_check=safety_check)
        task: _Task = _Img2Img(request) if isinstance(request, Img2ImgRequest) else self._txt2img_task(ctx, request)
        return self._run(ctx, request, task, policy, grids=False)

    @contextmanager
    def _step_hooks(self, ctx: JobContext, request: Txt2ImgRequest, values: dict,
                    warnings: list[str]) -> Iterator[None]:
        """The extensions' step hooks on ``ctx`` for this run's sampling (a cancel from one interrupts the job);
        what was there before (an enclosing script's run) is put back after."""
        hook = self._hooks.step_hook(kind_of(request), values, warnings)
        previous = ctx.step_hook
        if hook is not None:
            def step_hook(step, steps, latents, guidance):
                latents, guidance, cancel = hook(step, steps, latents, guidance)
                if cancel:
                    ctx.interrupt()
                return latents, guidance, cancel
            ctx.step_hook = step_hook
        try:
            yield
        finally:
            ctx.step_hook = previous

    def _grid(self, result: GenerationResult, request: Txt2ImgRequest, options: SaveOptions,
              policy: ProvenancePolicy, task: "_Task", started: float, params: dict, vae_name: str | None) -> None:
        """A1111's grid of the job's images: returned first in the UI's gallery (``return_grid``) and saved in
        ``<category>-grids/`` (``grid_save``), with the first image's infotext and every provenance mark."""
        if not result.images or (len(result.images) < 2 and options.grid_only_if_multiple):
            return
        save = options.grid_save and request.save_images
        if not (options.return_grid or save):
            return
        grid = image_grid(result.images, request.batch_size, options.n_rows, options.grid_prevent_empty_spots)
        final = finish_png(grid, request.prompt, request.negative_prompt, params, policy, self._credentials,
                           title=f"Stable Studio {task.category} grid")
        if options.return_grid:
            result.grid = final.image
        if save:
            name = _name_context(request, _ModelNames(result.model_name or "", result.model_hash),
                                 result.seeds[0], 0, 0, started, task, vae_name)
            name = replace(name, seeds=tuple(result.seeds))
            result.grid_path = self._save(result, final, task.category, name, options, policy, grid=True)

    def _save_first_pass(self, ctx: JobContext, images: list, names: list[NameContext], batch_params: list[dict],
                         request: Txt2ImgRequest, policy: ProvenancePolicy, task: "_Task",
                         result: GenerationResult, saving: SaveOptions) -> None:
        """A1111's "-before-highres-fix" copies: saved only (not returned), each with its final image's infotext
        (as A1111 writes it), through the same safety review and provenance as every image, named and formatted
        as the saving options say with the suffix ``-before-highres-fix``."""
        reviewed, verdicts = self._review(ctx, images, policy, result)
        for image, name, params, verdict in zip(reviewed, names, batch_params, verdicts):
            seed = name.seed
            params = {key: value for key, value in params.items() if key != "Safety checker"}
            if verdict:
                params["Safety checker"] = verdict
            final = finish_png(image, request.prompt, request.negative_prompt, params, policy,
                               self._credentials, title=f"Stable Studio {task.category}, seed {seed}, before hires")
            self._save(result, final, task.category, name, saving, policy, suffix="-before-highres-fix")

    def _job_embeddings(self, model: LoadedModel) -> LoadedModel:
        """The job's model with the embeddings that fit it (a per-job copy: what the job used is its own)."""
        if self._embeddings is None:
            return model
        return replace(model, embeddings=JobEmbeddings(self._embeddings.for_pipe(model.pipe)))

    @contextmanager
    def _job_vae(self, ctx: JobContext, request: Txt2ImgRequest,
                 model: LoadedModel) -> Iterator[tuple[LoadedModel, VaeChoice]]:
        """The job's model with its VAE file (a per-job copy; the shared pipeline is untouched) and that choice.

        The VAE is a resident of the job's device, kept (pinned) for the job; a file that does not load fails
        the job with a message naming it, and the checkpoint stays loaded and usable.
        """
        choice = VaeChoice()
        if self._vaes is not None:
            choice = self._vaes.resolve(request.sd_vae or self._vae_option(), model.info.path)
        if choice.path is None:
            yield model, choice
            return
        path, config = choice.path, dict(model.pipe.vae.config)
        name = f"vae:{choice.short_hash}:{model.family}"
        vae = ctx.device.resident(
            name, lambda: load_vae(path, config, model.dtype, self._settings.allow_pickle), kind="vae",
            version=(str(model.dtype), tuple(config.get("block_out_channels", ()))), max_of_kind=MAX_LOADED_VAES)
        with ctx.device.pinned(name):
            yield replace(model, vae=vae), choice

    def _review(self, ctx: JobContext, images: list, policy: ProvenancePolicy,
                result: GenerationResult) -> tuple[list, list]:
        """The safety checker's pass when it is on: flagged images blurred; ``None`` verdicts when it is off."""
        if not policy.safety_check:
            return images, [None] * len(images)
        try:
            if self._safety is None:
                raise ModelLoadError("no safety checker is configured on this server")
            review = self._safety.review(images, ctx.device)
        except ModelLoadError as exc:
            # Not silent: the images carry "Safety checker: unavailable" and the job reports why.
            warning = f"The safety checker is on but could not run: {exc}"
            if warning not in result.warnings:
                result.warnings.append(warning)
            return images, ["unavailable"] * len(images)
        return review.images, review.verdicts

    # ---- Runs inside another job (scripts: webui/services/scripts.py)
    def check_request(self, request: Txt2ImgRequest) -> None:
        """What ``submit_txt2img``/``submit_img2img`` check before queueing, without queueing (InvalidRequest)."""
        if isinstance(request, Img2ImgRequest):
            self._check_img2img(request)
        else:
            self._check(request)

    def run_in_job(self, ctx: JobContext, request: Txt2ImgRequest | Img2ImgRequest) -> GenerationResult:
        """A plain txt2img or img2img run INSIDE an already running job (a script's ``generate``): the same checks,
        hooks, safety, infotext and saving as a queued one, on the job's device, without queueing. InvalidRequest
        as the submit methods raise it."""
        self.check_request(request)
        if isinstance(request, Img2ImgRequest):
            return self._img2img_job(ctx, request)
        return self._txt2img_job(ctx, request)

    def finish_script_image(self, result: GenerationResult, image, infotext: str, request: Txt2ImgRequest,
                            category: str, grid: bool = False) -> tuple[bytes, str, Path | None]:
        """An image a script made itself (its grid, or e.g. an upscaled tiling) as a final PNG with ``infotext``
        and every provenance mark, saved as the job's own grids (``grid_save``, into ``<category>-grids/``) or
        images (``samples_save``) are when ``request.save_images`` says so. Returns (png, infotext written,
        path or None); a failed save becomes a warning in ``result``."""
        options, policy = self._saving(), self._provenance()
        parsed = parse_infotext(infotext) if infotext else None
        prompt = parsed.prompt if parsed is not None else request.prompt
        negative = parsed.negative_prompt if parsed is not None else request.negative_prompt
        params = dict(parsed.params) if parsed is not None else {}
        final = finish_png(image, prompt, negative, params, policy, self._credentials,
                           title=f"Stable Studio {category}{' grid' if grid else ''}")
        path = None
        if request.save_images and (options.grid_save if grid else options.samples_save):
            seed = int(params["Seed"]) if str(params.get("Seed", "")).isdigit() else request.seed
            name = NameContext(seed=seed, prompt=request.prompt,
                               negative_prompt=request.negative_prompt, model_name=result.model_name or "",
                               model_hash=result.model_hash or "", sampler=request.sampler_name,
                               scheduler=request.scheduler, steps=request.steps, cfg=request.cfg_scale,
                               width=image.width, height=image.height, clip_skip=request.clip_skip,
                               seeds=tuple(result.seeds), vae_name=result.vae_name or "",
                               job_timestamp=datetime.datetime.fromtimestamp(result.started or time.time()))
            path = self._save(result, final, category, name, options, policy, grid=grid)
            if not grid and path is not None:
                result.paths.pop()  # the caller places the path beside its image
        return final.png, final.infotext, path


class _Task:
    """What differs between txt2img and img2img inside the shared batch loop."""

    category: str

    def check_model(self, model: LoadedModel) -> None: ...
    def steps(self, model: LoadedModel) -> int: ...
    def method(self, model: LoadedModel) -> str | None: ...
    def run_batch(self, model: LoadedModel, batch_index: int, seeds: list[int], ctx: JobContext,
                  preview: PreviewSettings, subseeds: list[int]) -> BatchOutput: ...


class _Txt2Img(_Task):
    category = "txt2img"

    def __init__(self, request: Txt2ImgRequest, keep_first_pass: bool = False,
                 model_upscale: hires.ModelUpscale | None = None):
        self.request = request
        self.keep_first_pass = keep_first_pass
        self.model_upscale = model_upscale  # hires fix with an upscaler model

    def check_model(self, model: LoadedModel) -> None:
        _refuse_refiner_as_checkpoint(model)
        # An inpainting checkpoint paints the whole blank image, as in A1111 (webui/pipelines/blank_inpaint.py).
        if model.variant not in ("normal", "inpaint"):
            raise InvalidRequest("checkpoint", f"{model.info.title} is an {model.variant} model; use it from img2img.")

    def steps(self, model: LoadedModel) -> int:
        # A1111 counts both passes of a hires job.
        return self.request.steps + (hires.hires_steps(self.request) if self.request.enable_hr else 0)

    def method(self, model: LoadedModel) -> str | None:
        return None

    def run_batch(self, model, batch_index, seeds, ctx, preview_every, subseeds) -> BatchOutput:
        if self.request.enable_hr:
            return hires.run_batch(model, self.request, seeds, ctx, preview_every, subseeds,
                                   self.keep_first_pass, self.model_upscale)
        refiner = self.request.refiner_checkpoint
        # Leased like any checkpoint, inside this job's lease of the base (so the base stays loaded meanwhile).
        lease = (lambda: ctx.models.lease(refiner)) if refiner else None
        return txt2img.run_batch(model, self.request, seeds, ctx, preview_every, subseeds, lease_refiner=lease)


class _Img2Img(_Task):
    category = "img2img"

    def __init__(self, request: Img2ImgRequest):
        self.request = request

    def method(self, model: LoadedModel) -> str:
        return img2img.method_for(model, self.request.mask is not None)

    def check_model(self, model: LoadedModel) -> None:
        _refuse_refiner_as_checkpoint(model)  # every other variant has an image-to-image use

    def steps(self, model: LoadedModel) -> int:
        return img2img.steps_run(self.request, self.method(model))

    def run_batch(self, model, batch_index, seeds, ctx, preview_every, subseeds) -> BatchOutput:
        method = self.method(model)
        init = self.request.init_images[batch_index % len(self.request.init_images)]
        prepared = img2img.prepare(self.request, init, method)
        return img2img.run_batch(model, self.request, prepared, method, seeds, ctx, preview_every, subseeds)


def _ti_hashes(model: LoadedModel) -> dict[str, str]:
    """A1111's ``TI hashes`` infotext entry: the embeddings the job's prompts used (none: no entry)."""
    text = model.embeddings.hashes_text() if model.embeddings is not None else None
    return {"TI hashes": text} if text else {}


@dataclass(frozen=True)
class _ModelNames:
    """What a file name may say about the checkpoint (a CheckpointInfo has the same two fields)."""

    model_name: str
    short_hash: str | None


def _name_context(request: Txt2ImgRequest, model: "CheckpointInfo | _ModelNames", seed: int, iteration: int,
                  index: int, started: float, task: "_Task", vae_name: str | None) -> NameContext:
    """What a saved image's file name may use (A1111's FilenameGenerator fields)."""
    return NameContext(
        seed=seed, prompt=request.prompt, negative_prompt=request.negative_prompt,
        model_name=model.model_name, model_hash=model.short_hash or "",
        sampler=request.sampler_name, scheduler=request.scheduler, steps=request.steps, cfg=request.cfg_scale,
        width=request.width, height=request.height, clip_skip=request.clip_skip,
        denoising=request.denoising_strength if task.category == "img2img" else None,
        batch_index=index, batch_size=request.batch_size, iteration=iteration, n_iter=request.n_iter,
        vae_name=vae_name or "", job_timestamp=datetime.datetime.fromtimestamp(started))


def _refuse_refiner_as_checkpoint(model: LoadedModel) -> None:
    if model.variant == "refiner":
        raise InvalidRequest("checkpoint", f"{model.info.title} is an SDXL refiner: it continues another SDXL "
                                           "checkpoint's image; choose it under Refiner (refiner_checkpoint) in txt2img")


def batch_seeds(request: Txt2ImgRequest, base_seed: int, base_subseed: int,
                batch_index: int) -> tuple[list[int], list[int]]:
    """Seeds and variation seeds of one batch, as A1111 numbers them: image k of the job has subseed + k, and
    seed + k, except that with a variation strength every image keeps the seed (only the variation seed moves)."""
    first = batch_index * request.batch_size
    indices = range(first, first + request.batch_size)
    varied = request.subseed_strength != 0
    return [base_seed + (0 if varied else k) for k in indices], [base_subseed + k for k in indices]

