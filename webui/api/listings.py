"""A1111's read-mostly ``/sdapi/v1`` routes (upscalers, LoRAs, embeddings, memory, extras ...), with A1111 v1.10's
field names and response shapes, so existing clients (``webuiapi``, Krita and Photoshop plugins) list things as
they expect. Thin: the data comes from ``webui.services``.
"""

from __future__ import annotations

import html
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from webui.api.images import decode_image, encode_png
from webui.api.schemas import ApiBody
from webui.errors import InvalidRequest
from webui.services import extras
from webui.services.container import Services
from webui.services.listings import build_lora_registry, cuda_report, list_embeddings, list_vaes, ram_report

# A1111's latent upscalers (hires fix on latents); listed for clients that populate dropdowns from here.
LATENT_UPSCALE_MODES = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                        "Latent (nearest)", "Latent (nearest-exact)")
A1111_UPSCALER_SCALE = 4  # what A1111 reports for its plain resizers


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None = None
    model_path: str | None = None
    model_url: str | None = None
    scale: float | None = None


class LatentUpscaleModeItem(BaseModel):
    name: str


class SdVaeItem(BaseModel):
    model_name: str
    filename: str


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]
    short_hash: str | None = None  # not in A1111's shape; extra keys are ignored by its clients


class EmbeddingItem(BaseModel):
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    shape: int
    vectors: int


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem]
    skipped: dict[str, EmbeddingItem]


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None = None
    negative_prompt: str | None = None


class HypernetworkItem(BaseModel):
    name: str
    path: str | None = None


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None = None


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class MemoryResponse(BaseModel):
    ram: dict[str, Any]
    cuda: dict[str, Any]


class ExtrasSingleImageBody(ApiBody):
    """A1111's ``ExtrasSingleImageRequest`` with its defaults and bounds (A1111 caps the factor at 8 too)."""

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
    image: str = ""


class ExtrasSingleImageResponse(BaseModel):
    html_info: str
    image: str


def upscale_spec(body: ExtrasSingleImageBody) -> extras.UpscaleSpec:
    # We have no face restorers: say so rather than return an image that silently skipped the step.
    for field in ("gfpgan_visibility", "codeformer_visibility"):
        if getattr(body, field) > 0:
            raise InvalidRequest(field, "face restoration is not available on this server; send 0")
    spec = extras.UpscaleSpec(
        to_size=body.resize_mode == 1, scale=body.upscaling_resize, width=body.upscaling_resize_w,
        height=body.upscaling_resize_h, crop=body.upscaling_crop, upscaler_1=body.upscaler_1,
        upscaler_2=body.upscaler_2, upscaler_2_visibility=body.extras_upscaler_2_visibility)
    extras.check_upscalers(spec)
    return spec


def plaintext_to_html(text: str) -> str:
    """A1111's ``ui_common.plaintext_to_html``: escaped lines joined by <br> in a <p>."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"


def upscaler_items() -> list[dict[str, Any]]:
    return [{"name": name, "model_name": None, "model_path": None, "model_url": None,
             "scale": A1111_UPSCALER_SCALE} for name in extras.UPSCALERS]


def build_listings_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["sdapi"])
    # The container has no LoRA registry yet: this one lives in the router's closure (scans on first request).
    loras = getattr(services, "loras", None) or build_lora_registry(services.settings)
    links = services.settings.allow_external_model_links

    @router.get("/upscalers", response_model=list[UpscalerItem])
    def upscalers() -> list[dict[str, Any]]:
        return upscaler_items()

    @router.get("/latent-upscale-modes", response_model=list[LatentUpscaleModeItem])
    def latent_upscale_modes() -> list[dict[str, Any]]:
        return [{"name": name} for name in LATENT_UPSCALE_MODES]

    @router.get("/sd-vae", response_model=list[SdVaeItem])
    def sd_vae() -> list[dict[str, Any]]:
        # A1111 names a VAE by its file name with extension; "filename" is the full path.
        vaes = services.vaes.files() if services.vaes is not None else \
            list_vaes(services.settings.vae_dir, allow_external_links=links)
        return [{"model_name": p.name, "filename": str(p)} for p in vaes]

    @router.post("/refresh-vae")
    def refresh_vae() -> dict:
        if services.vaes is not None:
            services.vaes.refresh()
        return {}

    @router.get("/loras", response_model=list[LoraItem])
    def list_loras() -> list[dict[str, Any]]:
        return [{"name": i.name, "alias": i.alias, "path": str(i.path), "metadata": i.metadata,
                 "short_hash": i.short_hash} for i in loras.list()]

    @router.post("/refresh-loras")
    def refresh_loras() -> dict:
        loras.refresh()
        return {}

    @router.get("/embeddings", response_model=EmbeddingsResponse)
    def embeddings() -> dict[str, Any]:
        # Nothing applies embeddings yet, so every file is "skipped" (A1111's word for "present, not loaded").
        skipped = {e.name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                            "shape": e.shape, "vectors": e.vectors}
                   for e in list_embeddings(services.settings.embeddings_dir, allow_external_links=links)}
        return {"loaded": {}, "skipped": skipped}

    @router.get("/prompt-styles", response_model=list[PromptStyleItem])
    def prompt_styles() -> list[dict[str, Any]]:
        styles = services.styles.list() if services.styles is not None else []
        return [{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt} for s in styles]

    @router.get("/hypernetworks", response_model=list[HypernetworkItem])
    def hypernetworks() -> list[dict[str, Any]]:
        return []

    @router.get("/face-restorers", response_model=list[FaceRestorerItem])
    def face_restorers() -> list[dict[str, Any]]:
        return []

    @router.get("/scripts", response_model=ScriptsList)
    def scripts() -> dict[str, list[str]]:
        return {"txt2img": [], "img2img": []}

    @router.get("/script-info")
    def script_info() -> list[dict[str, Any]]:
        return []

    @router.get("/memory", response_model=MemoryResponse)
    def memory() -> dict[str, Any]:
        return {"ram": ram_report(), "cuda": cuda_report(services.manager.memory_report())}

    @router.post("/extra-single-image", response_model=ExtrasSingleImageResponse)
    def extra_single_image(body: ExtrasSingleImageBody) -> dict[str, str]:
        spec = upscale_spec(body)  # validate names before decoding the image
        limits = services.settings.limits
        source = decode_image(body.image, "image", limits.max_image_pixels, formats=limits.image_formats)
        result, info = extras.upscale(source, spec)
        # Keep the source's generation parameters, as A1111's extras output does.
        parameters = source.info.get("parameters")
        return {"html_info": plaintext_to_html(extras.info_text(info)),
                "image": encode_png(result, parameters if isinstance(parameters, str) else None)}

    return router
