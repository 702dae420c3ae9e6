"""The Extras tab, as A1111's: upscale a single image, a batch of uploads, or a server folder.

Scale by a factor or to a size (with crop), upscaler 1, upscaler 2 blended at a visibility; face restoration
sliders appear when restorer files are installed (and say why they cannot run: see webui/models/face_restorers.py).
Thin: the widgets become one ``ExtrasRequest`` for ``services.upscaling``; results are saved in
``outputs/extras-images/`` and shown with their infotext and where they were saved.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr

from webui.errors import InvalidRequest, StudioError
from webui.image_io import open_image
from webui.services.container import Services
from webui.services.upscaling import ExtrasRequest, ExtrasResult
from webui.types import UPSCALE_MAX_SCALE, UPSCALE_MAX_SIDE, Progress, UpscaleRequest
from webui.ui.generation_form import error_html, warnings_html
from webui.ui.image_inputs import UploadedImage
from webui.ui.job_watch import progress_until_done

SINGLE, BATCH, FOLDER = "Single Image", "Batch Process", "Batch from Directory"


@dataclass
class ExtrasTab:
    image: UploadedImage  # the single image input: what "Send to Extras" fills
    gallery: gr.Gallery
    info: gr.HTML
    upscaler_1: gr.Dropdown
    upscaler_2: gr.Dropdown


def image_input(tab: ExtrasTab) -> UploadedImage:
    """The component a "Send to Extras" button fills (a file path or image value, as gr.Image takes)."""
    return tab.image


def build(services: Services) -> ExtrasTab:
    upscaling = services.upscaling
    assert upscaling is not None, "the container builds the upscaling service"
    limits = services.settings.limits
    open_upload = partial(open_image, max_pixels=limits.max_image_pixels, formats=limits.image_formats)
    names = upscaling.names()
    has_restorers = bool(upscaling.face_restorers.list())

    with gr.Row():
        with gr.Column():
            source_mode = gr.State(SINGLE)
            with gr.Tabs(elem_id="extras_source"):
                with gr.Tab(SINGLE, elem_id="extras_single_tab") as single_tab:
                    image = UploadedImage(type="filepath", label="Source", sources=["upload", "clipboard"],
                                          image_mode=None, elem_id="extras_image", format="png", height=320)
                with gr.Tab(BATCH, elem_id="extras_batch_tab") as batch_tab:
                    files = gr.File(label="Images", file_count="multiple", file_types=["image"],
                                    elem_id="extras_batch_files")
                with gr.Tab(FOLDER, elem_id="extras_folder_tab",
                            visible=upscaling.folders_enabled) as folder_tab:
                    input_dir = gr.Textbox(label="Input folder on the server (inside the data dir, or "
                                                 "--batch-dirs)", elem_id="extras_batch_input_dir")
                    output_dir = gr.Textbox(label="Output folder (empty: outputs/extras-images; files already "
                                                  "there are kept)", elem_id="extras_batch_output_dir")
            with gr.Tabs(elem_id="extras_resize_mode"):
                with gr.Tab("Scale by", elem_id="extras_scale_by_tab") as scale_by_tab:
                    scale = gr.Slider(1, UPSCALE_MAX_SCALE, value=2, step=0.05, label="Resize",
                                      elem_id="extras_upscaling_resize")
                with gr.Tab("Scale to", elem_id="extras_scale_to_tab") as scale_to_tab:
                    with gr.Row():
                        width = gr.Number(512, label="Width", precision=0, minimum=1, maximum=UPSCALE_MAX_SIDE,
                                          elem_id="extras_upscaling_resize_w")
                        height = gr.Number(512, label="Height", precision=0, minimum=1, maximum=UPSCALE_MAX_SIDE,
                                           elem_id="extras_upscaling_resize_h")
                        crop = gr.Checkbox(True, label="Crop to fit", elem_id="extras_upscaling_crop")
            resize_mode = gr.State(0)
            with gr.Row(equal_height=True):
                upscaler_1 = gr.Dropdown(names, value="None", label="Upscaler 1", elem_id="extras_upscaler_1",
                                         scale=3)
                refresh = gr.Button("Refresh", scale=0, min_width=80, elem_id="extras_refresh_upscalers")
            with gr.Row():
                upscaler_2 = gr.Dropdown(names, value="None", label="Upscaler 2", elem_id="extras_upscaler_2")
                visibility = gr.Slider(0, 1, value=0, step=0.001, label="Upscaler 2 visibility",
                                       elem_id="extras_upscaler_2_visibility")
            with gr.Group(visible=has_restorers):
                gfpgan = gr.Slider(0, 1, value=0, step=0.001, label="GFPGAN visibility",
                                   elem_id="extras_gfpgan_visibility")
                with gr.Row():
                    codeformer = gr.Slider(0, 1, value=0, step=0.001, label="CodeFormer visibility",
                                           elem_id="extras_codeformer_visibility")
                    codeformer_weight = gr.Slider(0, 1, value=0, step=0.001,
                                                  label="CodeFormer weight (0 = maximum effect, 1 = minimum effect)",
                                                  elem_id="extras_codeformer_weight")
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="extras_generate", scale=3)
                interrupt = gr.Button("Interrupt", elem_id="extras_interrupt", scale=1)
        with gr.Column():
            gallery = gr.Gallery(label="Result", format="png", elem_id="extras_gallery", height=420,
                                 interactive=False)
            info = gr.HTML(elem_id="extras_info")

    for tab, mode in ((single_tab, SINGLE), (batch_tab, BATCH), (folder_tab, FOLDER)):
        tab.select(lambda m=mode: m, None, source_mode, api_visibility="private")
    scale_by_tab.select(lambda: 0, None, resize_mode, api_visibility="private")
    scale_to_tab.select(lambda: 1, None, resize_mode, api_visibility="private")

    def generate(mode: str, single: Any, uploads: list | None, in_dir: str, out_dir: str, resize: int,
                 factor: float, w: float | None, h: float | None, crop_box: bool, up1: str, up2: str, vis: float,
                 gfpgan_vis: float, codeformer_vis: float, codeformer_w: float):
        try:
            spec = UpscaleRequest(to_size=resize == 1, scale=factor, width=int(w or 0), height=int(h or 0),
                                  crop=crop_box, upscaler_1=up1 or "None", upscaler_2=up2 or "None",
                                  upscaler_2_visibility=vis)
            common: dict[str, Any] = dict(spec=spec, gfpgan_visibility=gfpgan_vis,
                                          codeformer_visibility=codeformer_vis, codeformer_weight=codeformer_w)
            if mode == FOLDER:
                request = ExtrasRequest(images=(), input_dir=in_dir or "", output_dir=out_dir or None, **common)
            elif mode == BATCH:
                if not uploads:
                    raise InvalidRequest("images", "upload one or more images first")
                paths = [getattr(f, "name", f) for f in uploads]
                images = tuple(open_upload(p, f"image {i + 1}") for i, p in enumerate(paths))
                request = ExtrasRequest(images=images, names=tuple(_base_name(p) for p in paths), **common)
            else:
                if single is None:
                    raise InvalidRequest("image", "upload an image first")
                request = ExtrasRequest(images=(open_upload(single, "image"),), **common)
            job = upscaling.submit(request)
        except StudioError as exc:
            yield gr.update(), error_html(str(exc))
            return
        for progress in progress_until_done(job):  # where the job is: queued, image i of n, tile j of m
            yield gr.update(), _progress_html(progress, services.queue.position(job))
        try:
            result = job.wait()
        except StudioError as exc:
            yield gr.update(), error_html(str(exc))
            return
        items = [(str(path), None) if path else image for image, path in zip(result.images, result.paths)]
        yield items, _info_html(result)

    run.click(generate, [source_mode, image, files, input_dir, output_dir, resize_mode, scale, width, height, crop,
                         upscaler_1, upscaler_2, visibility, gfpgan, codeformer, codeformer_weight],
              [gallery, info], api_visibility="private")

    def stop() -> None:
        for job in services.queue.running():
            if job.kind == "extras":
                job.interrupt()

    interrupt.click(stop, None, None, api_visibility="private")

    def refresh_lists(first: str | None, second: str | None):
        choices = upscaling.refresh()
        return (gr.update(choices=choices, value=first if first in choices else "None"),
                gr.update(choices=choices, value=second if second in choices else "None"))

    refresh.click(refresh_lists, [upscaler_1, upscaler_2], [upscaler_1, upscaler_2], api_visibility="private")
    return ExtrasTab(image, gallery, info, upscaler_1, upscaler_2)


def _base_name(path: Any) -> str:
    return str(path).replace("\\", "/").rsplit("/", 1)[-1]


def _progress_html(progress: Progress, position: int | None) -> str:
    if position:
        return f"<div class='studio-progress'>Queued (position {position})…</div>"
    text = html.escape(progress.textinfo or "Starting…")
    tiles = f" · tile {progress.step} of {progress.steps}" if progress.steps else ""
    return f"<div class='studio-progress'>{text}{tiles}</div>"


def _info_html(result: ExtrasResult) -> str:
    first = result.infotexts[0] if result.infotexts else ""
    saved = [p for p in result.paths if p is not None]
    where = ""
    if saved:
        folder = saved[0].parent
        where = (f"<div class='studio-muted'>Saved {len(saved)} image{'s' if len(saved) > 1 else ''} to "
                 f"<code>{html.escape(str(folder))}</code> ({html.escape(saved[0].name)}"
                 f"{' …' if len(saved) > 1 else ''})</div>")
    return (f"<div class='studio-params'><p>{html.escape(first)}</p></div>{where}"
            + warnings_html(list(result.warnings)))
