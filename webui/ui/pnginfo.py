"""The PNG Info tab: read generation parameters from any image (A1111's included), send them to txt2img or img2img."""

from __future__ import annotations

import html

import gradio as gr

from webui.config import Limits
from webui.errors import InvalidRequest
from webui.image_io import open_image
from webui.infotext import parse_infotext, read_png_infotext, to_generation_fields
from webui.parameters import BY_NAME
from webui.ui.generation_form import Widgets, error_html
from webui.ui.image_inputs import ImageSource, UploadedImage


def parameters_table(text: str | None) -> str:
    if not text:
        return "<p class='studio-muted'>This image carries no generation parameters.</p>"
    parsed = parse_infotext(text)
    rows = [("Prompt", parsed.prompt), ("Negative prompt", parsed.negative_prompt), *parsed.params.items()]
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows if v)
    return f"<table class='studio-params' id='pnginfo_table'>{body}</table>"


def read_parameters(upload: ImageSource | None, limits: Limits) -> tuple[str, str]:
    """The PNG Info handler: (raw infotext, HTML table), or ("", a red error) for a refused file."""
    if not upload:
        return "", ""
    try:
        image = open_image(upload, "image", max_pixels=limits.max_image_pixels, formats=limits.image_formats,
                           keep_metadata=True)
    except InvalidRequest as exc:
        return "", error_html(str(exc))
    text = read_png_infotext(image)
    return text or "", parameters_table(text)


def field_updates(text: str, widgets: Widgets) -> list:
    """One update per widget: the value the infotext gives its request field (shown as the widget shows it),
    or no change where the text has none."""
    values = to_generation_fields(parse_infotext(text)) if text else {}
    return [gr.update(value=BY_NAME[name].widget.to_ui(values[name])) if name in values else gr.update()
            for name in widgets]


def build(targets: dict[str, tuple[str, Widgets]], tabs: gr.Tabs, limits: Limits) -> None:
    """``targets``: tab id -> (its label, its widgets by request field name), one "Send to" button each."""
    with gr.Row():
        with gr.Column():
            # The upload's own file, text chunks included; opened only through webui.image_io.
            image = UploadedImage(label="Source image", type="filepath", image_mode=None,
                                  sources=["upload", "clipboard"], elem_id="pnginfo_image")
        with gr.Column():
            raw = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id="pnginfo_text")
            table = gr.HTML()
            with gr.Row():
                buttons = {tab_id: gr.Button(f"Send to {label}", elem_id=f"pnginfo_send_{tab_id}")
                           for tab_id, (label, _) in targets.items()}

    def read(upload: ImageSource | None) -> tuple[str, str]:
        return read_parameters(upload, limits)

    image.change(read, image, [raw, table], api_name="png_info", api_visibility="private")

    for tab_id, (_, widgets) in targets.items():
        def send(text: str, tab_id: str = tab_id, widgets: Widgets = widgets) -> list:
            if not text:
                return [gr.update()] * (len(widgets) + 1)
            return field_updates(text, widgets) + [gr.Tabs(selected=tab_id)]

        buttons[tab_id].click(send, raw, list(widgets.values()) + [tabs], api_visibility="private")
