"""Following a job from a streaming UI handler: progress while it runs, and a job nobody watches any more stops."""

from __future__ import annotations

import threading

from webui.services.jobs import LONG, JobKind
from webui.ui.job_watch import progress_until_done


def _spin_kind(started: threading.Event) -> JobKind:
    def spin(ctx, request):
        started.set()
        step = 0
        while not ctx.interrupted:
            step += 1
            ctx.on_step(step, 1_000_000)
            ctx.safe_point()
        return step
    return JobKind("spin-test", spin, pausable=True, priority=LONG)


def test_closing_the_handler_interrupts_the_job(services):
    started = threading.Event()
    services.queue.register(_spin_kind(started))
    job = services.queue.submit("spin-test")

    def handler():  # what extras.py / merge.py stream to the browser
        for progress in progress_until_done(job, timeout=5.0):
            yield progress.step

    stream = handler()
    assert next(stream) >= 0 and started.wait(30)
    stream.close()  # Gradio closes the generator when the browser goes away
    assert job.wait_done(30) and job.interrupted.is_set()


def test_a_finished_job_ends_the_stream_without_interrupting_it(services):
    services.queue.register(JobKind("quick-test", lambda ctx, request: 7, priority=LONG))
    job = services.queue.submit("quick-test")
    list(progress_until_done(job, timeout=5.0))
    assert job.finished and job.wait(5) == 7 and not job.interrupted.is_set()
