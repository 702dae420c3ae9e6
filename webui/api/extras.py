"""A1111's extras and upscaler routes: ``/sdapi/v1/upscalers``, ``/realesrgan-models``, ``/face-restorers``,
``/extra-single-image`` and ``/extra-batch-images``, with A1111 v1.10's field names, defaults and response
shapes (modules/api/models.py, modules/api/api.py), and ``/studio/v1/refresh-upscalers`` (A1111 has no rescan
route). Thin over ``webui.services.upscaling``.

As in A1111's API, results are returned and not saved. Each image comes back as a PNG holding the source's
``parameters`` and the ``postprocessing`` text; ``html_info`` is that text as HTML.
"""

from __future__ import annotations

import base64
import html
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from webui.api.images import decode_image
from webui.api.schemas import ApiBody
from webui.api.sdapi import finish
from webui.errors import InvalidRequest
from webui.services import extras
from webui.services.container import Services
from webui.services.jobs import Job
from webui.services.upscaling import ExtrasRequest, UpscalingService

BUILTIN_SCALE = 4  # what A1111 reports for its plain resizers


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class RealesrganItem(BaseModel):
    name: str
    path: str | None = None
    scale: int | None = None


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None = None


class ExtrasBaseBody(ApiBody):
    """A1111's ``ExtrasBaseRequest`` with its defaults and bounds (A1111 caps the factor at 8 too)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    resize_mode: Literal[0, 1] = 0  # 0: scale by upscaling_resize; 1: to upscaling_resize_w x upscaling_resize_h
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(default=0, ge=0, le=1)
    codeformer_visibility: float = Field(default=0, ge=0, le=1)
    codeformer_weight: float = Field(default=0, ge=0, le=1)
    upscaling_resize: float = Field(default=2, gt=0, le=extras.MAX_SCALE)
    upscaling_resize_w: int = Field(default=512, ge=1, le=extras.MAX_SIDE)
    upscaling_resize_h: int = Field(default=512, ge=1, le=extras.MAX_SIDE)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(default=0, ge=0, le=1)
    upscale_first: bool = False


class ExtrasSingleImageBody(ExtrasBaseBody):
    image: str = ""


class FileData(BaseModel):
    data: str
    name: str = ""


class ExtrasBatchImagesBody(ExtrasBaseBody):
    imageList: list[FileData] = Field(default_factory=list)  # noqa: N815 - A1111's field name


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str
    images: list[str]


def upscale_spec(body: ExtrasBaseBody) -> extras.UpscaleSpec:
    return extras.UpscaleSpec(
        to_size=body.resize_mode == 1, scale=body.upscaling_resize, width=body.upscaling_resize_w,
        height=body.upscaling_resize_h, crop=body.upscaling_crop, upscaler_1=body.upscaler_1,
        upscaler_2=body.upscaler_2, upscaler_2_visibility=body.extras_upscaler_2_visibility)


def plaintext_to_html(text: str) -> str:
    """A1111's ``ui_common.plaintext_to_html``: escaped lines joined by <br> in a <p>."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


def upscaler_items(upscaling: UpscalingService) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [{"name": name, "model_name": None, "model_path": None, "model_url": None,
                                    "scale": BUILTIN_SCALE} for name in extras.UPSCALERS]
    for file in upscaling.models():
        items.append({"name": file.name, "model_name": file.folder, "model_path": str(file.path),
                      "model_url": None, "scale": upscaling.scale_of(file)})
    return items


def build_extras_router(services: Services) -> APIRouter:
    router = APIRouter(tags=["sdapi"])
    upscaling = services.upscaling
    assert upscaling is not None, "the container builds the upscaling service"
    limits = services.settings.limits

    def request(body: ExtrasBaseBody, images: list, names: tuple[str | None, ...] = ()) -> ExtrasRequest:
        return ExtrasRequest(tuple(images), upscale_spec(body), names=names, upscale_first=body.upscale_first,
                             gfpgan_visibility=body.gfpgan_visibility,
                             codeformer_visibility=body.codeformer_visibility,
                             codeformer_weight=body.codeformer_weight, save=False)

    @router.get("/sdapi/v1/upscalers", response_model=list[UpscalerItem])
    def upscalers() -> list[dict[str, Any]]:
        return upscaler_items(upscaling)

    @router.get("/sdapi/v1/realesrgan-models", response_model=list[RealesrganItem])
    def realesrgan_models() -> list[dict[str, Any]]:
        return [{"name": f.name, "path": str(f.path), "scale": upscaling.scale_of(f)}
                for f in upscaling.models() if f.folder == "RealESRGAN"]

    @router.get("/sdapi/v1/face-restorers", response_model=list[FaceRestorerItem])
    def face_restorers() -> list[dict[str, Any]]:
        found = {item.name for item in upscaling.face_restorers.list()}
        return [{"name": name, "cmd_dir": str(folder)}
                for name, folder in upscaling.face_restorers.directories.items() if name in found]

    @router.post("/studio/v1/refresh-upscalers", tags=["studio"])
    def refresh_upscalers() -> dict:
        upscaling.refresh()
        return {}

    cancel_on_disconnect = services.settings.cancel_on_disconnect

    def submit_single(body: ExtrasSingleImageBody) -> Job:
        upscaling.check_settings(request(body, []))  # names and options before decoding the image
        source = decode_image(body.image, "image", limits.max_image_pixels, formats=limits.image_formats)
        return upscaling.submit(request(body, [source]))

    def submit_batch(body: ExtrasBatchImagesBody) -> Job:
        upscaling.check_settings(request(body, []))
        if not body.imageList:
            raise InvalidRequest("imageList", "no images given")
        images = [decode_image(item.data, f"imageList.{i}.data", limits.max_image_pixels,
                               formats=limits.image_formats) for i, item in enumerate(body.imageList)]
        return upscaling.submit(request(body, images, tuple(item.name or None for item in body.imageList)))

    # Decoding and checking run in a worker thread; a client that hangs up has its job cancelled, as txt2img's.
    @router.post("/sdapi/v1/extra-single-image", response_model=ExtrasSingleImageResponse)
    async def extra_single_image(body: ExtrasSingleImageBody, http: Request) -> dict[str, str]:
        job = await anyio.to_thread.run_sync(submit_single, body)
        result = await finish(job, http, cancel_on_disconnect)
        return {"html_info": plaintext_to_html(result.infotexts[0]), "image": _b64(result.pngs[0])}

    @router.post("/sdapi/v1/extra-batch-images", response_model=ExtrasBatchImagesResponse)
    async def extra_batch_images(body: ExtrasBatchImagesBody, http: Request) -> dict[str, Any]:
        job = await anyio.to_thread.run_sync(submit_batch, body)
        result = await finish(job, http, cancel_on_disconnect)
        # A1111 returns the first image's info for the whole batch.
        return {"html_info": plaintext_to_html(result.infotexts[0]), "images": [_b64(p) for p in result.pngs]}

    return router


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")
