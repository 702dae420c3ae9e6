"""The project's own API (``/studio/v1``), for what A1111's has no route for: GAN style transfer."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from webui.api.images import decode_image, encode_png
from webui.api.sdapi import finish
from webui.services.container import Services
from webui.services.style import StyleTransferRequest


class StyleModel(BaseModel):
    title: str
    name: str
    kind: str = Field(description='"CycleGAN" (unpaired) or "pix2pix" (paired)')
    hash: str | None
    filename: str


class StyleTransferBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(description="title, name or hash from GET /studio/v1/style-models")
    image: str = Field(description="base64 PNG/JPEG/WebP, or a data: URL")
    tile: int = Field(512, description="tile size in pixels; large images run tile by tile so memory stays bounded")
    overlap: int = Field(32, description="overlap between tiles in pixels, blended")
    save_images: bool = True


class StyleTransferResponse(BaseModel):
    image: str = Field(description="base64 PNG at the input's resolution, with infotext")
    model: str
    info: str
    warnings: list[str] = Field(default_factory=list, description="e.g. why the image was not saved")


def build_studio_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/studio/v1", tags=["studio"])

    def listing() -> list[dict[str, Any]]:
        return [{"title": m.title, "name": m.key, "kind": m.kind, "hash": m.short_hash, "filename": str(m.path)}
                for m in services.style.list_models()]

    @router.get("/style-models", response_model=list[StyleModel],
                summary="CycleGAN and pix2pix generators in models/CycleGAN and models/pix2pix")
    def style_models() -> list[dict[str, Any]]:
        return listing()

    @router.post("/refresh-style-models", response_model=list[StyleModel])
    def refresh_style_models() -> list[dict[str, Any]]:
        services.style.refresh_models()
        return listing()

    @router.post("/style-transfer", response_model=StyleTransferResponse,
                 summary="One forward pass of a CycleGAN/pix2pix generator, at the input's resolution")
    async def style_transfer(body: StyleTransferBody, http: Request) -> dict[str, Any]:
        limits = services.settings.limits
        image = await anyio.to_thread.run_sync(
            lambda: decode_image(body.image, "image", limits.max_image_pixels, formats=limits.image_formats))
        request = StyleTransferRequest(model=body.model, image=image.convert("RGB"), tile=body.tile,
                                       overlap=body.overlap, save=body.save_images)
        job = services.style.submit(request)
        result = await finish(job, http, services.settings.cancel_on_disconnect)
        return {"image": encode_png(result.image, result.infotext), "model": result.model, "info": result.infotext,
                "warnings": list(result.warnings)}

    return router
