"""The training API under the project's own prefix (``/studio/v1/training``): start, list, follow, pause, resume
and cancel training runs, and the methods with a JSON schema of each one's settings. Thin over
``TrainingService``; a bad setting is a 422 naming it, as everywhere else in the API."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, Field

from webui.api.images import encode_png
from webui.errors import InvalidRequest
from webui.services.container import Services
from webui.services.training import TrainingService
from webui.types import find_bad_value


START_EXAMPLE = {"method": "lora", "base_model": "v1-5-pruned-emaonly", "data_dir": "/data/dog", "output_name": "dog",
                 "max_train_steps": 500, "resolution": 512, "rank": 16}


class TrainingMethodItem(BaseModel):
    name: str
    label: str
    schema_: dict[str, Any] = Field(alias="schema", description="JSON schema of the settings this method takes")


class TrainingStarted(BaseModel):
    id: str = Field(description="the training job's id: follow it with GET /studio/v1/training/{id}")


class TrainingSummary(BaseModel):
    id: str
    method: str
    state: str = Field(description="queued, running, paused, done, failed or cancelled")
    output_name: str | None
    step: int
    total_steps: int
    epoch: float | None
    loss: float | None
    lr: float | None
    eta_seconds: float | None
    message: str
    queue_position: int | None = Field(description="1 when it starts next; null once it has started")
    output: str | None = Field(description="the written file (models/Lora/NAME.safetensors ...), once written")
    outputs: list[str] = Field(default_factory=list, description="every file the run wrote (a CycleGAN run writes "
                               "two generators); output is the first")
    resume_states: list[str] = Field(description="resume-state files kept; pass one (or the id) as resume_from")
    device: str | None
    device_memory: dict[str, int] | None


class TrainingSample(BaseModel):
    step: int
    image: str = Field(description="base64 PNG")


class TrainingDetail(TrainingSummary):
    history: list[dict[str, float]] = Field(description="one entry a step: step, loss, lr, epoch, time")
    samples: list[TrainingSample]


def _service(services: Services) -> TrainingService:
    if services.training is None:
        raise InvalidRequest("method", "training is not available on this server")
    return services.training


def build_training_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/studio/v1/training", tags=["training"])

    @router.get("/methods", response_model=list[TrainingMethodItem], response_model_by_alias=True)
    def methods() -> list[dict[str, Any]]:
        service = _service(services)
        return [{"name": m.name, "label": m.label, "schema": service.schema(m)} for m in service.methods]

    @router.post("", response_model=TrainingStarted, summary="Check the settings, then queue a training run")
    def start(body: Annotated[dict[str, Any], Body(examples=[START_EXAMPLE])]) -> dict[str, str]:
        bad = find_bad_value(body)
        if bad is not None:
            raise InvalidRequest(*bad)
        service = _service(services)
        _, request = service.request_from_dict(body)
        return {"id": service.start(request)}

    @router.get("", response_model=list[TrainingSummary], summary="Training runs this server knows, newest first")
    def runs() -> list[dict[str, Any]]:
        return _service(services).list()

    @router.get("/{job_id}", response_model=TrainingDetail,
                summary="A run's status, metric history and sample images")
    def detail(job_id: str, samples: bool = True) -> dict[str, Any]:
        report = _service(services).get(job_id)
        report["samples"] = [{"step": step, "image": encode_png(image)}
                             for step, image in report["samples"]] if samples else []
        return report

    @router.post("/{job_id}/pause", response_model=TrainingSummary)
    def pause(job_id: str) -> dict[str, Any]:
        _service(services).pause(job_id)
        return _service(services).get(job_id, history=False)

    @router.post("/{job_id}/resume", response_model=TrainingSummary)
    def resume(job_id: str) -> dict[str, Any]:
        _service(services).resume(job_id)
        return _service(services).get(job_id, history=False)

    @router.post("/{job_id}/cancel", response_model=TrainingSummary,
                 summary="Stop at the next step boundary; a resume state is kept")
    def cancel(job_id: str) -> dict[str, Any]:
        _service(services).cancel(job_id)
        return _service(services).get(job_id, history=False)

    return router

