"""``/studio/v1/jobs``: the job history and the live queue, for clients that want more than A1111's progress."""

from __future__ import annotations

import base64
import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from webui.api.images import encode_png
from webui.errors import InvalidRequest
from webui.services.container import Services
from webui.services.job_store import JobRecord
from webui.types import JobState

MAX_LIMIT = 500
PROMPT_SUMMARY = 120  # characters of the prompt a listing shows


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()


def _not_found(job_id: str) -> JSONResponse:
    message = f"job_id: no job {job_id!r} in the queue or the history"
    return JSONResponse({"error": message, "detail": [{"loc": ["path", "job_id"], "msg": message,
                                                       "type": "not_found"}]}, status_code=404)


def _live_progress(services: Services, job_id: str) -> tuple[str | None, dict[str, Any] | None]:
    """The in-memory state and progress of a job still in this process's queue, or (None, None)."""
    job = services.queue.get(job_id)
    if job is None:
        return None, None
    p = job.progress
    if job.finished:
        return p.state.value, None
    progress = {"state": p.state.value, "step": p.step, "steps": p.steps, "image_index": p.image_index,
                "image_count": p.image_count, "eta_seconds": p.eta_seconds, "fraction": p.fraction,
                "textinfo": p.textinfo, "metrics": dict(getattr(p, "metrics", None) or {}),
                "preview_renders": p.preview_renders}
    return p.state.value, progress


def _live_preview(services: Services, job_id: str) -> str | None:
    """A running job's live preview (base64 PNG) for a client that shows it; asking marks the job watched, so it
    draws previews for the next few seconds (webui/services/jobs.py)."""
    job = services.queue.get(job_id)
    if job is None or job.finished:
        return None
    job.mark_watched()
    image = job.progress.preview
    return encode_png(image) if image is not None else None


def _summary(record: JobRecord, services: Services) -> dict[str, Any]:
    live_state, progress = _live_progress(services, record.id)
    prompt = record.prompt
    return {
        "id": record.id, "kind": record.kind,
        # The queue's own state wins while it knows the job: it is the one that changes first.
        "status": live_state or record.status, "priority": record.priority,
        "created": _iso(record.created_at), "created_at": record.created_at,
        "started": _iso(record.started_at), "started_at": record.started_at,
        "finished": _iso(record.finished_at), "finished_at": record.finished_at,
        "device": record.device,
        "prompt": prompt if len(prompt) <= PROMPT_SUMMARY else prompt[:PROMPT_SUMMARY - 1] + "…",
        "error": record.error, "progress": progress,
        # Live previews drawn (only while someone watched); None once the queue has forgotten the job.
        "preview_renders": job.progress.preview_renders if (job := services.queue.get(record.id)) else None,
    }


def build_jobs_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/studio/v1", tags=["jobs"])
    store = services.jobs_store

    @router.get("/jobs", summary="Jobs of this and earlier runs, newest first, with live progress for queued ones")
    def list_jobs(limit: int = 50, offset: int = 0,
                  kind: Annotated[list[str] | None,
                                  Query(description="repeat or comma-separate: txt2img,img2img")] = None,
                  ) -> list[dict[str, Any]]:
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidRequest("limit", f"must be between 1 and {MAX_LIMIT}, not {limit}")
        if offset < 0:
            raise InvalidRequest("offset", f"must be 0 or more, not {offset}")
        kinds = tuple(k.strip() for item in kind or [] for k in item.split(",") if k.strip()) or None
        return [_summary(record, services) for record in store.list(limit, offset, kinds)]

    @router.get("/jobs/{job_id}", summary="One job with its full request and result; preview=true: its live "
                                       "preview too (base64 PNG), and the job keeps drawing previews")
    def get_job(job_id: str, preview: bool = False) -> Any:
        record = store.get(job_id)
        if record is None:
            return _not_found(job_id)
        thumbnail = base64.b64encode(record.thumbnail).decode("ascii") if record.thumbnail else None
        body = {**_summary(record, services), "request": record.request, "result": record.result,
                "input_images": record.input_images, "thumbnail": thumbnail}
        if preview:
            body["preview"] = _live_preview(services, job_id)
        return body

    @router.post("/jobs/{job_id}/cancel",
                 summary="Cancel a queued job, or stop a running one at its next step (files stay whole)")
    def cancel_job(job_id: str) -> Any:
        job = services.queue.get(job_id)
        if job is None:
            record = store.get(job_id)
            if record is None:
                return _not_found(job_id)
            raise InvalidRequest("job_id", f"job {job_id} has already ended ({record.status})")
        if job.finished:
            raise InvalidRequest("job_id", f"job {job_id} has already ended ({job.progress.state.value})")
        services.queue.interrupt(job_id)
        state = job.progress.state
        return {"id": job_id, "status": state.value, "stopping": state is JobState.RUNNING}

    def _live(job_id: str) -> Any:
        if services.queue.get(job_id) is None:
            record = store.get(job_id)
            if record is None:
                return _not_found(job_id)
            raise InvalidRequest("job_id", f"job {job_id} has already ended ({record.status})")
        return None

    @router.post("/jobs/{job_id}/pause",
                 summary="Pause a long job (a batch folder) at its next safe point; a queued one is held back")
    def pause_job(job_id: str) -> Any:
        if (missing := _live(job_id)) is not None:
            return missing
        job = services.queue.pause(job_id)
        return {"id": job_id, "status": job.progress.state.value, "pausing": job.progress.state is JobState.RUNNING}

    @router.post("/jobs/{job_id}/resume", summary="Resume a paused job")
    def resume_job(job_id: str) -> Any:
        if (missing := _live(job_id)) is not None:
            return missing
        job = services.queue.resume(job_id)
        return {"id": job_id, "status": job.progress.state.value}

    return router
