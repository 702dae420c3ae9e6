"""The Train tab's live monitor: one status line, loss and learning-rate plots that grow as the run steps, the
latest sample images, Pause / Resume / Cancel, the list of runs (pick one to follow) and the written file. Every
form's start button and the page load stream into it (``follow``), like generation_form.stream_job does."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr
import pandas as pd

from webui.errors import StudioError
from webui.services.training import TrainingService
from webui.ui.generation_form import WATCH_TIMEOUT, error_html

FINISHED = ("done", "failed", "cancelled")


@dataclass
class Monitor:
    status: gr.HTML
    loss_plot: gr.LinePlot
    lr_plot: gr.LinePlot
    samples: gr.Gallery
    output: gr.Markdown
    runs: gr.Dropdown
    pause: gr.Button
    resume: gr.Button
    cancel: gr.Button
    refresh: gr.Button

    @property
    def outputs(self) -> list[gr.components.Component]:
        """What ``follow`` updates, in its order."""
        return [self.status, self.loss_plot, self.lr_plot, self.samples, self.output, self.runs]


def _run_label(run: dict[str, Any]) -> str:
    return f"{run['id']} · {run['method']} · {run.get('output_name') or ''} · {run['state']}"


def run_choices(service: TrainingService) -> list[tuple[str, str]]:
    return [(_run_label(run), run["id"]) for run in service.list()]


def _memory(report: dict[str, Any]) -> str:
    memory = report.get("device_memory")
    if not memory:
        return ""
    used = f"{memory['allocated'] / 2**30:.2f} GiB"
    if "peak" in memory:
        used += f" (peak {memory['peak'] / 2**30:.2f} of {memory['total'] / 2**30:.0f} GiB)"
    return f" · {report['device']} memory {used}"


def status_html(report: dict[str, Any]) -> str:
    state = report["state"]
    if state == "queued":
        ahead = f" (position {report['queue_position']})" if report.get("queue_position") else ""
        text = f"Waiting in queue{ahead}…"
    else:
        parts = [f"{state.capitalize()}", f"step {report['step']}/{report['total_steps']}"]
        if report.get("epoch") is not None:
            parts.append(f"epoch {report['epoch']:g}")
        if report.get("loss") is not None:
            parts.append(f"loss {report['loss']:.4f}")
        if report.get("lr") is not None:
            parts.append(f"lr {report['lr']:.3g}")
        if report.get("eta_seconds") is not None and state == "running":
            parts.append(f"ETA {report['eta_seconds']:.0f}s")
        text = " · ".join(parts) + _memory(report)
    message = report.get("message") or ""
    if state == "failed":
        return error_html(message or "Training failed")
    percent = int(100 * report["step"] / report["total_steps"]) if report.get("total_steps") else 0
    shown = message and state != "running" and message.lower() != state  # the queue's "Paused" says it twice
    extra = f"<br><span>{html.escape(message)}</span>" if shown else ""
    return (f"<div class='studio-progress' id='train_status_line' data-state='{state}'>"
            f"<progress max='100' value='{percent}'></progress> <span>{html.escape(text)}</span>{extra}</div>")


def _plot(history: list[dict[str, float]], figure: str) -> pd.DataFrame:
    return pd.DataFrame({"step": [p["step"] for p in history if figure in p],
                         figure: [p[figure] for p in history if figure in p]})


def _updates(service: TrainingService, job_id: str) -> tuple[Any, ...]:
    report = service.get(job_id)
    files = report.get("outputs") or ([report["output"]] if report.get("output") else [])
    output = "Saved: " + ", ".join(f"`{path}`" for path in files) if files else ""
    samples = [(image, f"step {step}") for step, image in report["samples"][-8:]]
    return (status_html(report), _plot(report["history"], "loss"), _plot(report["history"], "lr"),
            samples, output, gr.update(choices=run_choices(service), value=job_id))


def follow(service: TrainingService, job_id: str | None) -> Iterator[tuple[Any, ...]]:
    """Stream a run's monitor updates until it ends (once for a run already ended)."""
    if not job_id:
        yield gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), gr.update(
            choices=run_choices(service))
        return
    try:
        job = service.job(job_id)
        version = 0
        while not job.finished:
            yield _updates(service, job_id)
            version, _ = job.watch(version, timeout=WATCH_TIMEOUT)
        yield _updates(service, job_id)
    except StudioError as exc:
        yield error_html(str(exc)), gr.update(), gr.update(), gr.update(), gr.update(), gr.update()


def build_monitor() -> Monitor:
    status = gr.HTML(elem_id="train_status")
    with gr.Row():
        loss_plot = gr.LinePlot(x="step", y="loss", title="Loss", height=240, elem_id="train_loss_plot")
        lr_plot = gr.LinePlot(x="step", y="lr", title="Learning rate", height=240, elem_id="train_lr_plot")
    samples = gr.Gallery(label="Samples", columns=4, height=220, elem_id="train_samples", format="png")
    output = gr.Markdown(elem_id="train_output")
    with gr.Row():
        runs = gr.Dropdown([], label="Training runs (pick one to follow)", elem_id="train_runs", scale=4)
        refresh = gr.Button("Refresh", scale=0, min_width=80, elem_id="train_refresh")
        pause = gr.Button("Pause", scale=0, min_width=80, elem_id="train_pause")
        resume = gr.Button("Resume", scale=0, min_width=80, elem_id="train_resume")
        cancel = gr.Button("Cancel", scale=0, min_width=80, variant="stop", elem_id="train_cancel")
    return Monitor(status, loss_plot, lr_plot, samples, output, runs, pause, resume, cancel, refresh)
