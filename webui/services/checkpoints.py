"""Checkpoint switches as jobs: queued, reported and failed like any job, loaded on a device worker.

A switch loads the new checkpoint on the device that runs it (the file is loaded before anything is evicted, so
a broken file leaves the working model loaded) and then makes it the default. Jobs that follow the default and
were queued after the switch wait for it, so they run on the new model, or on the old one if the switch failed.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from webui.errors import InvalidRequest, ModelNotFound
from webui.models.registry import ModelRegistry
from webui.services.jobs import Job, JobContext, JobKind, JobQueue
from webui.types import CheckpointInfo, text_problem

KIND = "checkpoint-switch"


class CheckpointSwitchRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    checkpoint: str  # the title it resolved to when queued


class CheckpointService:
    def __init__(self, registry: ModelRegistry, queue: JobQueue, *, load: bool = True):
        """``load``: False with scale-out, where replicas load checkpoints and a switch only sets the default."""
        self._registry = registry
        self._queue = queue
        self._load = load
        queue.register(JobKind(KIND, self._switch, uses_checkpoint=True, switches_checkpoint=True))

    def submit_switch(self, query: str, field: str = "sd_model_checkpoint") -> Job:
        """Queue a switch to ``query`` (a title, name or hash); InvalidRequest naming ``field`` when no such
        checkpoint is listed."""
        if not isinstance(query, str) or not query.strip() or len(query) > 1024 or text_problem(query):
            raise InvalidRequest(field, "must be a checkpoint title")
        try:
            title = self._registry.find(query).title
        except ModelNotFound as exc:
            raise InvalidRequest(field, str(exc)) from None
        return self._queue.submit(KIND, CheckpointSwitchRequest(checkpoint=title), checkpoint=title)

    def switch(self, query: str, timeout: float | None = None) -> CheckpointInfo:
        return self.submit_switch(query).wait(timeout)

    def _switch(self, ctx: JobContext, request: CheckpointSwitchRequest) -> CheckpointInfo:
        if not self._load:
            info = self._registry.find(request.checkpoint)
            ctx.models.selection.choose(info)
            return info
        ctx.report(f"Loading {request.checkpoint}")
        return ctx.models.select(request.checkpoint)
