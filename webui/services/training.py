"""Training runs as jobs on the shared queue: start (every check before queueing), list, follow, pause, resume,
cancel. The service keeps each run's metric history and sample images for the Train tab's plot and the API, and
refreshes the model lists when a run writes its result, so the new file appears without a restart."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from PIL import Image

from webui.errors import InvalidRequest
from webui.services.jobs import LONG, Job, JobContext, JobKind, JobQueue
from webui.training import runner, state_file
from webui.training.protocol import TrainingMethod, TrainingResources, TrainState
from webui.types import JobState

JOB_KIND = "train"
MAX_SAMPLES_KEPT = 16   # sample images kept per run (the newest)


@dataclass
class TrainingRun:
    """What the service knows of one run, beside its job's progress."""

    job_id: str
    method: str
    request: Any
    state_dir: Path
    total_steps: int = 0
    steps_per_epoch: int = 0
    first_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)   # one entry a step: step, loss, lr, epoch, time
    samples: list[tuple[int, Image.Image]] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    output: str | None = None
    outputs: list[str] = field(default_factory=list)  # every file the run wrote (``output`` is the first)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class _Events:
    """The runner's events, recorded into a ``TrainingRun``."""

    def __init__(self, run: TrainingRun, on_artifact: Callable[[Path], None]):
        self._run = run
        self._on_artifact = on_artifact

    def started(self, total_steps: int, steps_per_epoch: int, first_step: int) -> None:
        with self._run.lock:
            self._run.total_steps, self._run.steps_per_epoch, self._run.first_step = (total_steps, steps_per_epoch,
                                                                                      first_step)

    def stepped(self, step: int, figures: dict[str, float]) -> None:
        with self._run.lock:
            self._run.history.append({"step": float(step), **figures, "time": time.time()})

    def sampled(self, step: int, images: list[Image.Image]) -> None:
        with self._run.lock:
            self._run.samples.extend((step, image) for image in images)
            del self._run.samples[:-MAX_SAMPLES_KEPT]

    def state_saved(self, step: int, path: Path) -> None:
        with self._run.lock:
            self._run.states = [str(p) for p in state_file.states_in(path.parent)]

    def artifact_written(self, path: Path) -> None:
        with self._run.lock:
            self._run.outputs.append(str(path))
            if self._run.output is None:  # the main file (CycleGAN writes G_A, then G_B)
                self._run.output = str(path)
        self._on_artifact(path)


class TrainingService:
    def __init__(self, methods: Sequence[TrainingMethod], queue: JobQueue, resources: TrainingResources,
                 state_root: Path, *, on_artifact: Callable[[Path], None] = lambda path: None,
                 run: runner.Runner = runner.run):
        """``state_root``: where each run's resume states go (``<state_root>/<job id>/``). ``on_artifact`` is
        called with each file a run writes (the container refreshes the model lists there)."""
        self._methods = {m.name: m for m in methods}
        self._queue = queue
        self._resources = resources
        self._state_root = state_root
        self._on_artifact = on_artifact
        self._run = run
        self._runs: dict[str, TrainingRun] = {}
        self._lock = threading.Lock()
        queue.register(JobKind(JOB_KIND, self._handle, pausable=True, priority=LONG))

    # ------------------------------------------------------------------------------------------ methods

    @property
    def methods(self) -> list[TrainingMethod]:
        return list(self._methods.values())

    def method(self, name: str) -> TrainingMethod:
        found = self._methods.get(name)
        if found is None:
            raise InvalidRequest("method", f"no training method {name!r}; this server has "
                                           f"{', '.join(self._methods) or 'none'}")
        return found

    def schema(self, method: TrainingMethod) -> dict[str, Any]:
        """A JSON schema of a method's settings: its request module's ``json_schema()`` when it has one, else one
        derived from the request dataclass's fields."""
        described = getattr(sys.modules.get(method.request_type.__module__), "json_schema", None)
        if callable(described):
            return described()
        names = {"bool": "boolean", "int": "integer", "float": "number", "str": "string"}
        return {"type": "object", "additionalProperties": False,
                "properties": {f.name: {"type": names.get(str(f.type), "string")}
                               for f in dataclasses.fields(method.request_type)}}

    def request_from_dict(self, body: Mapping[str, Any]) -> tuple[TrainingMethod, Any]:
        """An API body (``{"method": "lora", ...settings}``) as a method and its typed request."""
        name = body.get("method")
        if not isinstance(name, str):
            raise InvalidRequest("method", f"name a training method: {', '.join(self._methods)}")
        method = self.method(name)
        return method, method.from_dict({key: value for key, value in body.items() if key != "method"})

    def _method_of(self, request: Any) -> TrainingMethod:
        matching = [m for m in self._methods.values() if isinstance(request, m.request_type)]
        named = [m for m in matching if m.name == getattr(request, "method", None)]
        if not (named or matching):
            raise InvalidRequest("method", f"no training method takes a {type(request).__name__}")
        return (named or matching)[0]

    # ------------------------------------------------------------------------------------------ control

    def start(self, request: Any) -> str:
        """Check ``request`` completely (before anything is queued), then queue the run; returns its job id."""
        method = self._method_of(request)
        method.check(request, self._resources)
        resume_path = self._resume_path(getattr(request, "resume_from", "") or "")
        if resume_path is not None:
            state_file.load_state(resume_path)  # refuse a foreign or damaged file now, not when the job starts
        # The request itself is the job's request, so the job history keeps its settings field by field. Under the
        # lock: the job's handler (which takes it) must find its run registered even if it starts at once.
        with self._lock:
            job = self._queue.submit(JOB_KIND, request)
            self._runs[job.id] = TrainingRun(job.id, method.name, request, self._state_root / job.id)
        return job.id

    def _resume_path(self, resume_from: str) -> Path | None:
        """A job id (its newest state) or a state file under the training folder; anything else is refused."""
        if not resume_from:
            return None
        root = self._state_root.resolve()
        if "/" not in resume_from and "\\" not in resume_from and (root / resume_from).is_dir():
            found = state_file.latest(root / resume_from)
            if found is None:
                raise InvalidRequest("resume_from", f"run {resume_from} left no resume state")
            return found
        path = Path(resume_from)
        path = (path if path.is_absolute() else root / path).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise InvalidRequest("resume_from", f"{resume_from!r} is neither a training job id nor a resume state "
                                                f"under {self._state_root}")
        return path

    def pause(self, job_id: str) -> None:
        self._queue.pause(self._job(job_id).id)

    def resume(self, job_id: str) -> None:
        self._queue.resume(self._job(job_id).id)

    def cancel(self, job_id: str) -> None:
        job = self._job(job_id)
        if job.finished:
            raise InvalidRequest("job_id", f"job {job_id} has already ended ({job.state.value})")
        job.interrupt()

    def job(self, job_id: str) -> Job:
        """The queue's job of a training run (to watch its progress)."""
        return self._job(job_id)

    def _job(self, job_id: str) -> Job:
        job = self._queue.get(job_id)
        if job is None or job.kind != JOB_KIND:
            raise InvalidRequest("job_id", f"no training job {job_id!r} on this server")
        return job

    # ------------------------------------------------------------------------------------------ reads

    def list(self) -> list[dict[str, Any]]:
        """Every training run this server knows, newest first (summaries, without history and samples)."""
        with self._lock:
            ids = list(self._runs)
        return [self.get(job_id, history=False) for job_id in reversed(ids) if self._queue.get(job_id) is not None]

    def active(self) -> str | None:
        """The id of the newest run still queued, running or paused (what a reopened page follows)."""
        return next((run["id"] for run in self.list() if run["state"] not in ("done", "failed", "cancelled")), None)

    def get(self, job_id: str, *, history: bool = True) -> dict[str, Any]:
        """A run's status: state, step, epoch, figures, ETA, device memory, history, samples, output."""
        job = self._job(job_id)
        with self._lock:
            run = self._runs.get(job_id)
        if run is None:
            raise InvalidRequest("job_id", f"no training job {job_id!r} on this server")
        progress = job.progress
        with run.lock:
            points = list(run.history)
            samples = list(run.samples)
            report: dict[str, Any] = {
                "id": job_id, "method": run.method, "state": progress.state.value,
                # LoRA requests say output_name; textual inversion and the GANs say name
                "output_name": getattr(run.request, "output_name", None) or getattr(run.request, "name", None),
                "step": progress.step, "total_steps": run.total_steps or progress.steps,
                "epoch": points[-1].get("epoch") if points else None,
                "loss": points[-1].get("loss") if points else None,
                "lr": points[-1].get("lr") if points else None,
                "eta_seconds": _eta(points, run.total_steps),
                "message": progress.textinfo or "",
                "queue_position": self._queue.position(job),
                "output": run.output, "outputs": list(run.outputs), "resume_states": list(run.states),
                "device": job.device, "device_memory": self._device_memory(job),
            }
        if history:
            report["history"] = points
            report["samples"] = samples
        return report

    def _device_memory(self, job: Job) -> dict[str, int] | None:
        if job.state is not JobState.RUNNING:
            return None
        owner = next((o for o in self._queue.device_owners if o.name == job.device), None)
        if owner is None:
            return None
        report = owner.report()
        cuda = report.get("cuda")
        if cuda:
            return {"allocated": cuda["allocated"], "peak": cuda["peak"], "total": cuda["total"]}
        return {"allocated": owner.used_bytes()}

    # ------------------------------------------------------------------------------------------ the job

    def _handle(self, ctx: JobContext, request: Any) -> runner.RunResult:
        with self._lock:
            run = self._runs[ctx.job_id]
        resume_path = self._resume_path(getattr(request, "resume_from", "") or "")
        resume: TrainState | None = state_file.load_state(resume_path) if resume_path else None
        plan = runner.RunPlan(self._method_of(request), request, self._resources, run.state_dir, resume)
        return self._run(ctx, plan, _Events(run, self._on_artifact))


def _eta(points: list[dict[str, float]], total: int) -> float | None:
    """Seconds left, from the pace of the recent steps (None before two steps)."""
    recent = points[-20:]
    if len(recent) < 2 or not total:
        return None
    per_step = (recent[-1]["time"] - recent[0]["time"]) / (recent[-1]["step"] - recent[0]["step"])
    return max(0.0, per_step * (total - recent[-1]["step"]))
