"""Gradio widgets built from an extension's pydantic model (the rules of the extension API's ``Params``):
bool: checkbox; int/float with both ``ge`` and ``le``: slider; other numbers: number box; Literal/Enum:
dropdown; str: text box (several lines with ``json_schema_extra={"multiline": True}``); anything else: a JSON
text box. The field's ``description`` is the info text, its ``title`` (or name) the label."""

from __future__ import annotations

import json
import re
import types
import typing
from enum import Enum
from typing import Any, Literal

import gradio as gr
from pydantic import BaseModel

Widgets = dict[str, gr.components.Component]


def slug(text: str) -> str:
    """A title as an elem_id part: lower case, runs of other characters as one ``_``."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "x"


def _plain(annotation: Any) -> Any:
    """``X | None`` as ``X``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _choices(annotation: Any) -> list[Any] | None:
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [m.value for m in annotation]
    return None


def _bounds(info: Any) -> tuple[float | None, float | None, float | None]:
    low = high = step = None
    for meta in info.metadata:
        low = getattr(meta, "ge", None) if low is None else low
        high = getattr(meta, "le", None) if high is None else high
        step = getattr(meta, "multiple_of", None) if step is None else step
    return low, high, step


def _extra(info: Any) -> dict[str, Any]:
    extra = info.json_schema_extra
    return extra if isinstance(extra, dict) else {}


def build(model: type[BaseModel], elem_prefix: str, values: BaseModel | None = None) -> Widgets:
    """One widget per field of ``model`` at ``values`` (default: the model's defaults), with elem_id
    ``<elem_prefix>_<field>``."""
    current = values if values is not None else _defaults(model)
    widgets: Widgets = {}
    for name, info in model.model_fields.items():
        value = getattr(current, name, None) if current is not None else None
        if isinstance(value, Enum):
            value = value.value
        common = dict(label=info.title or name, info=info.description or None, elem_id=f"{elem_prefix}_{name}")
        annotation = _plain(info.annotation)
        choices = _choices(annotation)
        if annotation is bool:
            widgets[name] = gr.Checkbox(value=bool(value), **common)
        elif choices is not None:
            widgets[name] = gr.Dropdown(choices, value=value, **common)
        elif annotation in (int, float):
            low, high, step = _bounds(info)
            if low is not None and high is not None:
                step = step or (1 if annotation is int else round((high - low) / 100, 6) or 0.01)
                widgets[name] = gr.Slider(low, high, value=value, step=step, **common)
            else:
                widgets[name] = gr.Number(value=value, precision=0 if annotation is int else None, **common)
        elif annotation is str:
            lines = 4 if _extra(info).get("multiline") else 1
            widgets[name] = gr.Textbox(value=value or "", lines=lines, **common)
        else:  # lists, dicts, nested models: typed as JSON, checked by the model
            widgets[name] = gr.Textbox(value=json.dumps(_jsonable(value)), lines=2, **common)
    return widgets


def _defaults(model: type[BaseModel]) -> BaseModel | None:
    try:
        return model()
    except Exception:  # noqa: BLE001 - a model with required fields: empty widgets
        return None


def _jsonable(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def raw_values(model: type[BaseModel], widgets: Widgets, values: dict) -> dict[str, Any]:
    """The widgets' values as the model's raw fields (Gradio numbers to ints, JSON text parsed); the model
    checks them (a value that cannot be read is passed on as it is, so the model names the field)."""
    out: dict[str, Any] = {}
    for name, component in widgets.items():
        if component not in values:
            continue
        value = values[component]
        info = model.model_fields.get(name)
        annotation = _plain(info.annotation) if info is not None else None
        if annotation is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        elif (info is not None and annotation not in (bool, int, float, str) and _choices(annotation) is None
              and isinstance(value, str)):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[name] = value
    return out
