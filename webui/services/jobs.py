"""The job queue: jobs are typed records, and one worker per device runs them.

A job is data: id, kind, the validated request, priority, status, timestamps, the device it ran on, progress, and
its result or error. What a kind of job does is a handler its service registers once
(``queue.register("txt2img", handler)``); the handler gets a ``JobContext`` and the request. UI, Gradio and REST
all submit here, and every job is recorded (``JobRecorder``, the SQLite history) as it moves.

Scheduling, decided in one place (``_pick``):
- highest priority first (``INTERACTIVE`` before ``LONG``), then first come first served;
- a job that follows the default checkpoint waits behind a queued checkpoint switch, so it runs on the model the
  user switched to (or, if the switch fails, on the one they had);
- checkpoint affinity: a free worker leaves a job to another free worker that already has its checkpoint loaded.
Long jobs call ``ctx.safe_point()`` between units of work (holding no model lease there): a pause takes effect
there, and interactive jobs waiting for this device run there first. Watchers block on a condition variable
notified on every progress change, so nobody polls with sleep. A running job past the per-job time limit is
interrupted exactly as Interrupt does it (the work sees it at its next check), never killed.

Live previews cost a decode each, so a job draws them only while someone is watching it: a watcher blocked in
``Job.watch`` (the UI's streaming handlers), or a reader that asked for the preview image (``/sdapi/v1/progress``
without ``skip_current_image``, ``/studio/v1/jobs/{id}?preview=true``) within the last ``WATCH_WINDOW_SECONDS``.
A client that only waits for the response, or a queued script nobody follows, makes none.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, replace
from itertools import count
from typing import Any, Callable, Protocol, Sequence

from PIL import Image

from webui.errors import Cancelled, InvalidRequest, QueueFull, StudioError
from webui.models.device import DeviceOwner
from webui.models.manager import ModelManager
from webui.types import JobState, Progress

log = logging.getLogger(__name__)

INTERACTIVE = 10  # generations, style transfer, checkpoint switches: what a person waits for
LONG = 0          # batch folders, training, grids: run between interactive jobs, can be paused
FINISHED = (JobState.DONE, JobState.FAILED, JobState.CANCELLED)
RELAYED_PROGRESS = frozenset({"step", "steps", "image_index", "image_count", "eta_seconds", "textinfo"})
WATCH_WINDOW_SECONDS = 5.0  # a reader that asked for the preview keeps a job watched this long (pollers: ~1 s)


class JobRecorder(Protocol):
    """Where jobs are recorded as they move (webui/services/job_store.py); must never raise."""

    def submitted(self, job_id: str, kind: str, request: Any, priority: int, created_at: float) -> None: ...
    def started(self, job_id: str, started_at: float, device: str) -> None: ...
    def set_status(self, job_id: str, status: str) -> None: ...
    def finished(self, job_id: str, status: str, finished_at: float, result: object = None,
                 error: str | None = None) -> None: ...


Handler = Callable[["JobContext", Any], Any]


@dataclass(frozen=True)
class JobKind:
    """What the queue knows about a kind of job."""

    name: str
    handler: Handler
    uses_checkpoint: bool = False   # runs a diffusion checkpoint: routed by it, waits behind switches
    switches_checkpoint: bool = False
    pausable: bool = False          # calls ctx.safe_point() between units of work
    priority: int = INTERACTIVE


class Job:
    """One job: a record of what was asked and what happened, plus the events its watchers wait on."""

    def __init__(self, kind: JobKind, request: Any, priority: int, checkpoint: str | None, seq: int):
        self.id = uuid.uuid4().hex[:12]
        self.kind = kind.name
        self.spec = kind
        self.request = request
        self.priority = priority
        self.checkpoint = checkpoint  # the title asked for explicitly; None follows the default checkpoint
        self.seq = seq
        self.created_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.device: str | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.time_limit: float | None = None  # seconds; set when the per-job limit stopped this job
        self.interrupted = threading.Event()
        self.skipped = threading.Event()
        self.pause_requested = threading.Event()
        self._cond = threading.Condition()
        self._progress = Progress(job_id=self.id, state=JobState.QUEUED)
        self._version = 0
        self._watchers = 0  # threads blocked in watch() now
        self._watched_until = 0.0  # time.monotonic() until which a past reader still counts as watching
        self._on_interrupt: Callable[[Job], None] = lambda job: None

    @property
    def limit_message(self) -> str | None:
        """What to tell the user when the server's time limit, not a person, stopped the job."""
        if self.time_limit is None:
            return None
        return f"stopped after {self.time_limit:g} s (the server's per-job limit)"

    @property
    def progress(self) -> Progress:
        with self._cond:
            return self._progress

    @property
    def state(self) -> JobState:
        return self.progress.state

    @property
    def finished(self) -> bool:
        return self.progress.state in FINISHED

    def _update(self, **changes: Any) -> None:
        with self._cond:
            self._progress = replace(self._progress, **changes)
            self._version += 1
            self._cond.notify_all()

    def watch(self, since: int, timeout: float | None = None) -> tuple[int, Progress]:
        """Block until the progress changes after version ``since`` (or timeout); return (version, progress).

        A caller blocked here is watching the job: it draws live previews meanwhile and for
        ``WATCH_WINDOW_SECONDS`` after."""
        with self._cond:
            self._watchers += 1
            try:
                self._cond.wait_for(lambda: self._version > since, timeout=timeout)
                return self._version, self._progress
            finally:
                self._watchers -= 1
                self._watched_until = max(self._watched_until, time.monotonic() + WATCH_WINDOW_SECONDS)

    def mark_watched(self, now: float | None = None) -> None:
        """A reader asked for the live preview: the job draws previews for the next ``WATCH_WINDOW_SECONDS``.
        Not a progress change: watchers are not woken by it."""
        now = time.monotonic() if now is None else now
        with self._cond:
            self._watched_until = max(self._watched_until, now + WATCH_WINDOW_SECONDS)

    def watched(self, now: float | None = None) -> bool:
        """Whether anyone is watching now (``now``: a ``time.monotonic()`` value, for tests)."""
        now = time.monotonic() if now is None else now
        with self._cond:
            return self._watchers > 0 or now < self._watched_until

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job ends; return its result or raise its error."""
        if not self.wait_done(timeout):
            raise TimeoutError(f"job {self.id} still running")
        if self.error is not None:
            raise self.error
        return self.result

    def wait_done(self, timeout: float | None = None) -> bool:
        """Block until the job ends or ``timeout`` passes; True when it has ended."""
        with self._cond:
            return self._cond.wait_for(lambda: self._progress.state in FINISHED, timeout=timeout)

    def interrupt(self) -> None:
        self.interrupted.set()
        if not self.finished:
            self._update(interrupting=True)  # watchers (the UI) say "Interrupting…" at once
        self._on_interrupt(self)

    def skip(self) -> None:
        self.skipped.set()
        if not self.finished:
            self._update(skipping=True)


@dataclass
class Worker:
    """One device's worker: its memory owner, its checkpoint manager (None in queues without models), and the
    stack of jobs it is running (more than one while a long job lets interactive ones run at a safe point).

    A remote slot (``remote``, scale-out: webui/scaleout) runs generation jobs by sending them to a Ray replica;
    it has no models of its own, and only generation jobs run there."""

    owner: DeviceOwner
    models: ModelManager | None
    running: list[Job]
    remote: bool = False
    label: str = ""  # a remote slot's name ("ray-1"); a device worker is named by its device

    @property
    def name(self) -> str:
        return self.label or self.owner.name

    def has_loaded(self, title: str | None) -> bool:
        return bool(title) and self.models is not None and self.models.has_loaded(title)


class JobContext:
    """What running work sees of its job: report progress, check for interrupt/skip, reach its device."""

    def __init__(self, job: Job, time_limit: float | None = None, clock: Callable[[], float] = time.monotonic,
                 worker: Worker | None = None, queue: "JobQueue | None" = None):
        self._job = job
        self._worker = worker or Worker(DeviceOwner("cpu"), None, [])
        self._queue = queue
        self._preview_id = 0
        self._image_started: float | None = None
        self._clock = clock
        self._time_limit = time_limit
        self._deadline = clock() + time_limit if time_limit else None
        # Extensions' step hooks for the sampling running now (webui/pipelines/common.py StepCallback calls it);
        # set by the generation service around its batch loop, None otherwise.
        self.step_hook: Callable[..., Any] | None = None

    @property
    def job_id(self) -> str:
        return self._job.id

    @property
    def device(self) -> DeviceOwner:
        """The memory owner of the device this job runs on: place any weights through it."""
        return self._worker.owner

    @property
    def models(self) -> ModelManager:
        """The checkpoints of the device this job runs on."""
        if self._worker.models is None:
            raise RuntimeError("this queue has no model manager")
        return self._worker.models

    def begin_image(self, index: int, count: int, steps: int, text: str = "") -> None:
        self._image_started = time.monotonic()
        self._job._update(image_index=index, image_count=count, step=0, steps=steps, textinfo=text)

    def on_step(self, step: int, steps: int, preview: Callable[[], Image.Image] | None = None,
                **metrics: float) -> None:
        """Report a step; ``metrics`` are named figures a job reports beside it (a training job's loss).
        ``preview`` draws the live preview; it is called only while someone watches the job."""
        progress = self._job.progress
        changes: dict[str, Any] = {"step": step, "steps": steps}
        if metrics:
            changes["metrics"] = {**progress.metrics, **metrics}
        if self._image_started and step:
            per_step = (time.monotonic() - self._image_started) / step
            remaining = (steps - step) + steps * max(0, progress.image_count - progress.image_index - 1)
            changes["eta_seconds"] = per_step * remaining
        if preview is not None and self._job.watched():  # nobody watching: the decode is never run
            self._preview_id += 1
            changes.update(preview=preview(), preview_id=self._preview_id,
                           preview_renders=progress.preview_renders + 1)
        self._job._update(**changes)

    def show_preview(self, image: Image.Image) -> None:
        """Show ``image`` as the live preview now (A1111's "-1": a preview once each batch is finished)."""
        self._preview_id += 1
        self._job._update(preview=image, preview_id=self._preview_id)

    def relay(self, changes: dict[str, Any], preview: Image.Image | None = None) -> None:
        """Progress measured elsewhere (a scale-out replica running this job's generation) shown as this job's:
        the step/image counters, ETA and text; ``preview``: a new live preview drawn there."""
        update = {key: value for key, value in changes.items() if key in RELAYED_PROGRESS}
        if preview is not None:
            self._preview_id += 1
            update.update(preview=preview, preview_id=self._preview_id,
                          preview_renders=self._job.progress.preview_renders + 1)
        if update:
            self._job._update(**update)

    @property
    def watched(self) -> bool:
        """Whether anyone watches this job now (live previews are drawn only then)."""
        return self._job.watched()

    def set_stage(self, text: str) -> None:
        """A script's own progress ("Cell 3 of 12"): shown before the step of the generation it runs."""
        self._job._update(stage=text)

    def report(self, text: str | None = None, **metrics: float) -> None:
        """Say what the job is doing now (and any named figures) without a step."""
        changes: dict[str, Any] = {}
        if text is not None:
            changes["textinfo"] = text
        if metrics:
            changes["metrics"] = {**self._job.progress.metrics, **metrics}
        self._job._update(**changes)

    def safe_point(self, *, inline: bool = True) -> None:
        """Call between units of work while holding no model lease: a requested pause happens here, and
        higher-priority jobs waiting for this device run here first (unless ``inline`` is False: a training run
        whose weights leave no room for a generation keeps them waiting until it ends)."""
        if self._queue is not None:
            paused_for = self._queue._safe_point(self._job, self._worker, inline)
            if self._deadline is not None:
                self._deadline += paused_for  # time spent paused is not the job's running time

    def should_stop(self) -> bool:
        """True when the current image should end: the job was interrupted (or ran out of time) or this image
        skipped."""
        self._check_deadline()
        return self._job.interrupted.is_set() or self._job.skipped.is_set()

    @property
    def interrupted(self) -> bool:
        self._check_deadline()
        return self._job.interrupted.is_set()

    @property
    def limit_message(self) -> str | None:
        return self._job.limit_message

    def _check_deadline(self) -> None:
        if self._deadline is not None and not self._job.interrupted.is_set() and self._clock() >= self._deadline:
            self._job.time_limit = self._time_limit
            self._job.interrupted.set()

    def interrupt(self) -> None:
        """End the job as the Interrupt button does (what it made so far is kept)."""
        self._job.interrupt()

    def consume_skip(self) -> bool:
        was = self._job.skipped.is_set()
        self._job.skipped.clear()
        if was:
            self._job._update(skipping=False)
        return was


class JobQueue:
    def __init__(self, max_pending: int = 16, max_job_seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic, *, devices: Sequence[ModelManager] = (),
                 store: JobRecorder | None = None, remote_slots: int = 0):
        """``devices``: one worker per manager (none: one CPU worker without models, for queues that run no
        checkpoints). ``max_job_seconds``: a running job is interrupted past it (None or 0: no limit); ``clock``
        is what the limit is measured with (tests pass their own). ``store`` records every job.
        ``remote_slots``: scale-out: that many jobs at once are sent to replicas; generation jobs (kinds that use
        a checkpoint, checkpoint switches aside) then run only there, every other kind on ``devices``."""
        self._max_pending = max_pending
        self._max_job_seconds = max_job_seconds or None
        self._clock = clock
        self._store = store
        self._kinds: dict[str, JobKind] = {}
        self._pending: list[Job] = []  # kept sorted: priority (high first), then submission order
        self._jobs: dict[str, Job] = {}
        self._seq = count()
        self._lock = threading.Condition()
        self._stopping = False
        self._workers = [Worker(m.owner, m, []) for m in devices] or [Worker(DeviceOwner("cpu"), None, [])]
        # A remote slot's owner is a placeholder CPU owner: what a job places through ctx.device there (a script's
        # upscaler model, say) runs in this process.
        self._workers += [Worker(DeviceOwner("cpu"), None, [], remote=True, label=f"ray-{k + 1}")
                          for k in range(remote_slots)]
        self._remote = remote_slots > 0
        self._threads = [threading.Thread(target=self._run, args=(w,), name=f"worker-{w.name}", daemon=True)
                         for w in self._workers]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------------------------ registration

    def register(self, kind: JobKind) -> None:
        self._kinds[kind.name] = kind

    # ------------------------------------------------------------------------------------- submitting

    def submit(self, kind: str, request: Any = None, *, checkpoint: str | None = None,
               priority: int | None = None) -> Job:
        """Queue a job of a registered ``kind``; returns at once. ``checkpoint``: the title it asks for
        explicitly (None: the default checkpoint when it starts)."""
        spec = self._kinds.get(kind)
        if spec is None:
            raise ValueError(f"no handler registered for job kind {kind!r}")
        with self._lock:
            if len(self._pending) >= self._max_pending:
                raise QueueFull(f"The queue is full ({self._max_pending} jobs waiting). Try again shortly.")
            job = Job(spec, request, spec.priority if priority is None else priority, checkpoint, next(self._seq))
            job._on_interrupt = self._interrupted
            # Under the lock: the history's row must exist before a worker can start the job.
            self._record("submitted", job.id, job.kind, request, job.priority, job.created_at)
            self._pending.append(job)
            self._pending.sort(key=lambda j: (-j.priority, j.seq))
            self._jobs[job.id] = job
            self._forget_old()
            self._lock.notify_all()
        return job

    # ------------------------------------------------------------------------------------ reads (never wait on a job)

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    @property
    def current(self) -> Job | None:
        """The running job A1111's progress endpoint reports: the innermost one of the first busy worker."""
        with self._lock:
            return next((w.running[-1] for w in self._workers if w.running), None)

    def running(self) -> list[Job]:
        with self._lock:
            return [job for w in self._workers for job in w.running]

    def jobs(self) -> list[Job]:
        """Every job this process knows: queued, running and recently finished, oldest first."""
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.seq)

    @property
    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def position(self, job: Job) -> int | None:
        """1 for the next job to start, None once it has started (or was never queued here)."""
        with self._lock:
            return next((i + 1 for i, j in enumerate(self._pending) if j is job), None)

    @property
    def devices(self) -> list[str]:
        """This process's devices (remote slots are not devices of this process)."""
        return [w.name for w in self._workers if not w.remote]

    @property
    def device_owners(self) -> list[DeviceOwner]:
        return [w.owner for w in self._workers if not w.remote]

    @property
    def in_flight_remote(self) -> int:
        """Jobs sent to replicas now (scale-out)."""
        with self._lock:
            return sum(len(w.running) for w in self._workers if w.remote)

    # ------------------------------------------------------------------------------------- control

    def interrupt(self, job_id: str | None = None) -> None:
        """Interrupt one job, or (like A1111's Interrupt) the running one."""
        job = self.get(job_id) if job_id else self.current
        if job is not None:
            job.interrupt()

    def skip(self, job_id: str | None = None) -> None:
        job = self.get(job_id) if job_id else self.current
        if job is not None:
            job.skip()

    def pause(self, job_id: str) -> Job:
        """Pause a long job at its next safe point (a queued one is held back); InvalidRequest otherwise."""
        job = self._known(job_id)
        if not job.spec.pausable:
            raise InvalidRequest("job_id", f"a {job.kind} job cannot be paused; only long jobs (batch folders, "
                                           "training) can")
        return self._hold(job, True)

    def resume(self, job_id: str) -> Job:
        return self._hold(self._known(job_id), False)

    def _hold(self, job: Job, paused: bool) -> Job:
        """Request or lift a pause; a job still waiting changes state at once, a running one at its safe point."""
        if job.finished:
            raise InvalidRequest("job_id", f"job {job.id} has already ended ({job.state.value})")
        with self._lock:
            if paused:
                job.pause_requested.set()
            else:
                job.pause_requested.clear()
            if job in self._pending:
                job._update(state=JobState.PAUSED if paused else JobState.QUEUED,
                            textinfo="Paused (not started)" if paused else "")
            self._lock.notify_all()
        self._record("set_status", job.id, JobState.PAUSED.value if paused else job.state.value)
        return job

    def _known(self, job_id: str) -> Job:
        job = self.get(job_id)
        if job is None:
            raise InvalidRequest("job_id", f"no job {job_id!r} in this server's queue")
        return job

    def shutdown(self) -> None:
        """Stop the workers; running jobs are interrupted. Jobs still waiting end here but stay unfinished in the
        history, which lists them as interrupted at the next start."""
        with self._lock:
            self._stopping = True
            pending, self._pending = list(self._pending), []
            running = [job for w in self._workers for job in w.running]
            self._lock.notify_all()
        for job in pending:
            job.interrupted.set()
            self._cancel(job, "The server stopped before the job started.", record=False)
        for job in running:
            job.interrupt()

    def _interrupted(self, job: Job) -> None:
        """A queued (or paused-before-start) job ends at once; a running one sees the flag at its next check."""
        with self._lock:
            if job not in self._pending:
                self._lock.notify_all()  # wakes a paused job's safe point
                return
            self._pending.remove(job)
        self._cancel(job, "Cancelled before it started.")

    def _cancel(self, job: Job, message: str, record: bool = True) -> None:
        job.error = Cancelled(message)
        job.finished_at = time.time()
        if record:
            self._record("finished", job.id, JobState.CANCELLED.value, job.finished_at, None, message)
        job._update(state=JobState.CANCELLED, textinfo=message)

    def _forget_old(self) -> None:
        # Keep finished jobs around for a while so clients can read results and progress; the history database
        # keeps them for good.
        finished = [jid for jid, job in self._jobs.items() if job.finished]
        for jid in finished[:-64]:
            del self._jobs[jid]

    # ------------------------------------------------------------------------------------- scheduling

    def _pick(self, worker: Worker, min_priority: int | None = None) -> Job | None:
        """The first pending job ``worker`` should run now (lock held), removed from the queue; or None."""
        idle = [w for w in self._workers if not w.running and w is not worker]
        switch_ahead = any(j.spec.switches_checkpoint for w in self._workers for j in w.running)
        for job in self._pending:
            if min_priority is not None and job.priority < min_priority:
                break  # sorted by priority: nothing later qualifies either
            if job.spec.switches_checkpoint:
                blocked = switch_ahead
                switch_ahead = True  # jobs behind a switch that follow the default wait for its outcome
                if blocked:
                    continue
            elif job.spec.uses_checkpoint and job.checkpoint is None and switch_ahead:
                continue
            if job.pause_requested.is_set():
                continue
            if self._remote and worker.remote != (job.spec.uses_checkpoint and not job.spec.switches_checkpoint):
                continue  # scale-out: generation goes to the replicas, everything else stays on this process
            title = self._title(job, worker)
            if title and not worker.has_loaded(title) and any(w.has_loaded(title) for w in idle):
                continue  # another free device has its checkpoint loaded: leave the job to it
            self._pending.remove(job)
            return job
        return None

    def _title(self, job: Job, worker: Worker) -> str | None:
        if not job.spec.uses_checkpoint or worker.models is None:
            return None
        if job.checkpoint:
            return job.checkpoint
        selected = worker.models.selected
        return selected.title if selected else None

    def _take(self, worker: Worker) -> Job | None:
        with self._lock:
            while not self._stopping:
                job = self._pick(worker)
                if job is not None:
                    worker.running.append(job)
                    return job
                self._lock.wait()
            return None

    def _run(self, worker: Worker) -> None:
        while (job := self._take(worker)) is not None:
            self._execute(job, worker)

    def _safe_point(self, job: Job, worker: Worker, admit: bool = True) -> float:
        """Run what may run inline at a long job's safe point (when ``admit``); wait while it is paused. Returns
        seconds paused."""
        paused_since: float | None = None
        try:
            while not job.interrupted.is_set() and not self._stopping:
                with self._lock:
                    paused = job.pause_requested.is_set()
                    if paused and paused_since is None:
                        paused_since = time.monotonic()
                        job._update(state=JobState.PAUSED, textinfo="Paused")
                    inline = self._pick(worker, None if paused else job.priority + 1) if admit else None
                    if inline is None:
                        if not paused:
                            return 0.0 if paused_since is None else time.monotonic() - paused_since
                        self._lock.wait()
                        continue
                    worker.running.append(inline)
                self._execute(inline, worker)
            return 0.0 if paused_since is None else time.monotonic() - paused_since
        finally:
            if paused_since is not None:
                job._update(state=JobState.RUNNING, textinfo="")
                self._record("set_status", job.id, JobState.RUNNING.value)

    def _execute(self, job: Job, worker: Worker) -> None:
        """Run one job on ``worker`` (already on its running stack); the worker survives any job's failure."""
        try:
            if job.state is not JobState.QUEUED:
                return  # cancelled between being picked and starting
            if job.interrupted.is_set():
                self._end(job, JobState.CANCELLED, Cancelled("Cancelled before it started."),
                          "Cancelled before it started.")
                return
            job.started_at, job.device = time.time(), worker.name
            job._update(state=JobState.RUNNING)
            self._record("started", job.id, job.started_at, worker.name)
            ctx = JobContext(job, self._max_job_seconds, self._clock, worker, self)
            try:
                job.result = job.spec.handler(ctx, job.request)
            except Cancelled as exc:
                self._end(job, JobState.CANCELLED, exc, str(exc))
            except StudioError as exc:
                self._end(job, JobState.FAILED, exc, str(exc))
            except Exception as exc:  # noqa: BLE001 - the worker must survive any job's bug
                log.exception("Job %s failed", job.id)
                self._end(job, JobState.FAILED, exc, f"Internal error: {exc}")
            else:
                changes = {"textinfo": job.limit_message} if job.limit_message else {}
                self._end(job, JobState.DONE, None, None, step=job.progress.steps, **changes)
        finally:
            with self._lock:
                worker.running.remove(job)
                self._lock.notify_all()

    def _end(self, job: Job, state: JobState, error: BaseException | None, text: str | None, **changes: Any) -> None:
        job.error = error
        job.finished_at = time.time()
        if text is not None:
            changes["textinfo"] = text
        self._record("finished", job.id, state.value, job.finished_at, job.result, text if error else None)
        job._update(state=state, **changes)

    def _record(self, event: str, *args: Any) -> None:
        if self._store is not None:
            try:
                getattr(self._store, event)(*args)
            except Exception:  # noqa: BLE001 - the history must never cost a job
                log.exception("Could not record job event %s", event)
