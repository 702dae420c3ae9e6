"""The "Merge checkpoints" form (A1111's Checkpoint Merger, plus LoRAs to bake): collects the fields into a
``MergeRequest``, runs it as a job and streams its progress; the result line says where it was saved."""

from __future__ import annotations

import html
from typing import Any, Iterator

import gradio as gr

from webui.errors import StudioError
from webui.services.merge_request import (ADD_DIFFERENCE, METHODS, NO_INTERPOLATION, NO_VAE, WEIGHTED_SUM,
                                          MergeRequest, parse_loras)
from webui.services.merging import MergeService
from webui.ui.generation_form import error_html
from webui.ui.job_watch import progress_until_done

WATCH_SECONDS = 1.0


def _progress_html(text: str, done: int = 0, total: int = 0) -> str:
    bar = f"<progress max='{max(total, 1)}' value='{done}'></progress> " if total else ""
    return f"<div class='studio-progress'>{bar}<span>{html.escape(text)}</span></div>"


def _saved_html(title: str, path: str) -> str:
    return (f"<div id='merge_saved' role='status'>✔ Checkpoint saved: <b>{html.escape(title)}</b><br>"
            f"<small>{html.escape(path)}</small></div>")


def build_merge_tab(merger: MergeService, checkpoint: gr.Dropdown | None = None) -> None:
    """The merger's widgets, in the Blocks context the caller opened. ``checkpoint``: the page's checkpoint
    selector, whose choices a finished merge refreshes too (its value is kept)."""
    titles = merger.checkpoint_titles()
    with gr.Row(equal_height=True):
        primary = gr.Dropdown(titles, value=None, label="Primary model (A)", elem_id="merge_primary")
        secondary = gr.Dropdown(titles, value=None, label="Secondary model (B)", elem_id="merge_secondary")
        tertiary = gr.Dropdown(titles, value=None, label="Tertiary model (C)", elem_id="merge_tertiary")
        refresh = gr.Button("Refresh", scale=0, min_width=80, elem_id="merge_refresh")
    with gr.Row():
        method = gr.Radio(list(METHODS), value=WEIGHTED_SUM, label="Interpolation method", elem_id="merge_method")
        multiplier = gr.Slider(0, 1, value=0.3, step=0.05, label="Multiplier (M) - set to 0 to get model A",
                               elem_id="merge_multiplier")
    formula = gr.Markdown("Result = A × (1 − M) + B × M", elem_id="merge_formula")
    with gr.Row():
        output_name = gr.Textbox(label="Custom name (optional)", elem_id="merge_name",
                                 placeholder="empty: A1111's name, e.g. 0.7(A) + 0.3(B)")
        save_as_half = gr.Checkbox(False, label="Save as float16", elem_id="merge_fp16")
        overwrite = gr.Checkbox(False, label="Overwrite an existing file", elem_id="merge_overwrite")
    with gr.Row():
        bake_vae = gr.Dropdown(merger.vae_choices(), value=NO_VAE, label="Bake in VAE", elem_id="merge_vae")
        discard = gr.Textbox(label="Discard weights with matching name (regular expression)", elem_id="merge_discard")
    loras = gr.Textbox(label="LoRAs to bake in (name:weight, comma-separated)", elem_id="merge_loras",
                       placeholder="e.g. detail:0.8, style:0.5",
                       info="From models/Lora: " + (", ".join(merger.lora_names()) or "none found"))
    with gr.Row():
        run = gr.Button("Merge", variant="primary", elem_id="merge_run")
        cancel = gr.Button("Cancel", elem_id="merge_cancel")
    result = gr.HTML(elem_id="merge_result")

    def describe(chosen: str) -> str:
        return {WEIGHTED_SUM: "Result = A × (1 − M) + B × M", ADD_DIFFERENCE: "Result = A + (B − C) × M",
                NO_INTERPOLATION: "Result = A (with the VAE, LoRAs and discards below)"}.get(chosen, "")

    method.change(describe, method, formula, api_visibility="private")

    def lists(*current: str | None) -> list[Any]:
        titles = merger.checkpoint_titles()
        return [gr.update(choices=titles, value=value if value in titles else None) for value in current]

    selectors = [primary, secondary, tertiary]

    def do_refresh(a: str | None, b: str | None, c: str | None):
        merger.refresh()
        return (*lists(a, b, c), gr.update(choices=merger.vae_choices()))

    refresh.click(do_refresh, selectors, [*selectors, bake_vae], api_visibility="private")

    extra_outputs = [checkpoint] if checkpoint is not None else []

    def do_merge(a, b, c, how, m, name, half, replace, vae, regex, lora_text, *page) -> Iterator[list[Any]]:
        keep = [gr.update()] * (3 + len(extra_outputs))
        try:
            request = MergeRequest(primary=a or "", secondary=b or "", tertiary=c or "", method=how,
                                   multiplier=float(m), save_as_half=bool(half), output_name=name or "",
                                   bake_vae=vae or NO_VAE, discard_weights=regex or "",
                                   loras=parse_loras(lora_text or ""), overwrite=bool(replace))
            job = merger.submit(request)
        except StudioError as exc:
            yield [error_html(str(exc)), *keep]
            return
        for progress in progress_until_done(job, WATCH_SECONDS):
            position = merger.position(job)
            text = (f"Waiting in the queue (position {position})" if position else
                    f"Merging: {progress.step}/{progress.steps} tensors")
            yield [_progress_html(text, progress.step, progress.steps), *keep]
        try:
            saved = job.wait()
        except StudioError as exc:
            yield [error_html(str(exc)), *keep]
            return
        page_update = [gr.update(choices=merger.checkpoint_titles(), value=page[0])] if extra_outputs else []
        yield [_saved_html(saved.title, str(saved.path)), *lists(a, b, c), *page_update]

    run.click(do_merge, [*selectors, method, multiplier, output_name, save_as_half, overwrite, bake_vae, discard,
                         loras, *extra_outputs], [result, *selectors, *extra_outputs], api_visibility="private")

    def do_cancel() -> str:
        count = merger.cancel_all()
        return _progress_html("Cancelling…" if count else "No merge is running.")

    cancel.click(do_cancel, None, result, api_visibility="private")
