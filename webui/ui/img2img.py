"""The img2img tab: img2img, inpainting (drawn or uploaded mask), InstructPix2Pix, batch folders.

The checkpoint decides img2img vs InstructPix2Pix (8-channel models); the Inpaint mode adds a mask. Widgets are
collected into a typed ``Img2ImgRequest``; the service does the rest.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import gradio as gr
from PIL import Image, ImageChops

from webui.errors import InvalidRequest, StudioError
from webui.image_io import open_image
from webui.parameters import IMG2IMG, widget_rows
from webui.services.container import Services
from webui.services.jobs import Job
from webui.types import Img2ImgRequest, StyleTransferRequest
from webui.ui.gallery_actions import SendTarget
from webui.ui import extra_networks, prompt_tools, scripts_area, styles
from webui.ui.image_inputs import ImageSource, UploadedImage, UploadedImageEditor
from webui.ui.generation_form import (Outputs, PromptRow, Widgets, build_outputs, build_prompt_row,
                                      build_settings_and_reuse, build_widgets, error_html, option_fields,
                                      request_fields, warnings_html, wire, wire_reuse)

MODES = ("img2img", "Inpaint", "Batch", "Style transfer")

Opener = Callable[[ImageSource, str], Image.Image]


def image_opener(services: Services) -> Opener:
    """``open_image`` with this server's limits: every upload on this tab is opened through it."""
    limits = services.settings.limits
    return partial(open_image, max_pixels=limits.max_image_pixels, formats=limits.image_formats)


@dataclass
class InpaintForm:
    editor: UploadedImageEditor
    mask_upload: UploadedImage
    settings: Widgets  # mask blur, masked content, inpaint area, padding, mask mode (webui.parameters)


@dataclass
class StyleTransferForm:
    group: gr.Group
    model: gr.Dropdown
    source: UploadedImage  # the mode's own input (Generate in this mode reads it too)
    output: UploadedImage
    send: gr.Button


def build_style_transfer(services: Services) -> StyleTransferForm:
    """CycleGAN / pix2pix: one forward pass, no prompt; the result can go on to img2img for refinement."""
    def titles() -> list[str]:
        return [m.title for m in services.style.list_models()]

    with gr.Group(visible=False) as group:
        with gr.Row(equal_height=True):
            choices = titles()
            model = gr.Dropdown(choices, value=(choices or [None])[0], scale=4, elem_id="style_model",
                                label="Style model (models/CycleGAN, models/pix2pix)")
            refresh = gr.Button("Refresh", scale=0, min_width=80, elem_id="style_model_refresh")
        source = UploadedImage(type="filepath", label="Image", sources=["upload", "clipboard"], image_mode=None,
                               elem_id="style_image", format="png", height=320)
        run = gr.Button("Transfer style", variant="primary", elem_id="style_transfer")
        output = UploadedImage(type="filepath", label="Result", interactive=False, format="png",
                               elem_id="style_output", height=320)
        info = gr.HTML(elem_id="style_info")
        send = gr.Button("Send to img2img", elem_id="style_send_img2img")

    def transfer(model_title: str | None, upload: ImageSource | None):
        try:
            result = submit_style_transfer(services, model_title, upload).wait()
        except StudioError as exc:
            return gr.update(), error_html(str(exc))
        saved = f" Saved to {result.path.name}." if result.path else ""
        return result.image, (f"<div class='studio-progress'>{html.escape(result.model)}.{saved}</div>"
                              + warnings_html(list(result.warnings)))

    def refresh_models(current: str | None):
        services.style.refresh_models()
        choices = titles()
        return gr.update(choices=choices, value=current if current in choices else (choices or [None])[0])

    run.click(transfer, [model, source], [output, info], api_name="style_transfer", api_visibility="private")
    refresh.click(refresh_models, model, model, api_visibility="private")
    return StyleTransferForm(group, model, source, output, send)


def submit_style_transfer(services: Services, model_title: str | None, upload: ImageSource | None) -> Job:
    """Queue a style transfer of the mode's own upload (its "Transfer style" button and Generate both do)."""
    if not model_title:
        raise InvalidRequest("model", "no style model: put CycleGAN/pix2pix generators (.pth or "
                                      ".safetensors) in models/CycleGAN or models/pix2pix and press Refresh")
    if upload is None:
        raise InvalidRequest("image", "upload an image first")
    image = image_opener(services)(upload, "image").convert("RGB")
    return services.style.submit(StyleTransferRequest(model=model_title, image=image))


@dataclass
class Img2ImgTab:
    row: PromptRow
    settings: Widgets  # the sampling settings txt2img has too
    img2img_settings: Widgets  # resize mode, denoising strength, image CFG scale
    inpaint: InpaintForm
    outputs: Outputs
    image: UploadedImage  # the img2img mode's input, also the target of "send to img2img"
    mode: gr.Radio
    style: StyleTransferForm | None = None
    networks: extra_networks.ExtraNetworksPanel | None = None
    scripts: scripts_area.ScriptsArea | None = None  # the Script dropdown and the extensions' panels

    def fields(self) -> Widgets:
        """Widgets by request field name (PNG Info and History fill these)."""
        return {"prompt": self.row.prompt, "negative_prompt": self.row.negative_prompt, **self.settings,
                **self.img2img_settings, **self.inpaint.settings}


def mask_from_editor(value: dict | None, open_upload: Opener) -> Image.Image | None:
    """Union of the painted layers' alpha: what the user drew is what gets repainted."""
    if not value or not value.get("layers"):
        return None
    mask = None
    for layer in value["layers"]:
        if layer is not None:
            alpha = open_upload(layer, "mask").convert("RGBA").getchannel("A")
            mask = alpha if mask is None else ImageChops.lighter(mask, alpha)
    if mask is None or mask.getbbox() is None:
        return None
    return mask


def _inpaint_inputs(values: dict, form: InpaintForm, open_upload: Opener) -> dict[str, Any]:
    editor = values[form.editor] or {}
    if editor.get("background") is None:
        raise InvalidRequest("image", "upload an image to inpaint")
    background = open_upload(editor["background"], "image")
    uploaded_mask = values[form.mask_upload]
    # An uploaded mask reads as greyscale (alpha ignored), as the widget's image_mode="L" used to make it.
    mask = (open_upload(uploaded_mask, "mask").convert("L") if uploaded_mask is not None
            else mask_from_editor(editor, open_upload))
    if mask is None:
        raise InvalidRequest("mask", "paint over the area to change, or upload a mask")
    if mask.size != background.size:
        mask = mask.resize(background.size)  # an uploaded mask for the same picture at another resolution
    return dict(request_fields(values, form.settings), init_images=[background.convert("RGB")], mask=mask)


def build(services: Services, checkpoint: gr.Dropdown) -> Img2ImgTab:
    limits = services.settings.limits
    row = build_prompt_row("img2img", "make it winter", under_buttons=lambda: styles.build(services, "img2img"))
    networks = extra_networks.build(services, "img2img")
    with gr.Row():
        with gr.Column():
            # Batch names server folders: hidden when the server is exposed and the operator did not opt in.
            modes = [m for m in MODES if m != "Batch" or services.generation.batch_folders_enabled]
            mode = gr.Radio(modes, value="img2img", label="Mode", elem_id="img2img_mode")
            with gr.Group(visible=True) as img2img_group:
                image = UploadedImage(type="filepath", label="Image", sources=["upload", "clipboard"],
                                      image_mode=None, elem_id="img2img_image", format="png", height=360)
            with gr.Group(visible=False) as inpaint_group:
                editor = UploadedImageEditor(type="filepath", label="Image: paint over the area to change",
                                             elem_id="img2img_editor", sources=["upload", "clipboard"],
                                             brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                                             layers=False, format="png", image_mode="RGBA")
                mask_upload = UploadedImage(type="filepath", label="Or upload a mask (white = repaint)",
                                            image_mode=None, sources=["upload"], elem_id="img2img_mask",
                                            format="png", height=200)
                inpaint_settings = build_widgets(widget_rows(IMG2IMG, panel="inpaint"), "img2img", limits)
            with gr.Group(visible=False) as batch_group:
                input_dir = gr.Textbox(label="Input folder on the server (inside the data dir, or --batch-dirs)",
                                       elem_id="img2img_batch_input")
                output_dir = gr.Textbox(label="Output folder (empty = outputs/img2img-images; existing files are "
                                              "kept)", elem_id="img2img_batch_output")
            style = build_style_transfer(services)
            with gr.Group() as diffusion_group:
                img2img_settings = build_widgets(widget_rows(IMG2IMG), "img2img", limits)
                settings, reuse = build_settings_and_reuse(services, "img2img")
                area = scripts_area.build(services, IMG2IMG)
        with gr.Column():
            outputs = build_outputs("img2img", services.settings.exposed)
    inpaint = InpaintForm(editor, mask_upload, inpaint_settings)

    def show_mode(chosen: str):
        groups = [gr.update(visible=chosen == name) for name in MODES]
        return groups + [gr.update(visible=chosen != "Style transfer")]

    mode.change(show_mode, mode, [img2img_group, inpaint_group, batch_group, style.group, diffusion_group],
                api_visibility="private")

    def send_to_img2img(result: ImageSource | None):  # the style result's file in Gradio's cache
        if result is None:
            return gr.update(), gr.update()
        return gr.update(value=result), gr.update(value="img2img")

    style.send.click(send_to_img2img, style.output, [image, mode], api_visibility="private")

    open_upload = image_opener(services)

    def submit(values: dict, confirm=None):
        fields = dict(option_fields(services, IMG2IMG, {**settings, **img2img_settings, **inpaint_settings}),
                      **request_fields(values, settings), **request_fields(values, img2img_settings),
                      prompt=values[row.prompt], negative_prompt=values[row.negative_prompt],
                      checkpoint=values[checkpoint] or None)
        fields = styles.styled_fields(services, values[row.extra.dropdown], fields)
        chosen = values[mode]
        if chosen == "Batch":
            template = Img2ImgRequest.parse(**fields)  # each file in the folder becomes its init image
            return services.generation.submit_img2img_batch(template, values[input_dir] or "",
                                                            values[output_dir] or None)
        if chosen == "Style transfer":  # the mode's own model and upload; no prompt
            return submit_style_transfer(services, values[style.model], values[style.source])
        if chosen == "Inpaint":
            fields.update(_inpaint_inputs(values, inpaint, open_upload))
        else:
            if values[image] is None:
                raise InvalidRequest("image", "upload an image first")
            fields["init_images"] = [open_upload(values[image], "image").convert("RGB")]
        request = Img2ImgRequest.parse(**fields, extensions=area.extension_values(values))
        return area.submit(services, request, values,
                           lambda plain: services.generation.submit_img2img(plain, confirm))

    inputs = (set(settings.values()) | set(img2img_settings.values()) | set(inpaint_settings.values())
              | {row.prompt, row.negative_prompt, checkpoint, mode, image, input_dir, output_dir, inpaint.editor,
                 inpaint.mask_upload, style.model, style.source, row.extra.dropdown} | area.inputs())
    wire(services, row, outputs, inputs, submit, api_name="img2img")
    styles.wire(services, row.extra, row)
    prompt_tools.wire_token_counters(services, row, row.extra.dropdown, settings["steps"])
    wire_reuse(reuse, outputs.info, settings)
    return Img2ImgTab(row, settings, img2img_settings, inpaint, outputs, image, mode, style, networks, area)


def send_targets(tab: Img2ImgTab) -> list[SendTarget]:
    """The result galleries' "Send to img2img" and "Send to inpaint": the image, the mode, the infotext's
    settings."""
    fields = tab.fields()
    return [SendTarget("img2img", "img2img", "img2img", tab.image, {tab.mode: "img2img"}, fields),
            SendTarget("inpaint", "inpaint", "img2img", tab.inpaint.editor, {tab.mode: "Inpaint"}, fields)]
