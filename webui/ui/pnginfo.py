"""The PNG Info tab: read generation parameters from any image (A1111's included) and send them to txt2img."""

from __future__ import annotations

import html

import gradio as gr

from webui.config import Limits
from webui.errors import InvalidRequest
from webui.image_io import open_image
from webui.infotext import parse_infotext, read_png_infotext, to_generation_fields
from webui.ui.generation_form import error_html
from webui.ui.image_inputs import ImageSource, UploadedImage
from webui.ui.txt2img import Txt2ImgTab


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


def build(txt2img: Txt2ImgTab, tabs: gr.Tabs, txt2img_tab_id: str, limits: Limits) -> None:
    with gr.Row():
        with gr.Column():
            # The upload's own file, text chunks included; opened only through webui.image_io.
            image = UploadedImage(label="Source image", type="filepath", image_mode=None,
                                  sources=["upload", "clipboard"], elem_id="pnginfo_image")
        with gr.Column():
            raw = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id="pnginfo_text")
            table = gr.HTML()
            send = gr.Button("Send to txt2img", elem_id="pnginfo_send_txt2img")

    def read(upload: ImageSource | None) -> tuple[str, str]:
        return read_parameters(upload, limits)

    image.change(read, image, [raw, table], api_name="png_info")

    fields = txt2img.fields()
    targets = [fields[name] for name in ("prompt", "negative_prompt", "sampler_name", "scheduler", "steps",
                                         "cfg_scale", "seed", "width", "height", "clip_skip")]

    def send_to_txt2img(text: str):
        if not text:
            return [gr.update()] * len(targets) + [gr.update()]
        values = to_generation_fields(parse_infotext(text))
        updates = [gr.update(value=values[name]) if name in values else gr.update()
                   for name in ("prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "cfg_scale",
                                "seed", "width", "height", "clip_skip")]
        return updates + [gr.Tabs(selected=txt2img_tab_id)]

    send.click(send_to_txt2img, raw, targets + [tabs], api_visibility="private")
