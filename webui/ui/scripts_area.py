"""The Scripts area of txt2img and img2img: A1111's "Script" dropdown with one panel per script (shown when
chosen), and the always-on panels of extensions that take values with every job. Widgets come from each
extension's pydantic model (webui/ui/model_widgets.py) or its own ``ui`` builder; values travel by field name."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import gradio as gr
from pydantic import BaseModel

from webui.errors import InvalidRequest
from webui.infotext import parse_infotext
from webui.extensions.api import Builder
from webui.extensions.host import ExtensionHost, model_values
from webui.services.container import Services
from webui.services.jobs import Job
from webui.types import Txt2ImgRequest
from webui.ui import model_widgets
from webui.ui.generation_form import error_html

log = logging.getLogger(__name__)
NONE = "None"


@dataclass
class Panel:
    """One script's or one always-on extension's widgets."""

    owner: str                              # the extension's name
    title: str
    model: type[BaseModel] | None
    widgets: model_widgets.Widgets
    block: Any = None                       # the Column (scripts) or Accordion (always-on)
    infotext: Mapping[str, str] = field(default_factory=dict)  # field -> infotext key (Params.infotext)


@dataclass
class ScriptsArea:
    tab: str
    dropdown: gr.Dropdown | None = None     # None when no extension offers a script here
    scripts: list[Panel] = field(default_factory=list)
    always: list[Panel] = field(default_factory=list)

    def inputs(self) -> set:
        components = {c for panel in (*self.scripts, *self.always) for c in panel.widgets.values()}
        return components | ({self.dropdown} if self.dropdown is not None else set())

    def fields(self) -> dict[str, model_widgets.Widgets]:
        """Always-on widgets by extension name (PNG Info fills them from infotext)."""
        return {panel.owner: panel.widgets for panel in self.always}

    def paste_outputs(self) -> list:
        """The widgets PNG Info's "Send to" fills from infotext (those of fields an extension declared)."""
        return [panel.widgets[name] for panel in self.always for name in panel.infotext if name in panel.widgets]

    def paste_updates(self, text: str) -> list:
        """One update per :meth:`paste_outputs` widget: the value the infotext records under the field's key
        (read as the field's type), or no change."""
        params = parse_infotext(text).params if text else {}
        updates = []
        for panel in self.always:
            for name, key in panel.infotext.items():
                if name not in panel.widgets:
                    continue
                value = _from_text(panel.model, name, params[key]) if key in params else None
                updates.append(gr.update() if value is None else gr.update(value=value))
        return updates

    def chosen(self, values: dict) -> Panel | None:
        title = values.get(self.dropdown) if self.dropdown is not None else None
        return next((p for p in self.scripts if p.title == title), None)

    def extension_values(self, values: dict) -> dict[str, dict[str, Any]]:
        """Every always-on panel's values (A1111 sends them all), checked by its model: an error names the
        panel's title and the field's label."""
        out: dict[str, dict[str, Any]] = {}
        for panel in self.always:
            if panel.model is None:
                continue
            raw = model_widgets.raw_values(panel.model, panel.widgets, values)
            out[panel.owner] = _checked(panel, raw).model_dump(mode="json")
        return out

    def submit(self, services: Services, request: Txt2ImgRequest, values: dict,
               plain: Callable[[Txt2ImgRequest], Job]) -> Job:
        """The job for the form: the chosen script's (one job), or ``plain(request)``."""
        panel = self.chosen(values)
        if panel is None:
            return plain(request)
        if services.scripts is None:
            raise InvalidRequest("Script", "this server runs no scripts")
        raw = model_widgets.raw_values(panel.model, panel.widgets, values) if panel.model is not None else {}
        if panel.model is not None:
            raw = _checked(panel, raw).model_dump(mode="json")
        return services.scripts.submit(self.tab, panel.title, request, raw, field_name=panel.title)


def _from_text(model: type[BaseModel] | None, name: str, text: str) -> Any:
    """An infotext value as the field's type; None when it does not read as one (the widget is left alone)."""
    if model is None or name not in model.model_fields:
        return None
    try:
        return model.__pydantic_validator__.validate_assignment(model.model_construct(), name, text).__dict__[name]
    except ValueError:
        return None


def _checked(panel: Panel, raw: dict[str, Any]) -> BaseModel:
    assert panel.model is not None
    try:
        return model_values(panel.model, raw, panel.title)
    except InvalidRequest as exc:
        name = (exc.field or "").removeprefix(f"{panel.title}.").split(".")[0]
        info = panel.model.model_fields.get(name)
        label = (info.title or name) if info is not None else name
        raise InvalidRequest(f"{panel.title}: {label}" if label else panel.title, exc.reason or str(exc)) from None


def _widgets(model: type[BaseModel] | None, ui: Builder | None, elem_prefix: str) -> model_widgets.Widgets:
    """The panel's widgets; an extension's own builder that raises is shown in red, the page still builds."""
    if model is None:
        return {}
    if ui is None:
        return model_widgets.build(model, elem_prefix)
    try:
        built = dict(ui(model()))
    except Exception as exc:  # noqa: BLE001 - an extension's UI code must not cost the page
        log.exception("The UI builder of %s failed", elem_prefix)
        gr.HTML(error_html(f"This panel could not be built: {type(exc).__name__}: {exc}"))
        return {}
    return {name: component for name, component in built.items() if name in model.model_fields}


def build(services: Services, tab: str) -> ScriptsArea:
    """The area's widgets, inside the current Gradio context; wires the dropdown to show the chosen panel."""
    host = services.extensions or ExtensionHost()
    area = ScriptsArea(tab)
    for entry in host.panels(tab):
        title = entry.params.title or entry.owner
        with gr.Accordion(title, open=False, elem_id=f"{tab}_ext_{model_widgets.slug(entry.owner)}") as block:
            widgets = _widgets(entry.params.model, entry.params.ui,
                               f"{tab}_ext_{model_widgets.slug(entry.owner)}")
        area.always.append(Panel(entry.owner, title, entry.params.model, widgets, block, entry.params.infotext))
    entries = host.scripts(tab)
    if not entries:
        return area
    titles = [entry.script.title for entry in entries]
    area.dropdown = gr.Dropdown([NONE, *titles], value=NONE, label="Script", elem_id=f"{tab}_script")
    for entry in entries:
        script = entry.script
        prefix = f"{tab}_script_{model_widgets.slug(script.title)}"
        with gr.Column(visible=False, elem_id=prefix) as block:
            if script.description:
                gr.Markdown(script.description)
            widgets = _widgets(script.params, script.ui, prefix)
        area.scripts.append(Panel(entry.owner, script.title, script.params, widgets, block))
    blocks = [panel.block for panel in area.scripts]

    def show(chosen: str):
        updates = [gr.update(visible=panel.title == chosen) for panel in area.scripts]
        return updates[0] if len(updates) == 1 else updates  # Gradio takes one output's value unwrapped

    area.dropdown.change(show, area.dropdown, blocks, api_visibility="private")
    return area


def wire_paste(button: gr.Button, text: gr.Textbox, area: ScriptsArea | None) -> None:
    """PNG Info's "Send to": also fill the always-on panels' fields the infotext records."""
    outputs = area.paste_outputs() if area is not None else []
    if not outputs:
        return
    button.click(lambda value: _one(area.paste_updates(value)), text, outputs, api_visibility="private")


def _one(updates: list) -> Any:
    return updates[0] if len(updates) == 1 else updates  # Gradio takes one output's value unwrapped
