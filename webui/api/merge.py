"""``POST /studio/v1/merge``: the checkpoint merger as a job (A1111 has no route for it). Thin over the service."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from webui.api.sdapi import finish
from webui.services.container import Services
from webui.services.merge_request import METHODS, NO_VAE, WEIGHTED_SUM, MergeRequest


class LoraWeight(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(description="a LoRA of models/Lora by file stem (GET /sdapi/v1/loras)")
    weight: float = 1.0


class MergeBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    primary_model: str = Field(description="A: title, name or hash from GET /sdapi/v1/sd-models")
    secondary_model: str = Field("", description="B (Weighted sum, Add difference)")
    tertiary_model: str = Field("", description="C (Add difference)")
    interp_method: str = Field(WEIGHTED_SUM, description=" | ".join(METHODS))
    multiplier: float = Field(0.3, description="M, 0..1: A*(1-M) + B*M, or A + (B-C)*M")
    save_as_half: bool = False
    output_name: str = Field("", description="file name without extension; empty: A1111's generated name")
    bake_vae: str = Field(NO_VAE, description='a file of models/VAE, or "None"')
    discard_weights: str = Field("", description="regular expression: keys matching it are left out")
    loras: list[LoraWeight] = Field(default_factory=list, description="LoRAs baked in after the merge")
    overwrite: bool = False
    wait: bool = Field(True, description="answer when the merge is saved; false: answer with the job id at once "
                                         "and follow it at GET /studio/v1/jobs/{job_id}")


class MergeResponse(BaseModel):
    job_id: str
    status: str
    title: str | None = Field(None, description="the saved checkpoint as /sdapi/v1/sd-models lists it")
    filename: str | None = None
    keys: int | None = None


def build_merge_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/studio/v1", tags=["merge"])

    @router.post("/merge", response_model=MergeResponse,
                 summary="Merge checkpoints (A1111's Checkpoint Merger) into models/Stable-diffusion, as a job")
    async def merge(body: MergeBody, http: Request) -> dict[str, Any]:
        request = MergeRequest(
            primary=body.primary_model, secondary=body.secondary_model, tertiary=body.tertiary_model,
            method=body.interp_method, multiplier=body.multiplier, save_as_half=body.save_as_half,
            output_name=body.output_name, bake_vae=body.bake_vae, discard_weights=body.discard_weights,
            loras=tuple((item.name, item.weight) for item in body.loras), overwrite=body.overwrite)
        job = await anyio.to_thread.run_sync(services.merging.submit, request)  # reads headers, LoRAs, a VAE
        if not body.wait:
            return {"job_id": job.id, "status": job.progress.state.value}
        # Hanging up does not cancel a merge: it is a file being written, cancelled at /studio/v1/jobs/{id}/cancel.
        result = await finish(job, http, cancel_on_disconnect=False)
        return {"job_id": job.id, "status": job.progress.state.value, "title": result.title,
                "filename": str(result.path), "keys": result.keys}

    return router
