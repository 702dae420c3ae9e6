"""Widgets and streaming shared by the txt2img and img2img tabs.

Widgets are kept by name in small dataclasses, and handlers read ``{component: value}`` dicts, so no positional
contract ties the UI to the backend.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator

import gradio as gr

from webui.errors import StudioError
from webui.samplers import sampler_names, schedules_for
from webui.services.container import Services
from webui.services.jobs import Job
from webui.types import JobState, Progress, Txt2ImgRequest

WATCH_TIMEOUT = 1.0  # seconds a streaming handler waits for a progress change before re-checking the job
_INT_FIELDS = ("steps", "width", "height", "seed", "n_iter", "batch_size", "clip_skip")


@dataclass
class PromptRow:
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button


@dataclass
class SettingsForm:
    """The sampling settings every diffusion tab has, by request field name."""

    sampler_name: gr.Dropdown
    scheduler: gr.Dropdown
    steps: gr.Slider
    cfg_scale: gr.Slider
    width: gr.Slider
    height: gr.Slider
    seed: gr.Number
    n_iter: gr.Slider
    batch_size: gr.Slider
    clip_skip: gr.Slider


@dataclass
class Outputs:
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    info: gr.Textbox

    def components(self) -> list:
        return [self.progress, self.preview, self.gallery, self.info]


def named(form) -> dict[str, gr.components.Component]:
    return {f.name: getattr(form, f.name) for f in fields(form)}


def request_fields(values: dict, *forms) -> dict[str, Any]:
    """Widget values by request field name; Gradio numbers arrive as floats."""
    result = {}
    for form in forms:
        for name, component in named(form).items():
            if isinstance(component, gr.Button):
                continue
            value = values[component]
            if name in _INT_FIELDS and isinstance(value, float) and value.is_integer():
                value = int(value)
            result[name] = value
    return result


def progress_html(progress: Progress) -> str:
    if progress.state is JobState.QUEUED:
        return "<div class='studio-progress'>Waiting in queue…</div>"
    percent = int(progress.fraction * 100)
    eta = f" · ETA {progress.eta_seconds:.0f}s" if progress.eta_seconds is not None else ""
    text = (f"Step {progress.step}/{progress.steps} · image batch {progress.image_index + 1}/"
            f"{max(1, progress.image_count)}{eta}")
    return (f"<div class='studio-progress'><progress max='100' value='{percent}'></progress> "
            f"<span>{html.escape(text)}</span></div>")


def error_html(message: str) -> str:
    return f"<div class='studio-error' role='alert'>⚠ {html.escape(message)}</div>"


def build_prompt_row(prefix: str, placeholder: str = "") -> PromptRow:
    with gr.Row():
        with gr.Column(scale=4):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder=placeholder, elem_id=f"{prefix}_prompt")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{prefix}_negative_prompt")
        with gr.Column(scale=1, min_width=200):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id=f"{prefix}_interrupt")
                skip = gr.Button("Skip", elem_id=f"{prefix}_skip")
    return PromptRow(prompt, negative, generate, interrupt, skip)


def build_settings(services: Services, prefix: str) -> SettingsForm:
    defaults, limits = Txt2ImgRequest(), services.settings.limits
    with gr.Row():
        sampler = gr.Dropdown(sampler_names(), value=defaults.sampler_name, label="Sampling method",
                              elem_id=f"{prefix}_sampler")
        scheduler = gr.Dropdown(list(schedules_for(defaults.sampler_name)), value=defaults.scheduler,
                                label="Schedule type", elem_id=f"{prefix}_scheduler")
    steps = gr.Slider(1, limits.max_steps, value=defaults.steps, step=1, label="Sampling steps")
    with gr.Row():
        width = gr.Slider(64, limits.max_width, value=defaults.width, step=8, label="Width")
        height = gr.Slider(64, limits.max_height, value=defaults.height, step=8, label="Height")
    with gr.Row():
        n_iter = gr.Slider(1, limits.max_batch_count, value=1, step=1, label="Batch count")
        batch_size = gr.Slider(1, limits.max_batch_size, value=1, step=1, label="Batch size")
    cfg = gr.Slider(1, 30, value=defaults.cfg_scale, step=0.5, label="CFG scale")
    with gr.Row():
        seed = gr.Number(-1, label="Seed (-1 = random)", precision=0, elem_id=f"{prefix}_seed")
        random_seed = gr.Button("Random", scale=0, min_width=80)
    clip_skip = gr.Slider(1, 12, value=1, step=1, label="Clip skip")

    def on_sampler_change(name: str, current: str):
        choices = list(schedules_for(name)) if name in sampler_names() else ["Automatic"]
        return gr.update(choices=choices, value=current if current in choices else "Automatic")

    sampler.change(on_sampler_change, [sampler, scheduler], scheduler, api_visibility="private")
    random_seed.click(lambda: -1, None, seed, api_visibility="private")
    return SettingsForm(sampler, scheduler, steps, cfg, width, height, seed, n_iter, batch_size, clip_skip)


def build_outputs(prefix: str) -> Outputs:
    progress = gr.HTML(elem_id=f"{prefix}_progress")
    preview = gr.Image(label="Preview", visible=False, interactive=False, format="png")
    gallery = gr.Gallery(label="Output", columns=2, format="png", elem_id=f"{prefix}_gallery", interactive=False)
    info = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id=f"{prefix}_info")
    return Outputs(progress, preview, gallery, info)


def warnings_html(warnings: list[str]) -> str:
    return "".join(f"<div class='studio-warning' role='status'>⚠ {html.escape(w)}</div>" for w in warnings)


def stream_job(submit: Callable[[], Job], cancel_on_disconnect: bool = True) -> Iterator[tuple[Any, ...]]:
    """Yield (progress, preview, gallery, info, job id) updates from submission to the finished job.

    When the browser goes away Gradio closes this generator (GeneratorExit at a ``yield``, from its queue's
    iterator reset); the job is then interrupted, as the API does for a client that hangs up.
    """
    started = time.monotonic()
    try:
        job = submit()
    except StudioError as exc:
        yield error_html(str(exc)), gr.update(visible=False), gr.update(), gr.update(), None
        return
    version, shown_preview = 0, 0
    try:
        while not job.finished:
            version, p = job.watch(version, timeout=WATCH_TIMEOUT)
            preview_update = gr.update()
            if p.preview is not None and p.preview_id != shown_preview:
                shown_preview = p.preview_id
                preview_update = gr.update(value=p.preview, visible=True)
            yield progress_html(p), preview_update, gr.update(), gr.update(), job.id
    except GeneratorExit:
        if cancel_on_disconnect:
            job.interrupt()
        raise
    try:
        result = job.wait()
    except StudioError as exc:
        yield error_html(str(exc)), gr.update(visible=False), gr.update(), gr.update(), None
        return
    note = " (interrupted)" if result.interrupted else ""
    done = (f"<div class='studio-progress'>{len(result.images)} image(s) in "
            f"{time.monotonic() - started:.1f}s{note}</div>") + warnings_html(result.warnings)
    # Paths let the browser fetch the saved files; any image that was not saved is sent itself.
    images = [str(p) for p in result.paths] if len(result.paths) == len(result.images) else result.images
    yield done, gr.update(visible=False), images, "\n\n".join(result.infotexts[:1]), None


def wire(services: Services, row: PromptRow, outputs: Outputs, inputs: set, submit: Callable[[dict], Job],
         api_name: str) -> None:
    """Generate streams the job; Interrupt and Skip act on this browser session's job."""
    job_id = gr.State(None)

    def generate(values: dict) -> Iterator[tuple[Any, ...]]:
        yield from stream_job(lambda: submit(values), services.settings.cancel_on_disconnect)

    def interrupt(jid: str | None) -> None:
        if jid:  # only this session's job, never someone else's
            services.queue.interrupt(jid)

    def skip(jid: str | None) -> None:
        if jid:
            services.queue.skip(jid)

    row.generate.click(generate, inputs, outputs.components() + [job_id], api_name=api_name,
                       concurrency_limit=services.settings.limits.queue_size)
    # Interrupt and Skip must not wait behind running generations in Gradio's own queue.
    row.interrupt.click(interrupt, job_id, None, concurrency_limit=None, api_visibility="private")
    row.skip.click(skip, job_id, None, concurrency_limit=None, api_visibility="private")
