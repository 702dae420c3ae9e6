"""The project's own API (``/studio/v1``), for what A1111's has no route for: GAN style transfer, provenance."""

from __future__ import annotations

import base64
from typing import Any

import anyio
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from webui.api.images import decode_image, png_base64
from webui.api.sdapi import finish
from webui.provenance.detect import inspect
from webui.services.container import Services
from webui.services.runtime_info import runtime
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


class ProvenanceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    image: str = Field(description="base64 PNG/JPEG/WebP, or a data: URL")


class C2paReport(BaseModel):
    present: bool | None = Field(description="a C2PA manifest is embedded (null: C2PA support missing here)")
    valid: bool | None = Field(description="its signature and hashes check out (a local key is never 'Trusted')")
    state: str | None = Field(description="the manifest store's validation_state")
    problem: str | None


class ProvenanceResponse(BaseModel):
    format: str
    size: list[int]
    ai_generated: bool = Field(description="IPTC digital source type trainedAlgorithmicMedia in XMP or PNG text")
    digital_source_type: str | None
    watermark: bool | None = Field(description="the invisible watermark was found (null: under 256x256)")
    watermark_score: float | None = Field(description="fraction of blocks agreeing; about 0.5 when unmarked")
    c2pa: C2paReport
    summary: str


class DeviceResident(BaseModel):
    name: str
    kind: str = Field(description='"checkpoint", "gan", "safety-checker" ...')
    bytes: int
    in_use: bool


class RamCachedCheckpoint(BaseModel):
    name: str = Field(description="the checkpoint's title")
    dtype: str
    bytes: int
    pinned: bool = Field(description="kept in page-locked memory (faster to copy to a GPU)")


class DeviceReport(BaseModel):
    name: str = Field(description='"cpu", "cuda:0" ...: one worker runs one job at a time on each')
    dtype: str
    profile: str
    checkpoints: list[str] = Field(description="checkpoints loaded here, least recently used first")
    residents: list[DeviceResident] = Field(description="everything with weights on this device")
    job: dict[str, str] | None = Field(description="the job running here now: id and kind")
    attention: str = Field(description="attention kernel of the checkpoint used last: sdpa, xformers or slicing")
    compiled: bool = Field(description="whether that checkpoint's UNet runs compiled (--compile)")
    plans: dict[str, dict[str, Any]] = Field(
        description="per loaded checkpoint: memory profile, where the text encoders live, offload, VAE tiling "
                    "threshold, attention kernel, compiled")
    ram_cache: list[RamCachedCheckpoint] = Field(
        default_factory=list, description="checkpoints kept in RAM after leaving a device (shared by all devices), "
                                          "least recently used first: switching back to one is a copy, not a load")


class RuntimeDevice(BaseModel):
    device: str = Field(description='the worker\'s device: "cpu", "cuda:0"')
    name: str = Field(description='what it is: "CPU (Intel Xeon)", "cuda:0 (<the card\'s name>)"')
    dtype: str = Field(description='the precision the models run in: "fp16", "bf16" or "fp32"')
    precision: str = Field(description='the same, with why on a CPU: "bf16 (native AMX/AVX512-BF16)"')
    profile: str = Field(description='memory profile: "cpu", "full", "8gb", "4gb"')
    attention: str | None = Field(description="attention kernel in use, where reported")
    compiled: bool | None = Field(description="the UNet runs torch.compile'd, where reported")
    summary: str


class RuntimeReport(BaseModel):
    summary: str = Field(description="what the UI shows under the checkpoint bar; one part per device")
    devices: list[RuntimeDevice]


def _base64_bytes(data: str) -> bytes:
    """The raw file behind an image field ``decode_image`` has already accepted (C2PA covers the bytes)."""
    return base64.b64decode(data.partition(",")[2] if data.startswith("data:") else data, validate=True)


def _provenance_report(data: str, max_pixels: int) -> dict[str, Any]:
    image = decode_image(data, "image", max_pixels, keep_metadata=True)  # the metadata is what is examined
    report = inspect(_base64_bytes(data), image)
    return {**report.as_dict(), "summary": report.summary()}


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
        return {"image": png_base64(result.png), "model": result.model, "info": result.infotext,
                "warnings": list(result.warnings)}

    @router.post("/provenance", response_model=ProvenanceResponse,
                 summary="What an image says about its origin: AI-generated marker, invisible watermark, C2PA")
    async def provenance(body: ProvenanceBody) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(_provenance_report, body.image,
                                              services.settings.limits.max_image_pixels)

    @router.get("/devices", response_model=list[DeviceReport],
                summary="Each device's worker: what is loaded on it and which job it runs (answers at once)")
    def devices() -> list[dict[str, Any]]:
        running = {job.device: job for job in services.queue.running()}  # the innermost job of each worker
        reports = []
        for manager in services.devices:
            report = manager.memory_report()
            job = running.get(manager.owner.name)
            reports.append({"name": manager.owner.name, "dtype": report["dtype"], "profile": report["profile"],
                            "checkpoints": report["loaded"], "residents": report["residents"],
                            "job": {"id": job.id, "kind": job.kind} if job else None,
                            "attention": report["attention"], "compiled": report["compiled"],
                            "plans": report["plans"], "ram_cache": report.get("ram_cache", [])})
        return reports

    @router.get("/runtime", response_model=RuntimeReport,
                summary="Which device(s), precision (and why), memory profile and attention run (answers at once)")
    def runtime_report() -> dict[str, Any]:
        devices = runtime(services.devices)
        return {"summary": "; ".join(device.describe() for device in devices),
                "devices": [device.as_dict() for device in devices]}

    return router
