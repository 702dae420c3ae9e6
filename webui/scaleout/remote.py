"""The front's side of a generation on a replica: send it, relay its progress, forward Interrupt/Skip, retry.

Serve routes each call to a replica that has the job's checkpoint loaded (model multiplexing keyed by the
checkpoint's sha256: checkpoint affinity), otherwise to the least loaded one. The call is a stream: progress events
(at least every 0.25 s) and then the result or a failure. After each event the front tells the replica, through the
control actor, whether the job was interrupted or skipped and whether anyone watches it.

Faults: a replica that dies mid-job (its process killed, its host gone) -> the job runs once more on another
replica; a second loss fails the job. A replica that cannot get or load the checkpoint says why; the job is sent
again and that replica declines it, so another one runs it. Nothing is saved until a result has fully arrived, so
no job is saved twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable

from ray.exceptions import RayError

from webui.errors import Cancelled, InvalidRequest, ModelLoadError, OutOfMemory, StudioError
from webui.scaleout.messages import (RELAYED_OPTIONS, CheckpointRef, ProgressEvent, RemoteFailure, RemoteJob,
                                     RemoteResult, Signals, open_png)
from webui.services.jobs import JobContext
from webui.types import CheckpointInfo, GenerationResult, Img2ImgRequest, Txt2ImgRequest

log = logging.getLogger(__name__)
MAX_LOSSES = 1  # a job whose replica died is run once more, never again (a job that kills replicas stays dead)


class _Retry(Exception):
    def __init__(self, reason: str, message: str, replica_id: str = ""):
        super().__init__(message)
        self.reason, self.message, self.replica_id = reason, message, replica_id


@dataclass
class RemoteGeneration:
    """Implements ``RemoteGenerator`` (webui/services/generation.py) over a Serve deployment handle."""

    handle: Any                                          # DeploymentHandle of StudioReplica
    control: Any                                         # the FrontControl actor's handle
    resolve: Callable[[str | None], CheckpointInfo]      # the front's registry and default checkpoint
    options: Callable[[], dict[str, Any]]                # the front's options (A1111's), read per job
    replica_count: Callable[[], int]                     # replicas now, to bound how often a job is declined

    def generate(self, ctx: JobContext, request: Txt2ImgRequest, safety_check: bool) -> GenerationResult:
        base = self.resolve(request.checkpoint)
        refs = [self._offer(base)]
        if request.refiner_checkpoint:
            refs.append(self._offer(self.resolve(request.refiner_checkpoint)))
        options = self.options()
        job = RemoteJob(job_id=ctx.job_id, kind="img2img" if isinstance(request, Img2ImgRequest) else "txt2img",
                        request=request.model_copy(update={"checkpoint": base.title}), checkpoints=tuple(refs),
                        safety_check=safety_check, options={key: options.get(key) for key in RELAYED_OPTIONS})
        avoid: list[str] = []
        problems: list[str] = []
        losses, lost, attempts = 0, "", 0
        while True:
            attempts += 1
            try:
                result = self._stream(ctx, replace(job, avoid=tuple(avoid)), base.sha256[:16])
            except _Retry as retry:
                if retry.reason == "lost":
                    if ctx.interrupted:
                        raise Cancelled("Interrupted, and its replica stopped before sending what it had made") \
                            from None
                    losses += 1
                    lost = retry.message
                    if losses > MAX_LOSSES:
                        raise StudioError(f"The replica running this job stopped, and so did the one it was "
                                          f"retried on ({retry.message}); the job failed and nothing was saved. "
                                          "See the replicas under Settings > Cluster.") from None
                    log.warning("Job %s: its replica stopped (%s); running it once more", ctx.job_id, retry.message)
                    ctx.relay({"textinfo": "The replica running this job stopped; retrying on another replica"})
                    continue
                if retry.reason == "load":
                    problems.append(f"replica {retry.replica_id}: {retry.message}")
                    if retry.replica_id and retry.replica_id not in avoid:
                        avoid.append(retry.replica_id)
                if len(avoid) >= max(1, self.replica_count()) or attempts > 20:
                    raise ModelLoadError(f"No replica could load {base.title}: " + "; ".join(problems)) from None
                ctx.relay({"textinfo": f"Replica {retry.replica_id} could not load the checkpoint; trying another"})
                continue
            if losses:
                result.warnings.append(f"The replica first running this job stopped ({lost}); the job ran again on "
                                       f"replica {result.replica}, and only that run's images were kept.")
            return result

    def _offer(self, info: CheckpointInfo) -> CheckpointRef:
        if not info.sha256 or info.kind != "safetensors":
            raise InvalidRequest("checkpoint", f"{info.title}: only single-file .safetensors checkpoints run on "
                                               "Ray replicas (they are named by sha256); convert or use another")
        ref = CheckpointRef(name=info.name, title=info.title, sha256=info.sha256, size=info.path.stat().st_size)
        self.control.offer.remote(ref.sha256, str(info.path), ref.size)
        return ref

    def _stream(self, ctx: JobContext, job: RemoteJob, model_id: str) -> GenerationResult:
        sent, skips = Signals(), 0
        ctx.relay({"textinfo": "Waiting for a free replica"})  # autoscaling may still be starting one
        try:
            stream = self.handle.options(stream=True, multiplexed_model_id=model_id).run.remote(job)
            for event in stream:
                if isinstance(event, RemoteResult):
                    return event.unpack()
                if isinstance(event, RemoteFailure):
                    raise _failure(event)
                if isinstance(event, ProgressEvent) and (event.changes or event.preview_png):
                    ctx.relay(event.changes, open_png(event.preview_png) if event.preview_png else None)
                if ctx.consume_skip():
                    skips += 1
                now = Signals(interrupt=ctx.interrupted, skips=skips, watched=ctx.watched)
                if now != sent:
                    self.control.signal.remote(job.job_id, now)
                    sent = now
            raise _Retry("lost", "its stream ended without a result")
        except RayError as exc:  # the replica's process died, its node left, or Serve lost it
            raise _Retry("lost", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) \
                from None
        finally:
            self.control.forget.remote(job.job_id)


def _failure(event: RemoteFailure) -> Exception:
    if event.reason in ("load", "declined"):
        return _Retry(event.reason, event.message, event.replica_id)
    if event.reason == "invalid":
        return InvalidRequest(event.field or "request", event.message)
    if event.reason == "cancelled":
        return Cancelled(event.message)
    if event.reason == "oom":
        return OutOfMemory(f"Replica {event.replica_id}: {event.message}")
    return StudioError(f"Replica {event.replica_id} failed: {event.message}")
