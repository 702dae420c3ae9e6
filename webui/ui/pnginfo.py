"""The PNG Info tab: read generation parameters from any image (A1111's included), send them to txt2img or img2img."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator

import gradio as gr

from webui.config import Limits
from webui.errors import InvalidRequest, ModelNotFound
from webui.image_io import open_image
from webui.infotext import parse_infotext, read_png_infotext
from webui.infotext_paste import Paste, paste
from webui.parameters import BY_NAME
from webui.samplers import schedules_for
from webui.services.container import Services
from webui.services.job_loras import LoraRegistry, rename_pasted_loras
from webui.ui.generation_form import Widgets, error_html
from webui.ui.image_inputs import ImageSource, UploadedImage

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~])")


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


def field_updates(text: str, widgets: Widgets, services: Services | None = None,
                  loras: LoraRegistry | None = None) -> tuple[list, Paste, list[str]]:
    """One update per widget: the value the infotext gives its request field (shown as the widget shows it),
    or no change where the text has none; the scheduler's choices follow the sampler sent with it. With
    ``services``, saved styles found in the prompts are taken out of them and returned (A1111's default
    "infotext_styles: Apply if any"). With ``loras``, ``<lora:NAME:`` tags are renamed to the local file with the
    hash the text's ``Lora hashes`` gives (A1111's paste rule)."""
    pasted = paste(text, widgets) if text else Paste()
    values = dict(pasted.values)
    if loras is not None and "prompt" in values:
        values["prompt"] = rename_pasted_loras(values["prompt"], parse_infotext(text).params.get("Lora hashes"), loras)
    found: list[str] = []
    if services is not None and services.styles is not None and "prompt" in values:
        found, prompt, negative = services.styles.extract(values["prompt"], values.get("negative_prompt", ""))
        if found:
            values["prompt"] = prompt
            if "negative_prompt" in values:
                values["negative_prompt"] = negative
    updates = []
    for name in widgets:
        if name not in values:
            updates.append(gr.update())
        elif name == "scheduler" and "sampler_name" in values:
            updates.append(gr.update(choices=list(schedules_for(values["sampler_name"])), value=values[name]))
        else:
            updates.append(gr.update(value=BY_NAME[name].widget.to_ui(values[name])))
    return updates, pasted, found


def checkpoint_to_switch(services: Services, pasted: Paste) -> tuple[str | None, str]:
    """The checkpoint the image was made with, found by hash, then by name: (its title when it is not the one
    in use, else None; a one-line notice when it is not on disk)."""
    for query in (pasted.model_hash, pasted.model_name):
        if not query:
            continue
        try:
            title = services.registry.find(query).title
        except ModelNotFound:
            continue
        selected = services.manager.selected
        return (None if selected is not None and selected.title == title else title), ""
    if not (pasted.model_hash or pasted.model_name):
        return None, ""
    named = " ".join(filter(None, (pasted.model_name, f"[{pasted.model_hash}]" if pasted.model_hash else None)))
    return None, f"Checkpoint {named} is not on disk: the current one stays selected."


def notice_html(lines: list[str]) -> str:
    return "".join(f"<p class='studio-muted'>{html.escape(line)}</p>" for line in lines if line)


def notice_markdown(lines: list[str]) -> str:
    """The same lines for the checkpoint bar's status (Markdown): names from an image are data, never markup,
    so a crafted model name cannot add a link or load a remote image."""
    return "\n\n".join(_MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(line, quote=False)) for line in lines if line)


def build(targets: dict[str, tuple[str, Widgets]], tabs: gr.Tabs, services: Services,
          checkpoint: gr.Dropdown, status: gr.Markdown,
          switch: Callable[[str | None], Iterator[tuple[object, object]]],
          styles: dict[str, gr.Dropdown] | None = None) -> tuple[dict[str, gr.Button], gr.Textbox]:
    """``targets``: tab id -> (its label, its widgets by request field name), one "Send to" button each;
    ``styles``: tab id -> its styles dropdown, set to the styles found in the prompts.

    ``checkpoint``/``status`` are the checkpoint bar's dropdown and status line; ``switch(title)`` streams a
    checkpoint switch into them (None: nothing to switch). Returns the "Send to" buttons by tab id and the
    parameters box, so more fields can be filled from the same text (the extensions' panels)."""
    limits = services.settings.limits
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
            notice = gr.HTML(elem_id="pnginfo_notice")
    to_switch = gr.State(None)

    def read(upload: ImageSource | None) -> tuple[str, str]:
        return read_parameters(upload, limits)

    image.change(read, image, [raw, table], api_name="png_info", api_visibility="private")

    for tab_id, (_, widgets) in targets.items():
        dropdown = (styles or {}).get(tab_id)
        extra = [dropdown] if dropdown is not None else []

        def send(text: str, tab_id: str = tab_id, widgets: Widgets = widgets, styled: bool = bool(extra)) -> list:
            if not text:
                return [gr.update()] * (len(widgets) + styled + 1) + ["", None, gr.update()]
            updates, pasted, found = field_updates(text, widgets, services if styled else None, services.loras)
            title, missing = checkpoint_to_switch(services, pasted)
            not_applied = f"Not applied: {', '.join(pasted.not_applied)}" if pasted.not_applied else ""
            lines = [missing, not_applied]
            # Also in the status line above the tabs: "Send to" leaves this tab, and the user should see it.
            return (updates + [gr.update(value=found)] * styled
                    + [gr.Tabs(selected=tab_id), notice_html(lines), title, notice_markdown(lines)])

        def switch_to(title: str | None, shown: str) -> Iterator[tuple[object, object]]:
            if title is None:
                yield gr.update(), gr.update()
                return
            for text, dropdown in switch(title):
                yield (f"{shown}\n\n{text}" if shown else text), dropdown

        buttons[tab_id].click(send, raw, list(widgets.values()) + extra + [tabs, notice, to_switch, status],
                              api_visibility="private").then(
            switch_to, [to_switch, status], [status, checkpoint], api_visibility="private")
    return buttons, raw
