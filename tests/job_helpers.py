"""Queue test helpers: run a plain function as a job of its own kind (jobs are typed records run by handlers)."""

from __future__ import annotations

from typing import Any, Callable

from webui.services.jobs import Job, JobKind, JobQueue


def submit_work(queue: JobQueue, kind: str, work: Callable[[Any], Any], **options: Any) -> Job:
    """Register ``kind`` (a handler calling ``work(ctx)``) and queue one job of it."""
    queue.register(JobKind(kind, lambda ctx, _request: work(ctx), **options))
    return queue.submit(kind)


class QuietListener:
    """A step listener for pipelines run directly in tests: no progress shown, never stopped."""

    def on_step(self, step, steps, preview) -> None:
        pass

    def should_stop(self) -> bool:
        return False
