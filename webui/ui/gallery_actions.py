"""The row under every result gallery: the selected image's own infotext and saved path, "Send to" buttons,
Save, Zip and Open folder (A1111's output panel).

The job's images (bytes, infotexts, saved paths) stay on the server in a per-session ``gr.State``; the buttons
send only which image is selected, so a client cannot name a file. A "Send to" target is one
:class:`SendTarget` passed to :func:`add_send_target` (the Extras tab adds one).
"""

from __future__ import annotations

import dataclasses
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
from PIL import Image

from webui.errors import StudioError
from webui.services.container import Services
from webui.services.gallery_files import GalleryFiles, GalleryImage, open_folder
from webui.services.style import StyleTransferResult
from webui.types import GenerationResult

Widgets = dict[str, gr.components.Component]


@dataclass
class GalleryActions:
    results: gr.State   # list[GalleryImage]: the last job's images in this browser session
    selected: gr.State  # the selected image's index; None until one is clicked
    saved: gr.HTML      # where the selected image was saved
    send_row: gr.Row    # "Send to" buttons go here
    save: gr.Button
    zip: gr.Button
    open_folder: gr.Button | None  # None when the server is exposed beyond this machine
    download: gr.File
    message: gr.HTML


@dataclass
class SendTarget:
    """Where a "Send to" button puts the selected image: ``image`` gets it, ``values`` are set as given (a mode),
    ``fields`` (request field name -> widget) get what the image's infotext records, and the tab opens."""

    name: str            # elem_id suffix: {prefix}_send_{name}
    label: str
    tab_id: str
    image: gr.components.Component
    values: dict[gr.components.Component, Any] = field(default_factory=dict)
    fields: Widgets = field(default_factory=dict)


def as_generation(result: GenerationResult | StyleTransferResult) -> GenerationResult:
    """A job's result as a gallery shows it (a style transfer is one image without a seed)."""
    if isinstance(result, StyleTransferResult):
        return GenerationResult(images=[result.image], seeds=[], infotexts=[result.infotext],
                                paths=[result.path] if result.path else [], pngs=[result.png],
                                warnings=list(result.warnings))
    return result


def gallery_images(result: GenerationResult) -> list[GalleryImage]:
    """The images of a result with their own infotext, final bytes and saved file (when each image has one)."""
    # A job that could not save every image (a full disk) leaves paths that no longer match: show none.
    paths: list[Path | None] = (list(result.paths) if len(result.paths) == len(result.images)
                                else [None] * len(result.images))
    infotexts = list(result.infotexts) + [""] * (len(result.images) - len(result.infotexts))
    images = [GalleryImage(png=png if path is None else None, infotext=text, path=path)
              for png, text, path in zip(result.pngs, infotexts, paths)]
    if result.images_start_with_grid and images:  # a script's grid: not one of the batch's own images
        images[0] = dataclasses.replace(images[0], grid=True)
    if result.grid is None:
        return images
    # The gallery shows A1111's grid first (return_grid): keep the indices of the selection aligned with it.
    grid_png = None
    if result.grid_path is None:
        buffer = io.BytesIO()
        result.grid.save(buffer, format="PNG")
        grid_png = buffer.getvalue()
    return [GalleryImage(png=grid_png, infotext=infotexts[0] if infotexts else "", path=result.grid_path, grid=True),
            *images]


def _relative(path: Path, root: Path) -> Path:
    return path.relative_to(root) if path.is_relative_to(root) else path


def _chosen(images: list[GalleryImage] | None, index: int | None) -> GalleryImage | None:
    if not images:
        return None
    return images[index] if index is not None and 0 <= index < len(images) else images[0]


def _batch(images: list[GalleryImage] | None) -> list[GalleryImage]:
    """The job's own images, without the grid shown before them."""
    return [image for image in images or [] if not image.grid]


def saved_html(images: list[GalleryImage] | None, index: int | None, data_dir: Path) -> str:
    """One line: the folder and file name of the selected image (relative to the data dir), or of them all while
    none is selected, or that it was not saved."""
    if index is None:  # none selected: the batch's own images (the grid, if shown, is not one of them)
        images = _batch(images)
    chosen = [_chosen(images, index)] if index is not None or len(images or []) == 1 else list(images or [])
    chosen = [image for image in chosen if image is not None]
    if not chosen:
        return ""
    paths = [image.path for image in chosen]
    if None in paths:
        what = "This image was" if len(chosen) == 1 else "Some of these images were"
        return (f"<div class='studio-muted' role='status'>{what} not saved to the outputs folder (saving is off, or "
                "it failed: see the warning above). Use Save to keep it.</div>")
    shown = [_relative(path, data_dir) for path in paths if path is not None]
    folders = {str(path.parent) for path in shown}
    folder = html.escape(shown[0].parent.as_posix() if len(folders) == 1 else "several folders")
    names = shown[0].name if len(shown) == 1 else f"{shown[0].name} … {shown[-1].name} ({len(shown)} images)"
    return (f"<div class='studio-muted' role='status'>Saved to <code>{folder}/</code><b>{html.escape(names)}</b>"
            "</div>")


def build(prefix: str, exposed: bool) -> GalleryActions:
    """The row under a gallery; call inside the column that holds it."""
    results = gr.State([])
    selected = gr.State(None)
    saved = gr.HTML(elem_id=f"{prefix}_saved")
    send_row = gr.Row(elem_id=f"{prefix}_send_row")  # filled by add_send_target once the target tabs exist
    with gr.Row(elem_id=f"{prefix}_gallery_actions"):
        save = gr.Button("Save", size="sm", min_width=60, elem_id=f"{prefix}_save")
        zip_button = gr.Button("Zip", size="sm", min_width=60, elem_id=f"{prefix}_zip")
        # Opening a window on the server is only for the person sitting at it.
        folder = None if exposed else gr.Button("Open folder", size="sm", min_width=80,
                                                elem_id=f"{prefix}_open_folder")
    message = gr.HTML(elem_id=f"{prefix}_gallery_message")
    download = gr.File(label="Download", file_count="multiple", interactive=False, visible=False,
                       elem_id=f"{prefix}_download")
    return GalleryActions(results, selected, saved, send_row, save, zip_button, folder, download, message)


def _error(exc: Exception) -> str:
    return f"<div class='studio-error' role='alert'>⚠ {html.escape(str(exc))}</div>"


def wire(actions: GalleryActions, gallery: gr.Gallery, info: gr.Textbox, services: Services,
         files: GalleryFiles, folder: Callable[[], Path]) -> None:
    """Selecting an image shows its own infotext and saved path; Save, Zip and Open folder act on the result.
    ``folder()`` is what Open folder opens (the tab's outputs folder for today)."""
    data_dir = services.settings.data_dir

    def select(images: list[GalleryImage], evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        image = _chosen(images, index)
        return (gr.update(value=image.infotext) if image else gr.update()), saved_html(images, index, data_dir), index

    gallery.select(select, actions.results, [info, actions.saved, actions.selected], api_visibility="private")

    def save(images: list[GalleryImage], index: int | None):
        # A1111: the selected image, or every image while none is selected (the grid only when selected).
        chosen = [_chosen(images, index)] if index is not None else _batch(images)
        try:
            paths = files.save([image for image in chosen if image is not None])
        except (StudioError, OSError) as exc:
            return gr.update(), _error(exc)
        names = ", ".join(p.name for p in paths)
        where = _relative(files.save_dir, data_dir)
        return (gr.update(value=[str(p) for p in paths], visible=True),
                f"<div class='studio-muted' role='status'>Saved {html.escape(names)} to "
                f"<code>{html.escape(str(where))}</code></div>")

    def zip_all(images: list[GalleryImage]):
        try:
            path = files.zip(_batch(images))
        except (StudioError, OSError) as exc:
            return gr.update(), _error(exc)
        return gr.update(value=[str(path)], visible=True), ""

    outputs = [actions.download, actions.message]
    actions.save.click(save, [actions.results, actions.selected], outputs, api_visibility="private")
    actions.zip.click(zip_all, actions.results, outputs, api_visibility="private")
    if actions.open_folder is not None:
        actions.open_folder.click(lambda: f"<div class='studio-muted'>{html.escape(open_folder(folder()))}</div>",
                                  None, actions.message, api_visibility="private")


def add_send_target(actions: GalleryActions, target: SendTarget, tabs: gr.Tabs, prefix: str,
                    fill_fields: Callable[[str, Widgets], list]) -> None:
    """A "Send to <label>" button in the row: the selected image to ``target.image``, its infotext's settings to
    ``target.fields`` (``fill_fields(text, widgets)``: one update per widget), and the target's tab opened."""
    with actions.send_row:
        button = gr.Button(f"Send to {target.label}", size="sm", min_width=80,
                           elem_id=f"{prefix}_send_{target.name}")
    extra = list(target.values)
    fields = list(target.fields.values())

    def send_to_target(images: list[GalleryImage], index: int | None) -> list:
        image = _chosen(images, index)
        if image is None:
            return [gr.update()] * (len(extra) + len(fields) + 1)
        field_updates = fill_fields(image.infotext, target.fields) if fields else []
        return ([gr.update(value=target.values[c]) for c in extra] + field_updates
                + [gr.Tabs(selected=target.tab_id)])

    def send_image(images: list[GalleryImage], index: int | None) -> Any:
        image = _chosen(images, index)
        if image is None:
            return gr.update()
        return gr.update(value=str(image.path) if image.path is not None else _pil(image.data()))

    # The image goes in a second step, once the mode has shown its widget: an image editor given a value while
    # hidden can come up empty.
    button.click(send_to_target, [actions.results, actions.selected], [*extra, *fields, tabs],
                 api_visibility="private").then(
        send_image, [actions.results, actions.selected], target.image, api_visibility="private")


def _pil(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png))


def with_results(stream: Iterator[tuple[Any, ...]], job: Callable[[], Any], data_dir: Path
                 ) -> Iterator[tuple[Any, ...]]:
    """``stream_job``'s updates plus (results, selected, saved, download): cleared when the job starts, filled with every
    image of the finished job (none selected: the info box shows the first's infotext, as before)."""
    width = 0
    for update in stream:
        # A new job: the last one's images, selection, saved line and offered downloads go.
        yield (*update, *(([], None, "", gr.update(value=None, visible=False)) if not width else (gr.update(),) * 4))
        width = len(update)
    current = job()
    if current is None or not current.finished:
        return
    try:
        result = as_generation(current.wait())
    except StudioError:
        return  # the error is already shown
    images = gallery_images(result)
    yield (*(gr.update(),) * width, images, None, saved_html(images, None, data_dir), gr.update())


def wire_galleries(services: Services, galleries: dict[str, Any], targets: list[SendTarget], tabs: gr.Tabs,
                   fill_fields: Callable[[str, Widgets], list]) -> None:
    """Every result gallery (``galleries``: tab prefix -> its ``Outputs``) gets selection, Save, Zip, Open folder
    and one "Send to" button per target."""
    files = GalleryFiles(services.settings.outputs_dir)
    for prefix, outputs in galleries.items():
        actions = outputs.actions
        wire(actions, outputs.gallery, outputs.info, services, files,
             lambda prefix=prefix: services.settings.outputs_dir / f"{prefix}-images")
        for target in targets:
            add_send_target(actions, target, tabs, prefix, fill_fields)
