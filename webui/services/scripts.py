"""Scripts (A1111's Script dropdown, the API's ``script_name``): an extension's alternative to a plain run,
run as ONE job on the queue (one progress bar, one Interrupt), calling plain runs inside that job.

A script job's result is a ``GenerationResult`` whose ``images`` start with the script's grid (when it made one),
then its images; ``infotexts`` and ``pngs`` are aligned with ``images``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from webui.errors import InvalidRequest, StudioError
from webui.extensions.api import IMG2IMG, TXT2IMG, ExtensionError, ModelInfo, ScriptResult, ScriptRun
from webui.extensions.hooks import model_info
from webui.extensions.host import ExtensionHost, model_values
from webui.services.jobs import Job, JobContext, JobKind, JobQueue
from webui.services.script_context import JobScriptContext
from webui.types import GenerationResult, Img2ImgRequest, Txt2ImgRequest, safe_label

if TYPE_CHECKING:
    from webui.models.registry import ModelRegistry
    from webui.services.generation import GenerationService
    from webui.services.upscaling import UpscalingService

log = logging.getLogger(__name__)
KINDS = {TXT2IMG: "txt2img-script", IMG2IMG: "img2img-script"}


class ScriptFailed(StudioError):
    """A script raised: the job fails with this message, the server goes on."""


class ScriptRefused(ScriptFailed):
    """A script refused the request (it raised ExtensionError): the API answers 422 with its message."""


@dataclass
class ScriptJob:
    """A queued script job as the queue and the history record it (plain data: the script is looked up by its
    title when the job starts)."""

    tab: str
    script_name: str
    owner: str
    request: Txt2ImgRequest
    script_args: dict[str, Any] = field(default_factory=dict)  # the script's validated values


class ScriptService:
    def __init__(self, host: ExtensionHost, generation: "GenerationService", queue: JobQueue,
                 registry: "ModelRegistry", upscaling: "UpscalingService | None" = None):
        self._host = host
        self._generation = generation
        self._queue = queue
        self._registry = registry
        self._upscaling = upscaling
        for kind in KINDS.values():
            queue.register(JobKind(kind, self._job, uses_checkpoint=True))

    def titles(self, tab: str) -> list[str]:
        return [entry.script.title for entry in self._host.scripts(tab)]

    def submit(self, tab: str, title: str, request: Txt2ImgRequest, values: dict[str, Any],
               field_name: str = "script_args") -> Job:
        """Queue ``title``'s run over ``request`` with its ``values`` (checked by the script's params model;
        InvalidRequest naming ``<field_name>.<field>``); returns the job at once."""
        if tab not in KINDS:
            raise InvalidRequest("tab", f"scripts run in {TXT2IMG} or {IMG2IMG}, not '{safe_label(tab)}'")
        if (tab == IMG2IMG) != isinstance(request, Img2ImgRequest):
            raise InvalidRequest("request", f"a {tab} script needs a {tab} request")
        entry = self._host.find_script(title, tab)
        if not isinstance(values, dict):
            raise InvalidRequest(field_name, "must be an object of the script's fields")
        params = entry.script.params
        if params is not None:
            checked = model_values(params, values, field_name).model_dump(mode="json")
        elif values:
            raise InvalidRequest(field_name, f"script '{entry.script.title}' takes no values")
        else:
            checked = {}
        self._generation.check_request(request)
        if request.extensions:
            self._host.validate_values(request.extensions, tab)
        job = ScriptJob(tab=tab, script_name=entry.script.title, owner=entry.owner, request=request,
                        script_args=checked)
        checkpoint = self._registry.find(request.checkpoint).title if request.checkpoint else None
        return self._queue.submit(KINDS[tab], job, checkpoint=checkpoint)

    def run(self, tab: str, title: str, request: Txt2ImgRequest, values: dict[str, Any],
            timeout: float | None = None) -> GenerationResult:
        return self.submit(tab, title, request, values).wait(timeout)

    def _checkpoints(self) -> list[ModelInfo]:
        return [model_info(i) for i in self._registry.list()]

    def _job(self, ctx: JobContext, job: ScriptJob) -> GenerationResult:
        entry = self._host.find_script(job.script_name, job.tab)
        script = entry.script
        values = script.params.model_validate(job.script_args) if script.params is not None else None
        logger = logging.getLogger(f"extensions.{entry.owner}")
        context = JobScriptContext(ctx, self._generation, self._upscaling, self._checkpoints, logger)
        try:
            out = script.run(ScriptRun(job.tab, job.request, values, context))
        except ExtensionError as exc:
            raise ScriptRefused(str(exc) or f"Script '{script.title}' refused the request") from None
        except StudioError:
            raise  # the server's own errors (a cancelled job, out of memory) keep their meaning
        except Exception as exc:  # noqa: BLE001 - a script's bug fails its job, never the worker
            log.exception("Script '%s' (extension %s) failed", script.title, entry.owner)
            raise ScriptFailed(f"Script '{script.title}' failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(out, ScriptResult):
            raise ScriptFailed(f"Script '{script.title}' failed: it returned {type(out).__name__}, "
                               "not a ScriptResult")
        return self._result(ctx, job, out, context)

    def _result(self, ctx: JobContext, job: ScriptJob, out: ScriptResult,
                context: JobScriptContext) -> GenerationResult:
        request = job.request
        images, infotexts = list(out.images), list(out.infotexts)
        if len(infotexts) != len(images):
            raise ScriptFailed(f"Script '{job.script_name}' failed: it returned {len(images)} image(s) but "
                               f"{len(infotexts)} infotext(s)")
        seeds = list(out.seeds)[:len(images)] + [request.seed] * max(0, len(images) - len(out.seeds))
        result = GenerationResult(images=[], seeds=[], infotexts=[], request=request,
                                  base_seed=seeds[0] if seeds else request.seed, warnings=list(out.warnings),
                                  started=time.time())
        last = context.last
        if last is not None:  # what the runs used, for the API's info
            result.model_name, result.model_hash, result.model_variant = (last.model_name, last.model_hash,
                                                                          last.model_variant)
            result.vae_name, result.vae_hash, result.started = last.vae_name, last.vae_hash, last.started
            result.base_subseed = last.base_subseed
            result.warnings += [w for w in last.warnings if w not in result.warnings]
        paths: list[Path | None] = []
        if out.grid is not None:
            png, text, path = self._generation.finish_script_image(result, out.grid, out.grid_infotext, request,
                                                                   job.tab, grid=True)
            self._add(result, out.grid, png, text, result.base_seed)
            paths.append(path)
        for image, text, seed in zip(images, infotexts, seeds):
            made = context.made.get(id(image))
            if made is not None:  # from generate(): already finished and saved
                png, path = made
            else:
                png, text, path = self._generation.finish_script_image(result, image, text, request, job.tab)
            self._add(result, image, png, text, seed)
            paths.append(path)
        # The gallery shows saved files only when every image has one (see gallery_actions.gallery_images).
        result.paths = [p for p in paths if p is not None]
        result.grid_path = paths[0] if out.grid is not None else None
        result.images_start_with_grid = out.grid is not None
        result.interrupted = ctx.interrupted
        log.info("Script '%s': %d image(s)%s from %d run(s)", job.script_name, len(images),
                 " and a grid" if out.grid is not None else "", context.runs)
        return result

    @staticmethod
    def _add(result: GenerationResult, image, png: bytes, text: str, seed: int) -> None:
        result.images.append(image)
        result.pngs.append(png)
        result.infotexts.append(text)
        result.seeds.append(seed)
