"""The History tab: past jobs from the job history (newest first), their details, and Reopen into their tab.

Reopen puts every setting of a txt2img or img2img job back into its tab (img2img also gets its init image and
mask back) and switches to it. The seed comes back as the one used, so Generate makes the same image again.
"""

from __future__ import annotations

import html
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, ImageDraw

from webui.errors import ModelNotFound, StudioError
from webui.parameters import BY_NAME
from webui.services.container import Services
from webui.services.job_store import JobRecord
from webui.ui.generation_form import error_html
from webui.ui.img2img import Img2ImgTab
from webui.ui.txt2img import Txt2ImgTab

PAGE = 24  # jobs per page; "Load more" adds another page
REOPENABLE = {"txt2img": "txt2img", "img2img": "img2img", "img2img-batch": "img2img"}  # job kind -> tab id
TABLE_HEADERS = ["Time", "Kind", "Status", "Prompt", "Settings"]


@dataclass
class HistoryTargets:
    """Where Reopen writes: the generation tabs, the checkpoint dropdown, and the tab switcher."""

    txt2img: Txt2ImgTab
    img2img: Img2ImgTab
    checkpoint: gr.Dropdown
    tabs: gr.Tabs


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else ""


def settings_summary(record: JobRecord) -> str:
    r = record.request
    if "steps" in r:
        seeds = (record.result or {}).get("seeds") or []
        seed = seeds[0] if seeds else r.get("seed")
        parts = [f"{r.get('steps')} steps", str(r.get("sampler_name", "")), f"CFG {r.get('cfg_scale')}",
                 f"{r.get('width')}x{r.get('height')}", f"seed {seed}"]
        if "denoising_strength" in r:
            parts.append(f"denoise {r['denoising_strength']}")
        return " · ".join(parts)
    if "model" in r:
        return f"model {r['model']}"
    return ""


def _placeholder(status: str) -> Image.Image:
    """What stands in for a job that left no image (failed, interrupted, cancelled)."""
    image = Image.new("RGB", (128, 128), (226, 228, 233))
    ImageDraw.Draw(image).text((10, 56), status, fill=(90, 90, 90))
    return image


def _thumbnail(record: JobRecord) -> Image.Image:
    if record.thumbnail:
        try:
            return Image.open(io.BytesIO(record.thumbnail)).convert("RGB")
        except OSError:
            pass  # a damaged thumbnail costs the picture, not the listing
    return _placeholder(record.status)


def _short(text: str, size: int = 80) -> str:
    return text if len(text) <= size else text[:size - 1] + "…"


def listing(services: Services, limit: int) -> tuple[list, list[list[str]], list[str], str]:
    """(gallery items, table rows, job ids in order, count line) for the newest ``limit`` jobs."""
    records = services.jobs_store.list(limit=limit)
    gallery = [(_thumbnail(r), f"{r.status} · {_when(r.created_at)} · {_short(r.prompt, 40)}") for r in records]
    rows = [[_when(r.created_at), r.kind, r.status, _short(r.prompt), settings_summary(r)] for r in records]
    if not services.jobs_store.available:
        count = "⚠ The job history is unavailable (see the server log); jobs still run."
    elif not records:
        count = "No jobs yet: what you generate appears here, and stays after a restart."
    else:
        count = f"{len(records)} most recent job(s)."
    return gallery, rows, [r.id for r in records], count


def details_html(record: JobRecord) -> str:
    rows: list[tuple[str, str]] = [("Job", f"{record.id} ({record.kind})"), ("Status", record.status),
                                   ("Created", _when(record.created_at)), ("Started", _when(record.started_at)),
                                   ("Finished", _when(record.finished_at)), ("Device", record.device or "")]
    rows += [(name, str(value)) for name, value in record.request.items() if value not in (None, "")]
    result = record.result or {}
    if result.get("model"):
        rows.append(("Model used", str(result["model"])))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows if v)
    parts = [f"<table class='studio-params' id='history_params'>{body}</table>"]
    if record.error:
        parts.append(error_html(record.error))
    for text in result.get("infotexts") or []:
        parts.append(f"<pre class='studio-infotext' style='white-space: pre-wrap'>{html.escape(text)}</pre>")
    for warning in result.get("warnings") or []:
        parts.append(f"<div class='studio-warning'>⚠ {html.escape(warning)}</div>")
    files = [*result.get("paths", []), *record.input_images]
    if files:
        items = "".join(f"<li><code>{html.escape(path)}</code></li>" for path in files)
        parts.append(f"<p>Files:</p><ul id='history_files'>{items}</ul>")
    return "".join(parts)


def _open_input(path: str) -> Image.Image | None:
    try:
        with Image.open(path) as image:
            return image.copy()  # Gradio caches the copy; the history keeps its own file
    except OSError:
        return None


def _checkpoint_title(services: Services, record: JobRecord) -> str | None:
    """The checkpoint the job ran on, as the dropdown lists it; None when it is no longer there."""
    result = record.result or {}
    for query in (result.get("model_hash"), record.request.get("checkpoint"), result.get("model")):
        if query:
            try:
                return services.registry.find(str(query)).title
            except ModelNotFound:
                continue
    return None


def build(services: Services, demo: gr.Blocks, tab: gr.Tab, targets: HistoryTargets) -> None:
    limit = gr.State(PAGE)
    job_ids = gr.State([])
    selected = gr.State(None)
    with gr.Row(equal_height=True):
        refresh = gr.Button("Refresh", scale=0, min_width=100, elem_id="history_refresh")
        more = gr.Button("Load more", scale=0, min_width=100, elem_id="history_more")
        count = gr.Markdown(elem_id="history_count")
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Past jobs, newest first (click one)", columns=6, height=300,
                                 object_fit="contain", allow_preview=False, interactive=False, format="png", elem_id="history_gallery")
            table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, elem_id="history_table")
        with gr.Column(scale=2):
            reopen = gr.Button("Reopen in its tab", variant="primary", interactive=False, elem_id="history_reopen")
            with gr.Row():  # for a job still queued or running: long ones (batch folders) pause at a safe point
                pause = gr.Button("Pause", size="sm", elem_id="history_pause")
                resume = gr.Button("Resume", size="sm", elem_id="history_resume")
                cancel = gr.Button("Cancel", size="sm", elem_id="history_cancel")
            control = gr.HTML(elem_id="history_control")
            details = gr.HTML("<p class='studio-muted'>Select a job to see its details.</p>",
                              elem_id="history_details")

    def show(page: int):
        items, rows, ids, line = listing(services, page)
        return items, rows, ids, line

    def first_page():
        return (PAGE, *show(PAGE))

    def next_page(page: int):
        page += PAGE
        return (page, *show(page))

    listed = [gallery, table, job_ids, count]
    demo.load(first_page, None, [limit, *listed], api_visibility="private")
    tab.select(first_page, None, [limit, *listed], api_visibility="private")
    refresh.click(first_page, None, [limit, *listed], api_visibility="private")
    more.click(next_page, limit, [limit, *listed], api_visibility="private")

    def pick(index: int | None, ids: list[str]):
        if index is None or not 0 <= index < len(ids):
            return None, gr.update(), gr.update(interactive=False)
        record = services.jobs_store.get(ids[index])
        if record is None:
            return None, error_html("This job is no longer in the history; press Refresh."), \
                gr.update(interactive=False)
        return record.id, details_html(record), gr.update(interactive=record.kind in REOPENABLE)

    def pick_image(ids: list[str], evt: gr.SelectData):
        return pick(evt.index if isinstance(evt.index, int) else None, ids)

    def pick_row(ids: list[str], evt: gr.SelectData):
        index = evt.index[0] if isinstance(evt.index, (list, tuple)) and evt.index else None
        return pick(index, ids)

    gallery.select(pick_image, job_ids, [selected, details, reopen], api_visibility="private")
    table.select(pick_row, job_ids, [selected, details, reopen], api_visibility="private")

    t2i_fields = targets.txt2img.fields()
    i2i_fields = targets.img2img.fields()
    i2i = targets.img2img
    outputs = [*t2i_fields.values(), *i2i_fields.values(), i2i.image, i2i.mode, i2i.inpaint.editor,
               i2i.inpaint.mask_upload, targets.checkpoint, targets.tabs, details]

    def reopen_job(job_id: str | None):
        unchanged = [gr.update()] * len(outputs)
        record = services.jobs_store.get(job_id) if job_id else None
        if record is None or record.kind not in REOPENABLE:
            unchanged[-1] = error_html("Select a txt2img or img2img job to reopen.")
            return unchanged
        values = dict(record.request)
        seeds = (record.result or {}).get("seeds") or []
        if values.get("seed") == -1 and seeds:
            values["seed"] = seeds[0]  # the seed that was used, so Generate makes the same image again
        target = REOPENABLE[record.kind]
        updates: list[Any] = []
        if target == "txt2img":
            updates += _field_updates(values, t2i_fields)
            updates += [gr.update()] * (len(i2i_fields) + 4)
        else:
            updates += [gr.update()] * len(t2i_fields)
            updates += _field_updates(values, i2i_fields)
            updates += _img2img_inputs(record)
        note = details_html(record)
        title = _checkpoint_title(services, record)
        if title is None:
            note = error_html("The checkpoint this job used is no longer in the models folder; the current one "
                              "stays selected.") + note
        updates += [gr.update(value=title) if title else gr.update(), gr.Tabs(selected=target), note]
        return updates

    reopen.click(reopen_job, selected, outputs, api_visibility="private")

    def control_job(action: str, job_id: str | None) -> str:
        if not job_id:
            return error_html("Select a job first.")
        if services.queue.get(job_id) is None:
            return error_html("This job is not queued or running in this server any more.")
        try:
            if action == "pause":
                job = services.queue.pause(job_id)
            elif action == "resume":
                job = services.queue.resume(job_id)
            else:
                job = services.queue.get(job_id)
                job.interrupt()
        except StudioError as exc:
            return error_html(str(exc))
        state = job.progress.state.value
        text = {"pause": "pauses at its next safe point" if state == "running" else f"is {state}",
                "resume": "resumes", "cancel": f"is {state}" if job.finished else "stops at its next step"}[action]
        return f"<p id='history_control_text'>Job {html.escape(job_id)} {text}.</p>"

    for button, action in ((pause, "pause"), (resume, "resume"), (cancel, "cancel")):
        button.click(lambda job_id, action=action: control_job(action, job_id), selected, control,
                     api_visibility="private").then(first_page, None, [limit, *listed], api_visibility="private")


def _field_updates(values: dict[str, Any], widgets: dict) -> list[Any]:
    """One update per widget: the request's value as the widget shows it (the parameter table knows how)."""
    return [gr.update(value=BY_NAME[name].widget.to_ui(values[name])) if name in values else gr.update()
            for name in widgets]


def _img2img_inputs(record: JobRecord) -> list[Any]:
    """Updates for (image, mode, inpaint editor, mask upload) from the job's saved inputs."""
    saved = {Path(path).name: path for path in record.input_images}
    init = _open_input(saved["init_images-0.png"]) if "init_images-0.png" in saved else None
    mask = _open_input(saved["mask.png"]) if "mask.png" in saved else None
    if init is not None and mask is not None:
        editor = {"background": init, "layers": [], "composite": init}
        return [gr.update(), gr.update(value="Inpaint"), gr.update(value=editor), gr.update(value=mask)]
    if init is not None:
        return [gr.update(value=init), gr.update(value="img2img"), gr.update(), gr.update()]
    return [gr.update(), gr.update(value="img2img"), gr.update(), gr.update()]
