"""The Settings tab: one widget per row of the options table that has a label, grouped by its section.

Widgets take their value on every page load (a callable ``value``), so a second tab or a reload shows what is
stored. "Apply settings" checks every changed value first and shows each problem in red, naming its key; only
when all are valid is anything saved (all or none), through the same ``OptionsService.update`` the API uses, but
allowed to set the folder options the API may not.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr

from webui.errors import StudioError
from webui.services.container import Services
from webui.services.options import OPTIONS, Option
from webui.ui.generation_form import error_html

HEADING = "Stable Studio settings"


@dataclass(frozen=True)
class SettingsTab:
    widgets: dict[str, gr.components.Component]  # option key -> its widget
    apply: gr.Button
    result: gr.HTML


def settings_rows() -> dict[str, list[tuple[str, Option]]]:
    """The options the tab shows, by section, in table order."""
    sections: dict[str, list[tuple[str, Option]]] = {}
    for key, option in OPTIONS.items():
        if option.label and option.section:
            sections.setdefault(option.section, []).append((key, option))
    return sections


def _widget(key: str, option: Option, current: Callable[[], Any]) -> gr.components.Component:
    label = f"{option.label}{' (' + option.restart + ')' if option.restart else ''}"
    common = dict(label=label, value=current, elem_id=f"setting_{key}", info=key)
    if option.type is bool:
        return gr.Checkbox(**common)
    if option.choices:
        return gr.Dropdown(choices=list(option.choices), **common)
    if option.type is str:
        return gr.Textbox(**common)
    if option.type is int and option.minimum is not None and option.maximum is not None \
            and option.maximum - option.minimum <= 100:
        return gr.Slider(minimum=option.minimum, maximum=option.maximum, step=1, **common)
    return gr.Number(minimum=option.minimum, maximum=option.maximum, precision=0 if option.type is int else None,
                     **common)


def _typed(option: Option, value: Any) -> Any:
    """A widget's value as the option's type (sliders and number boxes give floats); the service checks it."""
    if option.type is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def apply_settings(services: Services, keys: list[str], values: list[Any]) -> str:
    """Save the changed values, all or none; the HTML that says what happened."""
    options = services.options
    changes = {key: _typed(OPTIONS[key], value) for key, value in zip(keys, values)
               if _typed(OPTIONS[key], value) != options.value(key)}
    if not changes:
        return "<div class='studio-progress'>Nothing changed.</div>"
    problems = options.problems(changes, allow_paths=True)
    if problems:
        return "".join(error_html(problem) for problem in problems) + \
            "<div class='studio-progress'>Nothing was saved.</div>"
    try:
        options.update(changes, allow_paths=True)
    except StudioError as exc:  # e.g. a requirement that changed since the check
        return error_html(str(exc)) + "<div class='studio-progress'>Nothing was saved.</div>"
    names = ", ".join(html.escape(key) for key in changes)
    later = [key for key in changes if OPTIONS[key].restart]
    note = f" {', '.join(later)}: applies {OPTIONS[later[0]].restart}." if later else " They apply to the next job."
    return f"<div class='studio-progress' role='status'>Saved {len(changes)} setting(s): {names}.{note}</div>"


def build_settings_tab(services: Services) -> SettingsTab:
    """The tab's contents; call inside ``gr.Tab("Settings", id="settings", elem_id="tab_settings")``."""
    gr.Markdown(f"## {HEADING}", elem_id="studio_settings_heading")
    gr.Markdown("Options of this server, with A1111's names (shown under each). They are saved in "
                "`config.json` in the data dir and are the same options `/sdapi/v1/options` reads and writes; "
                "folders can only be set here, and always lie inside `outputs/`.")
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_apply", scale=0, min_width=160)
    result = gr.HTML(elem_id="settings_result")
    widgets: dict[str, gr.components.Component] = {}
    for section, rows in settings_rows().items():
        with gr.Accordion(section, open=True, elem_id=f"settings_section_{section.split()[0].lower()}"):
            for key, option in rows:
                widgets[key] = _widget(key, option, lambda key=key: services.options.value(key))
    keys = list(widgets)
    apply.click(lambda *values: apply_settings(services, keys, list(values)), [widgets[k] for k in keys], result,
                api_name="studio_settings_apply", api_visibility="private")
    return SettingsTab(widgets, apply, result)
