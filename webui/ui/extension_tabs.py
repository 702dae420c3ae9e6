"""What extensions add to the page outside the Scripts area: their tabs (``ext.add_tab``) and their entries in
the Settings tab (``ext.add_setting``), saved in ``<data dir>/extension-settings.json``."""

from __future__ import annotations

import html
import logging
from typing import Any, Callable

import gradio as gr

from webui.errors import InvalidRequest
from webui.extensions.api import Setting
from webui.extensions.host import ExtensionHost
from webui.extensions.state import ExtensionSettings
from webui.services.container import Services
from webui.ui.generation_form import error_html
from webui.ui.model_widgets import slug

log = logging.getLogger(__name__)


def build_tabs(services: Services) -> list[str]:
    """One top-level tab per ``add_tab`` (elem_id ``tab_ext_<name>``, then ``_2``...); call inside ``gr.Tabs``.
    A build that raises shows its error in its tab; the page still builds. Returns the elem_ids."""
    host = services.extensions or ExtensionHost()
    made: list[str] = []
    for owner, title, build in host.tabs():
        base = f"tab_ext_{slug(owner)}"
        elem_id = base if base not in made else f"{base}_{sum(m.startswith(base) for m in made) + 1}"
        made.append(elem_id)
        with gr.Tab(title, id=elem_id, elem_id=elem_id):
            try:
                build()
            except Exception as exc:  # noqa: BLE001 - an extension's UI code must not cost the page
                log.exception("Extension %s: its tab '%s' could not be built", owner, title)
                gr.HTML(error_html(f"Extension {owner}: this tab could not be built: {type(exc).__name__}: {exc}"))
    return made


# ---- settings entries


def check_setting(setting: Setting, value: Any, where: str) -> Any:
    """``value`` as the setting's type, within its choices or bounds; InvalidRequest naming ``where`` otherwise."""
    kind = type(setting.default)
    if kind is bool:
        if not isinstance(value, bool):
            raise InvalidRequest(where, "must be true or false")
        return value
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(where, "must be a number")
        if kind is int:
            if float(value) != int(value):
                raise InvalidRequest(where, "must be a whole number")
            value = int(value)
        else:
            value = float(value)
        if setting.minimum is not None and value < setting.minimum:
            raise InvalidRequest(where, f"must be at least {setting.minimum:g}")
        if setting.maximum is not None and value > setting.maximum:
            raise InvalidRequest(where, f"must be at most {setting.maximum:g}")
        return value
    if not isinstance(value, str):
        raise InvalidRequest(where, "must be text")
    if setting.choices and value not in setting.choices:
        raise InvalidRequest(where, f"must be one of {', '.join(setting.choices)}")
    return value


def _widget(setting: Setting, current: Callable[[], Any], elem_id: str) -> gr.components.Component:
    common = dict(label=setting.label, value=current, elem_id=elem_id, info=setting.key)
    if isinstance(setting.default, bool):
        return gr.Checkbox(**common)
    if setting.choices:
        return gr.Dropdown(list(setting.choices), **common)
    if isinstance(setting.default, (int, float)):
        if setting.minimum is not None and setting.maximum is not None:
            step = 1 if isinstance(setting.default, int) else (setting.maximum - setting.minimum) / 100
            return gr.Slider(setting.minimum, setting.maximum, step=step, **common)
        return gr.Number(precision=0 if isinstance(setting.default, int) else None, **common)
    return gr.Textbox(**common)


def apply_settings(store: ExtensionSettings, entries: list[tuple[str, Setting]], values: list[Any]) -> str:
    """Save the extension settings, all or none; the HTML that says what happened."""
    checked, problems = [], []
    for (owner, setting), value in zip(entries, values):
        try:
            checked.append((owner, setting, check_setting(setting, value, f"{owner}: {setting.label}")))
        except InvalidRequest as exc:
            problems.append(str(exc))
    if problems:
        return "".join(error_html(p) for p in problems) + "<div class='studio-progress'>Nothing was saved.</div>"
    changed = [(owner, setting.key, value) for owner, setting, value in checked
               if store.values(owner).get(setting.key, setting.default) != value]
    for owner, key, value in changed:
        store.set(owner, key, value)
    if not changed:
        return "<div class='studio-progress'>Nothing changed.</div>"
    names = ", ".join(html.escape(f"{owner}.{key}") for owner, key, _ in changed)
    return f"<div class='studio-progress' role='status'>Saved {len(changed)} extension setting(s): {names}.</div>"


def build_settings(services: Services) -> None:
    """A section per extension with settings, and their Apply button; call inside the Settings tab."""
    host = services.extensions or ExtensionHost()
    entries = host.settings()
    if not entries:
        return
    store = ExtensionSettings(services.settings.data_dir / "extension-settings.json")
    gr.Markdown("### Extensions", elem_id="extension_settings_heading")
    widgets: list[gr.components.Component] = []
    for owner in dict.fromkeys(owner for owner, _ in entries):
        with gr.Accordion(owner, open=True, elem_id=f"extension_settings_{slug(owner)}"):
            for name, setting in entries:
                if name != owner:
                    continue

                def current(owner=owner, setting=setting) -> Any:
                    return store.values(owner).get(setting.key, setting.default)

                widgets.append(_widget(setting, current, f"extension_setting_{slug(owner)}_{slug(setting.key)}"))
    apply = gr.Button("Apply extension settings", elem_id="extension_settings_apply")
    result = gr.HTML(elem_id="extension_settings_result")
    apply.click(lambda *values: apply_settings(store, entries, list(values)), widgets, result,
                api_name="studio_extension_settings_apply", api_visibility="private")
