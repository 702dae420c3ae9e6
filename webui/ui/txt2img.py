"""The txt2img tab: widgets in, a typed request out, progress streamed back. No generation logic lives here."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr

from webui.errors import StudioError
from webui.samplers import sampler_names, schedules_for
from webui.services.container import Services
from webui.types import JobState, Progress, Txt2ImgRequest

WATCH_TIMEOUT = 1.0  # seconds a streaming handler waits for a progress change before re-checking the job


@dataclass
class Txt2ImgForm:
    """The tab's input widgets, by name, so handlers read a dict instead of positional arguments."""

    prompt: gr.Textbox
    negative_prompt: gr.Textbox
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

    def components(self) -> dict[str, gr.components.Component]:
        return dict(vars(self))

    def to_request(self, values: dict, checkpoint: str | None) -> Txt2ImgRequest:
        fields = {name: values[component] for name, component in self.components().items()}
        for name in ("steps", "width", "height", "seed", "n_iter", "batch_size", "clip_skip"):
            if isinstance(fields[name], float) and fields[name].is_integer():
                fields[name] = int(fields[name])  # Gradio numbers arrive as floats
        return Txt2ImgRequest.parse(**fields, checkpoint=checkpoint or None)


@dataclass
class Txt2ImgTab:
    form: Txt2ImgForm
    generate: gr.Button
    gallery: gr.Gallery
    info: gr.Textbox


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


def build(services: Services, checkpoint: gr.Dropdown) -> Txt2ImgTab:
    defaults = Txt2ImgRequest()
    with gr.Row():
        with gr.Column(scale=4):
            prompt = gr.Textbox(label="Prompt", lines=3, placeholder="a watercolor fox in a snowy forest",
                                elem_id="txt2img_prompt")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_negative_prompt")
        with gr.Column(scale=1, min_width=200):
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id="txt2img_interrupt")
                skip = gr.Button("Skip", elem_id="txt2img_skip")
    with gr.Row():
        with gr.Column():
            with gr.Row():
                sampler = gr.Dropdown(sampler_names(), value=defaults.sampler_name, label="Sampling method")
                scheduler = gr.Dropdown(list(schedules_for(defaults.sampler_name)), value=defaults.scheduler,
                                        label="Schedule type")
            steps = gr.Slider(1, services.settings.limits.max_steps, value=defaults.steps, step=1,
                              label="Sampling steps")
            with gr.Row():
                width = gr.Slider(64, services.settings.limits.max_width, value=defaults.width, step=8,
                                  label="Width")
                height = gr.Slider(64, services.settings.limits.max_height, value=defaults.height, step=8,
                                   label="Height")
            with gr.Row():
                n_iter = gr.Slider(1, services.settings.limits.max_batch_count, value=1, step=1,
                                   label="Batch count")
                batch_size = gr.Slider(1, services.settings.limits.max_batch_size, value=1, step=1,
                                       label="Batch size")
            cfg = gr.Slider(1, 30, value=defaults.cfg_scale, step=0.5, label="CFG scale")
            with gr.Row():
                seed = gr.Number(-1, label="Seed (-1 = random)", precision=0, elem_id="txt2img_seed")
                random_seed = gr.Button("Random", scale=0, min_width=80)
            clip_skip = gr.Slider(1, 12, value=1, step=1, label="Clip skip")
        with gr.Column():
            progress = gr.HTML(elem_id="txt2img_progress")
            preview = gr.Image(label="Preview", visible=False, interactive=False, format="png")
            gallery = gr.Gallery(label="Output", columns=2, format="png", elem_id="txt2img_gallery",
                                 interactive=False)
            info = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id="txt2img_info")

    form = Txt2ImgForm(prompt, negative, sampler, scheduler, steps, cfg, width, height, seed, n_iter,
                       batch_size, clip_skip)
    job_id = gr.State(None)

    def on_sampler_change(name: str, current: str):
        choices = list(schedules_for(name)) if name in sampler_names() else ["Automatic"]
        return gr.update(choices=choices, value=current if current in choices else "Automatic")

    sampler.change(on_sampler_change, [sampler, scheduler], scheduler, api_visibility="private")
    random_seed.click(lambda: -1, None, seed, api_visibility="private")

    def run(values: dict) -> Iterator[tuple[Any, ...]]:
        started = time.monotonic()
        try:
            request = form.to_request(values, values[checkpoint])
            job = services.generation.submit_txt2img(request)
        except StudioError as exc:
            yield error_html(str(exc)), gr.update(visible=False), gr.update(), gr.update(), None
            return
        version, shown_preview = 0, 0
        while not job.finished:
            version, p = job.watch(version, timeout=WATCH_TIMEOUT)
            preview_update = gr.update()
            if p.preview is not None and p.preview_id != shown_preview:
                shown_preview = p.preview_id
                preview_update = gr.update(value=p.preview, visible=True)
            yield progress_html(p), preview_update, gr.update(), gr.update(), job.id
        try:
            result = job.wait()
        except StudioError as exc:
            yield error_html(str(exc)), gr.update(visible=False), gr.update(), gr.update(), None
            return
        elapsed = time.monotonic() - started
        note = " (interrupted)" if result.interrupted else ""
        done = f"<div class='studio-progress'>{len(result.images)} image(s) in {elapsed:.1f}s{note}</div>"
        images = [str(p) for p in result.paths] if result.paths else result.images
        yield done, gr.update(visible=False), images, "\n\n".join(result.infotexts[:1]), None

    inputs = set(form.components().values()) | {checkpoint}
    generate.click(run, inputs, [progress, preview, gallery, info, job_id], api_name="txt2img",
                   concurrency_limit=services.settings.limits.queue_size)
    # Interrupt and Skip must not wait behind running generations in Gradio's own queue.
    interrupt.click(lambda jid: services.queue.interrupt(jid), job_id, None, concurrency_limit=None,
                    api_visibility="private")
    skip.click(lambda jid: services.queue.skip(jid), job_id, None, concurrency_limit=None,
               api_visibility="private")
    return Txt2ImgTab(form=form, generate=generate, gallery=gallery, info=info)
