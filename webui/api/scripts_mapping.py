"""A1111's script fields on the API, mapped onto the extensions' typed values.

* ``script_name`` + ``script_args`` (a positional list, in the order the script's ``a1111_args`` declares) pick
  a script: the job goes to ``ScriptService`` instead of a plain run;
* ``alwayson_scripts: {"name": {"args": [...]}}`` fill ``request.extensions`` for the extension that declares
  that A1111 name (its ``a1111_args`` give the order); our own ``extensions: {"<name>": {...}}`` is accepted too;
* ``GET /sdapi/v1/scripts`` and ``/script-info`` list them in A1111's shapes (names lower-cased, as A1111 does).
"""

from __future__ import annotations

import types
import typing
from enum import Enum
from typing import Any, Callable, Literal

from pydantic import BaseModel

from webui.errors import InvalidRequest
from webui.extensions.api import IMG2IMG, TXT2IMG
from webui.extensions.host import ExtensionHost, model_values, values_from_args
from webui.services.container import Services
from webui.services.jobs import Job
from webui.types import Txt2ImgRequest, safe_label


def _host(services: Services) -> ExtensionHost:
    return services.extensions or ExtensionHost()


def _args_to_fields(fields: tuple[str, ...], model: type[BaseModel] | None, args: Any, where: str) -> dict[str, Any]:
    """A1111's positional args as named fields: ``fields`` gives the order (default: the model's own)."""
    if isinstance(args, dict):
        raise InvalidRequest(where, "must be a list of values in the order the script declares (A1111 sends a "
                                    "list; GET /sdapi/v1/script-info shows the order)")
    order = fields or (tuple(model.model_fields) if model is not None else ())
    return values_from_args(order, args if args is not None else [], where)


def extension_values(body: Any, task: str, services: Services) -> dict[str, dict[str, Any]]:
    """The request's ``extensions``: the body's own ``extensions`` plus what ``alwayson_scripts`` maps to."""
    host = _host(services)
    values: dict[str, dict[str, Any]] = {}
    own = getattr(body, "extensions", None) or {}
    if not isinstance(own, dict):
        raise InvalidRequest("extensions", "must be an object keyed by extension name")
    for name, raw in own.items():
        values[str(name)] = raw
    always = body.alwayson_scripts or {}
    if not isinstance(always, dict):
        raise InvalidRequest("alwayson_scripts", "must be an object keyed by script name")
    for name, entry in always.items():
        where = f"alwayson_scripts.{safe_label(str(name))}"
        panel = host.find_alwayson(str(name))
        if task not in panel.params.tabs:
            raise InvalidRequest(where, f"'{safe_label(str(name))}' does not take part in {task}")
        if not isinstance(entry, dict):
            raise InvalidRequest(where, 'must be an object like {"args": [...]}')
        named = _args_to_fields(panel.params.a1111_args, panel.params.model, entry.get("args", []),
                                f"{where}.args")
        checked = model_values(panel.params.model, named, f"{where}.args")
        if panel.owner in values:
            raise InvalidRequest(where, f"'{panel.owner}' is also given in extensions; send it once")
        values[panel.owner] = checked.model_dump(mode="json")
    if values:
        host.validate_values(values, task)
    return values


def script_values(body: Any, task: str, services: Services) -> tuple[str, dict[str, Any]] | None:
    """(script title, named values) when the body names a script; None for a plain run."""
    name = (body.script_name or "").strip()
    if not name or name.lower() == "none":  # A1111's dropdown entry "None" is no script
        if body.script_args:
            raise InvalidRequest("script_args", "given without a script_name")
        return None
    entry = _host(services).find_script(name, task)
    script = entry.script
    return script.title, _args_to_fields(script.a1111_args, script.params, body.script_args, "script_args")


def submitter(body: Any, task: str, services: Services) -> Callable[[Txt2ImgRequest], Job]:
    """How the route queues ``body``'s request: through its script, or as a plain run."""
    chosen = script_values(body, task, services)
    if chosen is None:
        plain = services.generation.submit_txt2img if task == TXT2IMG else services.generation.submit_img2img
        return plain
    if services.scripts is None:
        raise InvalidRequest("script_name", "this server runs no scripts")
    title, values = chosen
    scripts = services.scripts
    return lambda request: scripts.submit(task, title, request, values)


# ---- listings


def scripts_list(services: Services) -> dict[str, list[str]]:
    """A1111's ``/sdapi/v1/scripts``: per tab, the selectable scripts then the always-on ones, lower-cased."""
    host = _host(services)
    return {tab: [e.script.title.lower() for e in host.scripts(tab)] +
                 [_alwayson_name(p.owner, p.params.a1111_name) for p in host.panels(tab)]
            for tab in (TXT2IMG, IMG2IMG)}


def _alwayson_name(owner: str, a1111_name: str | None) -> str:
    return (a1111_name or owner).lower()


def script_info(services: Services) -> list[dict[str, Any]]:
    """A1111's ``/sdapi/v1/script-info``: one entry per script and tab, args in ``script_args`` order."""
    host = _host(services)
    out: list[dict[str, Any]] = []
    for tab in (TXT2IMG, IMG2IMG):
        for e in host.scripts(tab):
            out.append({"name": e.script.title.lower(), "is_alwayson": False, "is_img2img": tab == IMG2IMG,
                        "args": _args_info(e.script.params, e.script.a1111_args)})
        for p in host.panels(tab):
            out.append({"name": _alwayson_name(p.owner, p.params.a1111_name), "is_alwayson": True,
                        "is_img2img": tab == IMG2IMG, "args": _args_info(p.params.model, p.params.a1111_args)})
    return out


def _args_info(model: type[BaseModel] | None, order: tuple[str, ...]) -> list[dict[str, Any]]:
    if model is None:
        return []
    fields = model.model_fields
    return [_arg_info(name, fields[name]) for name in (order or tuple(fields)) if name in fields]


def _arg_info(name: str, info: Any) -> dict[str, Any]:
    """A1111's ScriptArg: label, default value, bounds and step (sliders), choices (dropdowns)."""
    minimum = maximum = step = None
    for meta in info.metadata:
        minimum = getattr(meta, "ge", getattr(meta, "gt", None)) if minimum is None else minimum
        maximum = getattr(meta, "le", getattr(meta, "lt", None)) if maximum is None else maximum
    annotation = _unoptional(info.annotation)
    if annotation is int and minimum is not None and maximum is not None:
        step = 1
    default = info.get_default(call_default_factory=True)
    if isinstance(default, Enum):
        default = default.value
    return {"label": info.title or name, "value": default, "minimum": minimum, "maximum": maximum, "step": step,
            "choices": choices_of(annotation)}


def _unoptional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def choices_of(annotation: Any) -> list[str] | None:
    """The values a Literal[...] or an Enum field allows (as strings), else None."""
    annotation = _unoptional(annotation)
    if typing.get_origin(annotation) is Literal:
        return [str(a) for a in typing.get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [str(m.value) for m in annotation]
    return None
