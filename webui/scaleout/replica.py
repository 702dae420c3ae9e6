"""A Ray Serve replica: one process with its own device and model manager, running one front job at a time.

It is the single-process app's generation (the same services, built by ``build_services``) without the UI, the
API, outputs or history: the front sends a ``RemoteJob``, the replica makes sure it has the job's checkpoint
(webui/scaleout/model_source.py), runs it on its own job queue, streams progress back and returns the images
unmarked (the front applies provenance and saves them). It reports itself to the front's control actor every
2 s (the UI's replicas table).

The front deploys it (webui/scaleout/front.py); its options (GPUs, CPUs, replica counts) are set there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, AsyncIterator

import ray
from ray import serve

from webui.config import Settings
from webui.errors import Cancelled, InvalidRequest, ModelLoadError, OutOfMemory, StudioError
from webui.scaleout.config import NAMESPACE
from webui.scaleout.messages import ProgressEvent, RemoteFailure, RemoteJob, RemoteResult, png_bytes
from webui.scaleout.model_source import ModelSource
from webui.scaleout.status import ReplicaStatus
from webui.services.jobs import FINISHED, JobKind
from webui.types import JobState

log = logging.getLogger(__name__)
REPORT_SECONDS = 2.0
POLL_SECONDS = 0.25  # how often a running job's progress goes out and Interrupt/Skip come in
JOB_KIND = "replica-generation"


@dataclass(frozen=True)
class ReplicaConfig:
    """What the front gives each replica. Paths are as the replica's host sees them."""

    settings: Settings              # the front's: precision, attention, limits, memory profile, ...
    control: str                    # the front's control actor's name (namespace NAMESPACE)
    models_dir: str | None          # the shared models folder (None or missing on this host: fetch by hash)
    extensions_dir: str | None      # the shared extensions folder (same rule)
    embeddings_dir: str | None
    cache: str                      # --ray-replica-cache
    gpus: float                     # > 0: the replica runs on the GPU Ray gave it
    # The front's extensions.json and extension-settings.json (name -> text): which extensions are enabled and
    # their settings, so replicas run the same hooks the front would.
    state_files: tuple[tuple[str, str], ...] = ()


class StudioReplica:
    """Deployed by the front with ``serve.deployment(...)(StudioReplica)``; see front.py for its options."""

    def __init__(self, config: ReplicaConfig):
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self.pid = os.getpid()
        self._control_name = config.control
        self._control_actor: Any = None
        self._current: RemoteJob | None = None
        self._error: str | None = None
        self._started = False
        self._report()  # "starting": shown while the models' code imports and the services are built
        cache = Path(config.cache).expanduser()
        data = _replica_dir(cache)
        settings = replace(config.settings, data_dir=data, device="auto" if config.gpus > 0 else "cpu",
                           host="127.0.0.1", share=False, scale_out=None, allow_download=False,
                           allow_external_model_links=True)  # our own links into the shared or cached files
        shared = _existing(config.models_dir)
        _link_shared(data, shared, config.extensions_dir, config.embeddings_dir)
        for name, text in config.state_files:
            (data / name).write_text(text, encoding="utf-8")
        from webui.services.container import build_services  # heavy: torch, diffusers

        self.services = build_services(settings)
        self.services.queue.register(JobKind(JOB_KIND, self._run_job, uses_checkpoint=True))
        self.source = ModelSource(self.services.registry, shared / "Stable-diffusion" if shared else None,
                                  cache / "checkpoints", self._read_chunk)
        self._started = True
        self._report()
        threading.Thread(target=self._report_forever, name="replica-report", daemon=True).start()

    # ---- Serve's model multiplexing: it routes a job to a replica that has its checkpoint (by sha256)
    @serve.multiplexed(max_num_models_per_replica=4)
    async def get_model(self, model_id: str) -> str:
        return model_id  # the weights live in the model manager; this only tells Serve what this replica holds

    async def run(self, job: RemoteJob) -> AsyncIterator[Any]:
        """Stream ``ProgressEvent``s, then one ``RemoteResult`` or ``RemoteFailure``."""
        if self.replica_id in job.avoid:
            yield self._failure("declined", "this replica could not load the checkpoint before")
            return
        try:
            await asyncio.to_thread(self._prepare, job)
        except ModelLoadError as exc:
            self._error = str(exc)
            self._report()
            yield self._failure("load", str(exc))
            return
        except InvalidRequest as exc:
            yield self._failure("invalid", exc.reason, exc.field)
            return
        self._current = job
        self._report()
        try:
            async for event in self._follow(job):
                if isinstance(event, RemoteResult):
                    # Tell Serve this replica holds the checkpoint only once a job ran on it: a replica that
                    # failed to load it must not attract the next jobs for it.
                    await self.get_model(serve.get_multiplexed_model_id())
                yield event
        finally:
            self._current = None
            self._report()

    def _prepare(self, job: RemoteJob) -> None:
        for ref in job.checkpoints:
            self.source.ensure(ref)
        options = self.services.options
        changes = {key: value for key, value in job.options.items()
                   if value is not None and options.value(key) != value}
        if changes:
            problems = options.problems(changes)
            if problems:
                raise InvalidRequest("options", "; ".join(problems))
            options.update(changes)

    async def _follow(self, job: RemoteJob) -> AsyncIterator[Any]:
        local = self.services.queue.submit(JOB_KIND, job)
        preview_id, skips = 0, 0
        while True:
            # Not Job.watch: a watcher there counts as someone watching, and previews cost a decode each; they
            # are drawn only while the front says someone watches (signals.watched).
            await asyncio.to_thread(local.wait_done, POLL_SECONDS)
            progress = local.progress
            signals = await self._control.signals.remote(job.job_id)
            if signals.interrupt and not local.interrupted.is_set():
                local.interrupt()
            while skips < signals.skips:
                skips += 1
                local.skip()
            if signals.watched:
                local.mark_watched()
            changes = {"step": progress.step, "steps": progress.steps, "image_index": progress.image_index,
                       "image_count": progress.image_count, "eta_seconds": progress.eta_seconds,
                       "textinfo": progress.textinfo}
            preview = None
            if progress.preview is not None and progress.preview_id != preview_id:
                preview_id, preview = progress.preview_id, png_bytes(progress.preview)
            if progress.state in FINISHED:
                break
            yield ProgressEvent(changes=changes, preview_png=preview, replica_id=self.replica_id)
        error = local.error
        if error is None:
            yield RemoteResult.pack(local.result, self.replica_id)
        elif isinstance(error, InvalidRequest):
            yield self._failure("invalid", error.reason, error.field)
        elif isinstance(error, ModelLoadError):
            self._error = str(error)
            yield self._failure("load", str(error))
        elif isinstance(error, Cancelled) or progress.state is JobState.CANCELLED:
            yield self._failure("cancelled", str(error))
        elif isinstance(error, OutOfMemory):
            yield self._failure("oom", str(error))
        else:
            yield self._failure("error", str(error) if isinstance(error, StudioError) else
                                f"{type(error).__name__}: {error}")

    def _run_job(self, ctx, job: RemoteJob):
        return self.services.generation.run_for_front(ctx, job.request, job.safety_check)

    def _failure(self, reason: str, message: str, field: str | None = None) -> RemoteFailure:
        return RemoteFailure(reason=reason, message=message, field=field, replica_id=self.replica_id)

    @property
    def _control(self) -> Any:
        """The front's control actor. Looked up when first needed: replicas a RayService deploys can start before
        the front does (a job, though, always comes from a running front)."""
        if self._control_actor is None:
            self._control_actor = ray.get_actor(self._control_name, namespace=NAMESPACE)
        return self._control_actor

    def _read_chunk(self, sha256: str, offset: int) -> bytes:
        return ray.get(self._control.read.remote(sha256, offset))

    # ---- the replicas table
    def _status(self) -> ReplicaStatus:
        job = self._current
        if not self._started:
            device, loaded, health = "starting", (), "starting"
        else:
            from webui.services.runtime_info import runtime

            device = "; ".join(item.describe() for item in runtime(self.services.devices))
            loaded = tuple(title for manager in self.services.devices for title in reversed(manager.loaded_titles()))
            health = "busy" if job is not None else "idle"
        return ReplicaStatus(replica_id=self.replica_id, host=socket.gethostname(),
                             node_ip=ray.util.get_node_ip_address(), pid=self.pid, device=device, loaded=loaded,
                             job_id=job.job_id if job else None, job_kind=job.kind if job else None, health=health,
                             last_seen=time.time(), error=self._error)

    def _report(self) -> None:
        try:
            self._control.report.remote(self._status())
        except Exception:  # noqa: BLE001 - no front yet, or it is restarting; the next report tries again
            self._control_actor = None
            log.debug("Could not report to the front", exc_info=True)

    def _report_forever(self) -> None:
        while True:
            time.sleep(REPORT_SECONDS)
            self._report()

    def check_health(self) -> None:
        """Serve's health check: a replica whose queue lost its workers is restarted by Serve."""
        if self._started and not self.services.queue.devices:
            raise RuntimeError("this replica has no device worker")


def _existing(path: str | None) -> Path | None:
    return Path(path) if path and Path(path).is_dir() else None


def _replica_dir(cache: Path) -> Path:
    """This replica's own data folder under the cache; this host's folders of replicas no longer running are
    removed (named host-pid, so a cache on a shared mount stays correct)."""
    root = cache / "replicas"
    root.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for old in root.iterdir():
        name, _, pid = old.name.rpartition("-")
        if name == host and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    data = root / f"{host}-{os.getpid()}"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir()
    return data


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _link_shared(data: Path, models: Path | None, extensions: str | None, embeddings: str | None) -> None:
    """Point this replica's model folders (except checkpoints, linked one by one) at the shared ones."""
    (data / "models" / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    if models is not None:
        for folder in models.iterdir():
            if folder.is_dir() and folder.name != "Stable-diffusion":
                (data / "models" / folder.name).symlink_to(folder, target_is_directory=True)
    for name, path in (("extensions", _existing(extensions)), ("embeddings", _existing(embeddings))):
        if path is not None:
            (data / name).symlink_to(path, target_is_directory=True)
