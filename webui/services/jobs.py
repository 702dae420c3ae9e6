"""One job queue for the GPU: UI, Gradio API and REST all submit here; one worker runs one job at a time.

Each job has an id, a progress snapshot, and interrupt/skip flags. Watchers block on a condition variable that
is notified on every progress change, so nobody polls with sleep. A running job past the queue's per-job time
limit is interrupted exactly as Interrupt does it (the work sees it at its next step check), never killed.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from PIL import Image

from webui.errors import Cancelled, QueueFull, StudioError
from webui.types import JobState, Progress

if TYPE_CHECKING:
    from webui.services.job_store import JobStore

log = logging.getLogger(__name__)


class Job:
    def __init__(self, kind: str, work: Callable[["JobContext"], Any], request: Any = None, priority: int = 0):
        self.id = uuid.uuid4().hex[:12]
        self.kind = kind
        self.request = request  # the validated request, for the history
        self.priority = priority
        self.created_at = time.time()  # wall clock, for the history (started_at below is monotonic)
        self._work = work
        self._cond = threading.Condition()
        self._progress = Progress(job_id=self.id, state=JobState.QUEUED)
        self._version = 0
        self.interrupted = threading.Event()
        self.skipped = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.started_at: float | None = None
        self.time_limit: float | None = None  # seconds; set when the per-job limit stopped this job

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
    def finished(self) -> bool:
        return self.progress.state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)

    def _update(self, **changes: Any) -> None:
        with self._cond:
            self._progress = replace(self._progress, **changes)
            self._version += 1
            self._cond.notify_all()

    def watch(self, since: int, timeout: float | None = None) -> tuple[int, Progress]:
        """Block until the progress changes after version ``since`` (or timeout); return (version, progress)."""
        with self._cond:
            self._cond.wait_for(lambda: self._version > since, timeout=timeout)
            return self._version, self._progress

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
            return self._cond.wait_for(lambda: self._progress.state in
                                       (JobState.DONE, JobState.FAILED, JobState.CANCELLED), timeout=timeout)

    def interrupt(self) -> None:
        self.interrupted.set()
        if self.progress.state is JobState.QUEUED:
            self.error = Cancelled("Cancelled before it started.")
            self._update(state=JobState.CANCELLED, textinfo=str(self.error))

    def skip(self) -> None:
        self.skipped.set()


class JobContext:
    """What running work sees of its job: report progress, check for interrupt/skip."""

    def __init__(self, job: Job, time_limit: float | None = None, clock: Callable[[], float] = time.monotonic):
        self._job = job
        self._preview_id = 0
        self._image_started: float | None = None
        self._clock = clock
        self._time_limit = time_limit
        self._deadline = clock() + time_limit if time_limit else None

    @property
    def job_id(self) -> str:
        return self._job.id

    def begin_image(self, index: int, count: int, steps: int, text: str = "") -> None:
        self._image_started = time.monotonic()
        self._job._update(image_index=index, image_count=count, step=0, steps=steps, textinfo=text)

    def on_step(self, step: int, steps: int, preview: Callable[[], Image.Image] | None = None) -> None:
        progress = self._job.progress
        changes: dict[str, Any] = {"step": step, "steps": steps}
        if self._image_started and step:
            per_step = (time.monotonic() - self._image_started) / step
            remaining = (steps - step) + steps * max(0, progress.image_count - progress.image_index - 1)
            changes["eta_seconds"] = per_step * remaining
        if preview is not None:
            self._preview_id += 1
            changes.update(preview=preview(), preview_id=self._preview_id)
        self._job._update(**changes)

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

    def consume_skip(self) -> bool:
        was = self._job.skipped.is_set()
        self._job.skipped.clear()
        return was


class JobQueue:
    def __init__(self, max_pending: int = 16, max_job_seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic, store: "JobStore | None" = None):
        """``max_job_seconds``: a running job is interrupted past it (None or 0: no limit); ``clock`` is what the
        limit is measured with (tests pass their own); ``store`` records every job in the history."""
        self._max_pending = max_pending
        self._store = store
        self._max_job_seconds = max_job_seconds or None
        self._clock = clock
        self._pending: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._current: Job | None = None
        self._lock = threading.Condition()
        self._stopping = False
        self._worker = threading.Thread(target=self._run, name="gpu-worker", daemon=True)
        self._worker.start()

    def submit(self, kind: str, work: Callable[[JobContext], Any], request: Any = None, priority: int = 0) -> Job:
        job = Job(kind, work, request, priority)
        with self._lock:
            if len(self._pending) >= self._max_pending:
                raise QueueFull(f"The queue is full ({self._max_pending} jobs waiting). Try again shortly.")
            if self._store is not None:  # under the lock: the row must exist before the worker can start the job
                self._store.submitted(job.id, kind, request, priority, job.created_at)
            self._pending.append(job)
            self._jobs[job.id] = job
            self._forget_old()
            self._lock.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    @property
    def current(self) -> Job | None:
        with self._lock:
            return self._current

    @property
    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def interrupt(self, job_id: str | None = None) -> None:
        """Interrupt one job, or (like A1111's Interrupt) the running one."""
        job = self.get(job_id) if job_id else self.current
        if job is not None:
            job.interrupt()
            if job.progress.state is JobState.CANCELLED:  # it had not started: the history says so at once
                self._record_end(job)

    def skip(self, job_id: str | None = None) -> None:
        job = self.get(job_id) if job_id else self.current
        if job is not None:
            job.skip()

    def shutdown(self) -> None:
        with self._lock:
            self._stopping = True
            for job in self._pending:
                job.interrupt()  # the history keeps them unfinished: the next start lists them as interrupted
            self._lock.notify_all()

    def _forget_old(self) -> None:
        # Keep finished jobs around for a while so clients can read results and progress, but not forever.
        finished = [jid for jid, job in self._jobs.items() if job.finished]
        for jid in finished[:-64]:
            del self._jobs[jid]

    def _next(self) -> Job | None:
        with self._lock:
            while not self._pending and not self._stopping:
                self._lock.wait()
            if self._stopping:
                return None
            job = self._pending.popleft()
            self._current = job
            return job

    def _run(self) -> None:
        while (job := self._next()) is not None:
            try:
                if job.progress.state is JobState.QUEUED:
                    self._execute(job, JobContext(job, self._max_job_seconds, self._clock), self._store)
                else:
                    self._record_end(job)  # cancelled while it waited
            finally:
                with self._lock:
                    self._current = None

    def _record_end(self, job: Job) -> None:
        if self._store is not None:
            error = job.progress.textinfo or (str(job.error) if job.error else None)
            self._store.finished(job.id, job.progress.state.value, time.time(), job.result,
                                 None if job.progress.state is JobState.DONE else error)

    @staticmethod
    def _execute(job: Job, ctx: JobContext, store: "JobStore | None" = None) -> None:
        job.started_at = time.monotonic()
        if store is not None:
            store.started(job.id, time.time(), "cpu")  # one device for now; the per-device worker names its own
        job._update(state=JobState.RUNNING)
        changes: dict[str, Any] = {}
        try:
            job.result = job._work(ctx)
        except Cancelled as exc:
            job.error = exc
            state, changes["textinfo"] = JobState.CANCELLED, str(exc)
        except StudioError as exc:
            job.error = exc
            state, changes["textinfo"] = JobState.FAILED, str(exc)
        except Exception as exc:  # noqa: BLE001 - the worker must survive any job's bug
            log.exception("Job %s failed", job.id)
            job.error = exc
            state, changes["textinfo"] = JobState.FAILED, f"Internal error: {exc}"
        else:
            state, changes["step"] = JobState.DONE, job.progress.steps
            if job.limit_message:
                changes["textinfo"] = job.limit_message
        if store is not None:  # before watchers wake, so whoever waited on the job reads it finished here too
            store.finished(job.id, state.value, time.time(), job.result,
                           None if state is JobState.DONE else changes["textinfo"])
        job._update(state=state, **changes)
