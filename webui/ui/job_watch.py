"""Following a queued job from a Gradio streaming handler."""

from __future__ import annotations

from typing import Iterator

from webui.services.jobs import Job
from webui.types import Progress


def progress_until_done(job: Job, timeout: float = 1.0) -> Iterator[Progress]:
    """Each change of ``job``'s progress until it ends. If the consumer stops early (the browser went away and
    Gradio closed the handler's generator, which closes this one), the job is interrupted: nobody is watching."""
    finished = False
    try:
        version = 0
        while not job.finished:
            version, progress = job.watch(version, timeout=timeout)
            yield progress
        finished = True
    finally:
        if not finished:
            job.interrupt()
