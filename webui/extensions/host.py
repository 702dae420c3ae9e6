"""The loaded extensions as the core sees them: their status for the Extensions tab, and lookups of what they
registered (panels, scripts, tabs, settings) for the UI, the API and the services.

Built by the loader (``webui/extensions/loader.py``) at start; tests build one straight from ``Extension`` objects
with ``ExtensionHost.of``. Hook dispatch lives in ``webui/extensions/hooks.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from webui.errors import InvalidRequest
from webui.extensions.api import Extension, Params, Script, Setting
from webui.extensions.manifest import Manifest
from webui.types import safe_label

LOADED = "loaded"
DISABLED = "disabled"          # by the user (Extensions tab), or by --safe-mode for user extensions
FAILED = "failed"              # raised, hung or exited at import, or in setup()
INCOMPATIBLE = "incompatible"  # no or bad manifest, or an API version range this core does not meet


@dataclass
class ExtensionRecord:
    """One folder the loader looked at, whatever became of it."""

    name: str                          # the manifest's name (the folder's name when there is no usable manifest)
    path: Path
    builtin: bool = False              # shipped in webui/builtin_extensions (kept on in --safe-mode)
    manifest: Manifest | None = None
    status: str = LOADED
    error: str = ""                    # one line for the table
    traceback: str = ""                # the whole story, for the details view and the log
    load_seconds: float = 0.0
    extension: Extension | None = None  # what setup() registered (LOADED only)


@dataclass(frozen=True)
class ScriptEntry:
    owner: str                         # the extension's name
    script: Script


@dataclass(frozen=True)
class PanelEntry:
    owner: str
    params: Params


@dataclass
class ExtensionHost:
    records: list[ExtensionRecord] = field(default_factory=list)

    @classmethod
    def of(cls, *extensions: Extension, builtin: bool = False) -> "ExtensionHost":
        """A host over extensions built in code (tests; nothing imported from disk)."""
        return cls([ExtensionRecord(name=e.name, path=Path("."), builtin=builtin, extension=e) for e in extensions])

    def loaded(self) -> list[Extension]:
        """Loaded extensions in hook order: built-ins first, then by name."""
        chosen = [r for r in self.records if r.status == LOADED and r.extension is not None]
        chosen.sort(key=lambda r: (not r.builtin, r.name))
        return [r.extension for r in chosen if r.extension is not None]

    def record(self, name: str) -> ExtensionRecord | None:
        return next((r for r in self.records if r.name == name), None)

    # ---- what the UI and the API list

    def panels(self, tab: str) -> list[PanelEntry]:
        return [PanelEntry(e.name, e.params) for e in self.loaded() if e.params is not None and tab in e.params.tabs]

    def scripts(self, tab: str) -> list[ScriptEntry]:
        return [ScriptEntry(e.name, s) for e in self.loaded() for s in e.scripts if tab in s.tabs]

    def tabs(self) -> list[tuple[str, str, Callable[[], None]]]:
        """(extension, title, build) of every extension tab."""
        return [(e.name, title, build) for e in self.loaded() for title, build in e.tabs]

    def settings(self) -> list[tuple[str, Setting]]:
        return [(e.name, s) for e in self.loaded() for s in e.settings]

    # ---- request values

    def find_script(self, title: str, tab: str, field_name: str = "script_name") -> ScriptEntry:
        """The script ``title`` names (any case, as A1111 matches ``script_name``); InvalidRequest otherwise."""
        wanted = title.strip().lower()
        for entry in self.scripts(tab):
            if entry.script.title.lower() == wanted:
                return entry
        names = ", ".join(f"'{e.script.title}'" for e in self.scripts(tab)) or "none"
        raise InvalidRequest(field_name, f"no script named '{safe_label(title)}' in {tab} (scripts: {names}; "
                                         "GET /sdapi/v1/scripts lists them)")

    def find_alwayson(self, name: str) -> PanelEntry:
        """The panel A1111's ``alwayson_scripts`` key ``name`` means: its ``a1111_name`` or the extension's name,
        any case."""
        wanted = name.strip().lower()
        for e in self.loaded():
            if e.params is not None and wanted in {e.name.lower(), (e.params.a1111_name or "").lower()}:
                return PanelEntry(e.name, e.params)
        raise InvalidRequest(f"alwayson_scripts.{safe_label(name)}",
                             f"no always-on script named '{safe_label(name)}' (GET /sdapi/v1/scripts lists them)")

    def validate_values(self, values: dict[str, Any], tab: str) -> dict[str, BaseModel]:
        """A request's ``extensions`` dict checked against each extension's model; InvalidRequest naming
        ``extensions.<name>.<field>`` otherwise."""
        panels = {p.owner: p.params for p in self.panels(tab)}
        parsed: dict[str, BaseModel] = {}
        for name, raw in values.items():
            where = f"extensions.{safe_label(str(name))}"
            if name not in panels:
                raise InvalidRequest(where, f"no extension named '{safe_label(str(name))}' takes values in {tab}")
            if not isinstance(raw, dict):
                raise InvalidRequest(where, "must be an object of the extension's fields")
            parsed[name] = model_values(panels[name].model, raw, where)
        return parsed


def model_values(model: type[BaseModel], raw: dict[str, Any], where: str) -> BaseModel:
    """``raw`` validated by ``model``; InvalidRequest naming the first wrong field."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first.get("loc", ()))
        raise InvalidRequest(f"{where}.{loc}" if loc else where, first.get("msg", "is not valid")) from None


def values_from_args(fields: tuple[str, ...], args: list[Any], where: str) -> dict[str, Any]:
    """A1111's positional ``args``/``script_args`` as named fields (extra trailing args are an error)."""
    if not isinstance(args, list):
        raise InvalidRequest(where, "must be a list")
    if len(args) > len(fields):
        raise InvalidRequest(where, f"takes at most {len(fields)} values ({', '.join(fields) or 'none'}); "
                                    f"got {len(args)}")
    return dict(zip(fields, args))
