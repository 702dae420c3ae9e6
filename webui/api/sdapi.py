"""A1111-compatible ``/sdapi/v1`` routes: a thin HTTP layer over the services."""

from __future__ import annotations

import json
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from webui import VERSION, parameters
from webui.api import schemas, scripts_mapping
from webui.api.a1111_info import a1111_info
from webui.api.images import decode_image, encode_png, png_base64
from webui.errors import (Cancelled, InvalidRequest, ModelLoadError, ModelNotFound, NoModelAvailable, OutOfMemory,
                          QueueFull, StudioError)
from webui.a1111_pnginfo import a1111_parameters
from webui.infotext import read_png_infotext
from webui.samplers import a1111_samplers_listing, a1111_schedulers_listing
from webui.services.container import Services
from webui.services.jobs import Job
from webui.services.runtime_info import resolved_precision
from webui.services.scripts import ScriptRefused
from webui.types import GenerationResult, Img2ImgRequest, JobState, Txt2ImgRequest, safe_label, validated

DISCONNECT_CHECK_SECONDS = 0.5
CHECKPOINT_SETTING = parameters.BY_NAME["checkpoint"].setting
PER_REQUEST_OVERRIDES = frozenset(p.setting for p in parameters.PARAMS if p.setting)


def _body_value(body: schemas.Txt2ImgBody, param: parameters.Param) -> Any:
    """The row's value in A1111's body (its key, then its aliases), or its API default."""
    assert param.api_key is not None
    for key in (param.api_key, *param.api_aliases):
        value = getattr(body, key, None)
        if value is not None and value != "":
            return value
    return param.api_default


def _setting_value(param: parameters.Param, overrides: dict[str, Any], services: Services) -> Any:
    """A row a server setting supplies: the request's ``override_settings`` entry, else the setting."""
    key, field = param.setting, f"override_settings.{param.setting}"
    if key == CHECKPOINT_SETTING:  # a name to look up, not a value; absent means the current model
        checkpoint = overrides.get(key)
        if checkpoint is None:
            return None
        if not isinstance(checkpoint, str):
            raise InvalidRequest(field, "must be a checkpoint title")
        try:
            return services.registry.find(checkpoint).title
        except ModelNotFound as exc:
            raise InvalidRequest(field, str(exc)) from None
    value = overrides[key] if key in overrides else services.options.value(key)
    if (problem := param.problem(value)) is not None:
        raise InvalidRequest(field, problem)
    return value


def _table_fields(body: schemas.Txt2ImgBody, task: str, services: Services) -> dict[str, Any]:
    """Map A1111's body (fused sampler names, override_settings) onto our typed request's fields."""
    overrides = body.override_settings or {}
    services.options.check_overrides(overrides, PER_REQUEST_OVERRIDES)
    _refuse_unsupported(body, task)
    fields: dict[str, Any] = {"save_images": body.save_images,
                              "extensions": scripts_mapping.extension_values(body, task, services)}
    for param in parameters.for_task(task):
        value = _body_value(body, param) if param.api_key is not None else None
        if value is not None:  # absent (e.g. image_cfg_scale): the setting below, else the request's default
            fields[param.name] = _as_bool(param.api_key, value) if param.type is bool else value
        elif param.setting is not None:  # A1111 options; a body key (s_churn...) wins over its option
            fields[param.name] = _setting_value(param, overrides, services)
    if body.styles:
        _apply_styles(body.styles, fields, services)
    return fields


def _apply_styles(names: list[str], fields: dict[str, Any], services: Services) -> None:
    """A1111's ``styles``: each named style applied to the prompts (and to a hires prompt that is given)."""
    if services.styles is None:
        raise InvalidRequest("styles", "this server has no prompt styles")
    fields.update(services.styles.apply_to_fields(fields, names))


def _as_bool(key: str, value: Any) -> bool:
    """A1111 clients send booleans, and 0/1 for some (``inpainting_mask_invert``); anything else is a mistake."""
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise InvalidRequest(key, "must be true or false")


def _refuse_unsupported(body: schemas.Txt2ImgBody, task: str) -> None:
    """Say so rather than silently return something other than what was asked for."""
    extra = body.model_extra or {}
    if extra.get("restore_faces"):
        raise InvalidRequest("restore_faces", "face restoration is not available: GFPGAN and CodeFormer need a "
                                              "face detector to find the faces first, which this server does not "
                                              "have (A1111 uses facexlib); send false")
    # A1111 1.10 body fields that would change the image and that this server does not apply yet.
    if extra.get("s_min_uncond") not in (None, 0, 0.0):
        raise InvalidRequest("s_min_uncond", "skipping the negative prompt at low noise (NGMS) is not supported "
                                             "yet; send 0")
    if extra.get("infotext"):
        raise InvalidRequest("infotext", "filling a request from infotext is not supported yet; read it with "
                                         "POST /sdapi/v1/png-info and send the fields")
    if extra.get("firstpass_image"):
        raise InvalidRequest("firstpass_image", "hires fix from a given first-pass image is not supported yet")
    if task == parameters.IMG2IMG and body.refiner_checkpoint not in (None, *parameters.NO_REFINER):
        raise InvalidRequest("refiner_checkpoint", "the refiner is supported in txt2img only on this server yet; "
                                                   "leave it out")


def to_txt2img_request(body: schemas.Txt2ImgBody, services: Services) -> Txt2ImgRequest:
    fields = _table_fields(body, parameters.TXT2IMG, services)
    if "width" not in fields or "height" not in fields:
        # A1111 uses 512; we use the checkpoint's native size (SDXL 1024), read without loading it.
        size = services.generation.native_size(fields.get("checkpoint"))
        fields.setdefault("width", size)
        fields.setdefault("height", size)
    return Txt2ImgRequest.parse(**fields)


def to_img2img_request(body: schemas.Img2ImgBody, services: Services) -> Img2ImgRequest:
    if body.enable_hr:
        raise InvalidRequest("enable_hr", "hires fix is a txt2img option; send enable_hr: false")
    if not body.init_images:
        raise InvalidRequest("init_images", "at least one image is required")
    budget, formats = services.settings.limits.max_image_pixels, services.settings.limits.image_formats
    images = [decode_image(data, f"init_images.{i}", budget, formats=formats)
              for i, data in enumerate(body.init_images)]
    mask = decode_image(body.mask, "mask", budget, formats=formats) if body.mask else None
    fields = _table_fields(body, parameters.IMG2IMG, services)
    return validated(Img2ImgRequest, dict(fields, init_images=images, mask=mask))


async def finish(job: Job, request: Request, cancel_on_disconnect: bool) -> Any:
    """Wait for a job without blocking the event loop; a client that hangs up does not keep the GPU busy."""
    while not await anyio.to_thread.run_sync(job.wait_done, DISCONNECT_CHECK_SECONDS):
        if cancel_on_disconnect and await request.is_disconnected():
            job.interrupt()
            raise Cancelled("The client disconnected; the job was cancelled.")
    return job.wait()


def images_response(body: schemas.Txt2ImgBody, result: GenerationResult) -> dict[str, Any]:
    images = [png_base64(png) for png in result.pngs] if body.send_images else []
    sent = body.model_dump(exclude={"init_images", "mask"})
    # A1111's info names the styles the request applied (its p.styles).
    return {"images": images, "parameters": sent,
            "info": json.dumps(dict(a1111_info(result), styles=list(body.styles or [])))}


def build_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["sdapi"])

    @router.get("/sd-models", response_model=list[schemas.SdModelItem])
    def sd_models() -> list[dict[str, Any]]:
        return [{"title": i.title, "model_name": i.model_name, "hash": i.short_hash, "sha256": i.sha256,
                 "filename": str(i.path), "config": None} for i in services.registry.list()]

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints() -> dict:
        services.registry.refresh()
        return {}

    @router.get("/samplers")
    def samplers() -> list[dict[str, Any]]:
        return a1111_samplers_listing()

    @router.get("/schedulers")
    def schedulers() -> list[dict[str, Any]]:
        return a1111_schedulers_listing()

    @router.get("/options")
    def get_options() -> dict[str, Any]:
        return services.options.get_all()

    @router.post("/options")
    async def set_options(changes: dict[str, Any], http: Request) -> dict:
        # A checkpoint switch is a job on the queue; like A1111, answer once it has loaded (or failed).
        switch = await anyio.to_thread.run_sync(services.options.update, changes)
        if switch is not None:
            try:
                await finish(switch, http, cancel_on_disconnect=False)  # a switch is not undone by hanging up
            except ModelLoadError as exc:
                raise InvalidRequest("sd_model_checkpoint", str(exc)) from None
        return {}

    cancel_on_disconnect = services.settings.cancel_on_disconnect

    @router.post("/txt2img", response_model=schemas.ImagesResponse)
    async def txt2img(body: schemas.Txt2ImgBody, http: Request) -> dict[str, Any]:
        # Off the event loop: checking the prompt's length tokenizes it (tens of milliseconds, more for odd text).
        submit = scripts_mapping.submitter(body, parameters.TXT2IMG, services)  # a script's job, or a plain one
        job = await anyio.to_thread.run_sync(submit, to_txt2img_request(body, services))
        return images_response(body, await finish(job, http, cancel_on_disconnect))

    @router.post("/img2img", response_model=schemas.ImagesResponse)
    async def img2img(body: schemas.Img2ImgBody, http: Request) -> dict[str, Any]:
        request = await anyio.to_thread.run_sync(to_img2img_request, body, services)  # image decoding is CPU work
        submit = scripts_mapping.submitter(body, parameters.IMG2IMG, services)
        job = await anyio.to_thread.run_sync(submit, request)
        return images_response(body, await finish(job, http, cancel_on_disconnect))

    @router.get("/progress", response_model=schemas.ProgressResponse)
    def progress(skip_current_image: bool = False) -> dict[str, Any]:
        job = services.queue.current
        if job is None:
            return {"progress": 0.0, "eta_relative": 0.0, "state": schemas.ProgressState(job_count=0),
                    "current_image": None, "textinfo": None}
        if not skip_current_image:
            job.mark_watched()  # a client that shows the preview: the job draws it from now on (webui/services/jobs.py)
        p = job.progress
        image = None
        if p.preview is not None and not skip_current_image:
            image = encode_png(p.preview)
        state = schemas.ProgressState(
            skipped=job.skipped.is_set(), interrupted=job.interrupted.is_set(), job=job.kind,
            job_count=max(1, p.image_count), job_no=p.image_index, sampling_step=p.step,
            sampling_steps=p.steps)
        return {"progress": p.fraction if p.state is JobState.RUNNING else 0.0,
                "eta_relative": p.eta_seconds or 0.0, "state": state, "current_image": image,
                "textinfo": f"{p.stage}: {p.textinfo}" if p.stage and p.textinfo != p.stage else p.textinfo,
                "current_task": job.id}

    @router.post("/interrupt")
    def interrupt() -> dict:
        services.queue.interrupt()
        return {}

    @router.post("/skip")
    def skip() -> dict:
        services.queue.skip()
        return {}

    @router.post("/png-info", response_model=schemas.PngInfoResponse)
    def png_info(body: schemas.PngInfoBody) -> dict[str, Any]:
        limits = services.settings.limits
        image = decode_image(body.image, "image", limits.max_image_pixels, formats=limits.image_formats,
                             keep_metadata=True)  # PNG Info reports the text chunks as sent
        items = {k: v for k, v in image.info.items() if isinstance(v, str)}
        items.pop("parameters", None)
        # PNG text chunk, else A1111's JPEG/WebP EXIF UserComment; "parameters" in A1111's shape (as A1111,
        # its defaults even for an image without any).
        text = read_png_infotext(image) or ""
        return {"info": text, "items": items, "parameters": a1111_parameters(text)}

    @router.get("/cmd-flags")
    def cmd_flags() -> dict[str, Any]:
        s = services.settings
        return {"data_dir": str(s.data_dir), "port": s.port, "listen": s.host != "127.0.0.1", "share": s.share,
                "device": s.device, "precision": resolved_precision(services.manager),  # resolved, not "auto"
                "memory_profile": s.memory_profile,
                "allow_pickle": s.allow_pickle, "version": VERSION}

    return router


_STATUS = {ScriptRefused: 422, InvalidRequest: 422, ModelNotFound: 404, ModelLoadError: 422, NoModelAvailable: 409,
           Cancelled: 409, OutOfMemory: 503, QueueFull: 503}


def _error_body(message: str, field: str | None = None, reason: str | None = None) -> dict[str, Any]:
    # "detail" keeps FastAPI's list-of-errors shape, so clients parse our errors and FastAPI's alike.
    # Messages may quote what the client sent; escape what UTF-8 cannot carry so the error itself never 500s.
    message, field = safe_label(message), safe_label(field) if field else None
    reason = safe_label(reason) if reason else None
    detail = [{"loc": ["body", *field.split(".")] if field else ["body"], "msg": reason or message,
               "type": "value_error"}]
    return {"error": message, "detail": detail}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StudioError)
    async def studio_error(_request: Request, exc: StudioError) -> JSONResponse:
        status = next((code for cls, code in _STATUS.items() if isinstance(exc, cls)), 500)
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, QueueFull) else None
        if isinstance(exc, InvalidRequest):
            body = _error_body(str(exc), exc.field, exc.reason)
        else:
            body = _error_body(str(exc))
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ["body"], "msg": "invalid request"}
        loc = [safe_label(str(part)) for part in first.get("loc", []) if part != "body"]
        reason = safe_label(str(first.get("msg", "invalid value")).removeprefix("Value error, "))
        message = f"{'.'.join(loc) or 'body'}: {reason}"
        detail = [{"loc": [safe_label(p) if isinstance(p, str) else p for p in e.get("loc", [])],
                   "msg": safe_label(str(e.get("msg", ""))), "type": e.get("type", "")} for e in errors]
        return JSONResponse({"error": message, "detail": detail}, status_code=422)
