"""The Train tab: one sub-tab per form (LoRA / DreamBooth here; textual inversion, CycleGAN / pix2pix and the
checkpoint merger are filled in by their own modules), and below them one live monitor for the run being
followed. Starting checks the whole request first (the service refuses bad input before queueing), then follows the
new run; reopening the page follows the run still going."""

from __future__ import annotations

from typing import Any, Iterator

import gradio as gr

from webui.errors import StudioError
from webui.services.container import Services
from webui.ui import train_forms, train_gan_form, train_monitor, train_ti_form
from webui.ui.merge import build_merge_tab
from webui.ui.generation_form import error_html


def build(services: Services, demo: gr.Blocks, checkpoint: gr.Dropdown | None = None) -> train_monitor.Monitor | None:
    """The tab's contents. ``checkpoint``: the page's checkpoint selector, updated when a merge writes a model."""
    service = services.training
    if service is None:
        gr.Markdown("Training is not available on this server.")
        return None
    forms: list[train_forms.FormParts] = []
    with gr.Tabs():
        with gr.Tab("LoRA / DreamBooth", id="train_lora"):
            forms.append(train_forms.build_form([i.title for i in services.registry.list()]))
        with gr.Tab("Textual inversion", id="train_ti"):
            forms.append(train_ti_form.build_form(lambda: [i.title for i in services.registry.list()]))
        with gr.Tab("CycleGAN / pix2pix", id="train_gan"):
            forms.append(train_gan_form.build_form(lambda: [m.name for m in services.style.list_models()]))
        if services.merging is not None:
            with gr.Tab("Merge checkpoints", id="train_merge", elem_id="train_merge"):
                build_merge_tab(services.merging, checkpoint)
    monitor = train_monitor.build_monitor()
    outputs = monitor.outputs

    def start_and_follow(form: train_forms.FormParts):
        def handler(*values: Any) -> Iterator[tuple[Any, ...]]:
            try:
                job_id = service.start(form.to_request(*values))
            except StudioError as exc:
                yield error_html(str(exc)), gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
                return
            yield from train_monitor.follow(service, job_id)
        return handler

    follows = [form.button.click(start_and_follow(form), form.inputs, outputs, api_visibility="private",
                                 concurrency_limit=None) for form in forms]
    def follow_active() -> Iterator[tuple[Any, ...]]:
        yield from train_monitor.follow(service, service.active())

    def follow_picked(job_id: str | None) -> Iterator[tuple[Any, ...]]:
        yield from train_monitor.follow(service, job_id)

    follows.append(demo.load(follow_active, None, outputs, api_visibility="private", concurrency_limit=None))
    monitor.runs.input(follow_picked, monitor.runs, outputs, api_visibility="private", concurrency_limit=None,
                       cancels=follows)

    def act(action: str):
        def handler(job_id: str | None) -> str:
            if not job_id:
                return error_html("Pick a training run first.")
            try:
                getattr(service, action)(job_id)
            except StudioError as exc:
                return error_html(str(exc))
            return train_monitor.status_html(service.get(job_id, history=False))
        return handler

    for button, action in ((monitor.pause, "pause"), (monitor.resume, "resume"), (monitor.cancel, "cancel")):
        button.click(act(action), monitor.runs, monitor.status, api_visibility="private")
    monitor.refresh.click(lambda current: gr.update(choices=train_monitor.run_choices(service), value=current),
                          monitor.runs, monitor.runs, api_visibility="private")
    return monitor
