"""The styles bar under Generate (A1111's): pick styles for the job, apply them into the prompt boxes, save the
current prompts as a style, re-read styles.csv. The styles themselves live in ``webui.services.styles``."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from webui.errors import StudioError
from webui.services.container import Services
from webui.ui.generation_form import PromptRow, error_html


@dataclass
class StylesBar:
    dropdown: gr.Dropdown
    apply: gr.Button
    refresh: gr.Button
    name: gr.Textbox
    save: gr.Button
    status: gr.HTML


def names(services: Services) -> list[str]:
    """The saved styles' names, as last read (Refresh re-reads the files)."""
    return services.styles.names() if services.styles is not None else []


def _problems_html(services: Services) -> str:
    problems = services.styles.problems if services.styles is not None else []
    return "".join(error_html(problem) for problem in problems)


def build(services: Services, prefix: str) -> StylesBar:
    """The widgets; call inside the prompt row's button column (``build_prompt_row(under_buttons=...)``)."""
    dropdown = gr.Dropdown(names(services), value=[], multiselect=True, label="Styles",
                           elem_id=f"{prefix}_styles", allow_custom_value=False)
    with gr.Row():
        # Hover titles for these come from static/prompt_tools.js (Gradio's Button has no title option).
        apply = gr.Button("📋 Apply", size="sm", min_width=60, elem_id=f"{prefix}_style_apply")
        refresh = gr.Button("🔄 Refresh", size="sm", min_width=60, elem_id=f"{prefix}_styles_refresh")
    with gr.Accordion("Save prompts as a style", open=False, elem_id=f"{prefix}_style_save_panel"):
        name = gr.Textbox(label="Style name", max_lines=1, elem_id=f"{prefix}_style_name")
        save = gr.Button("💾 Save current prompts as style", size="sm", elem_id=f"{prefix}_style_save")
    status = gr.HTML(_problems_html(services), elem_id=f"{prefix}_styles_status")
    return StylesBar(dropdown, apply, refresh, name, save, status)


def styled_fields(services: Services, names: list[str] | None, fields: dict[str, Any]) -> dict[str, Any]:
    """The request fields with the selected styles applied, as the API's ``styles`` does."""
    if not names or services.styles is None:
        return fields
    return services.styles.apply_to_fields(fields, list(names))


def wire(services: Services, bar: StylesBar, row: PromptRow) -> None:
    def apply(names: list[str] | None, prompt: str, negative: str):
        if not names or services.styles is None:
            return gr.update(), gr.update(), gr.update(), ""
        try:
            fields = services.styles.apply_to_fields({"prompt": prompt, "negative_prompt": negative}, names)
        except StudioError as exc:
            return gr.update(), gr.update(), gr.update(), error_html(str(exc))
        # A1111's 📋: the styles move into the boxes, so the selection is cleared (else they would apply twice).
        return fields["prompt"], fields["negative_prompt"], gr.update(value=[]), ""

    def refresh(current: list[str] | None):
        if services.styles is not None:
            services.styles.reload()
        listed = names(services)
        return gr.update(choices=listed, value=[n for n in current or [] if n in listed]), _problems_html(services)

    def save(name: str, prompt: str, negative: str, current: list[str] | None):
        if services.styles is None:
            return gr.update(), gr.update(), error_html("this server has no prompt styles")
        try:
            replaced = services.styles.save(name or "", prompt or "", negative or "")
        except StudioError as exc:
            return gr.update(), gr.update(), error_html(str(exc))
        label = html.escape(name.strip())
        message = (f"Saved style <b>{label}</b>, replacing the one saved before under that name" if replaced
                   else f"Saved style <b>{label}</b> to styles.csv")
        return (gr.update(choices=names(services), value=current or []), "",
                f"<div role='status'>{message}</div>" + _problems_html(services))

    bar.apply.click(apply, [bar.dropdown, row.prompt, row.negative_prompt],
                    [row.prompt, row.negative_prompt, bar.dropdown, bar.status], api_visibility="private")
    bar.refresh.click(refresh, bar.dropdown, [bar.dropdown, bar.status], api_visibility="private")
    bar.save.click(save, [bar.name, row.prompt, row.negative_prompt, bar.dropdown], [bar.dropdown, bar.name,
                                                                                      bar.status],
                   api_visibility="private")
