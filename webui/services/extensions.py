"""The Extensions tab's service: what is installed (as loaded at start, plus what changed on disk since), enable and
disable, install/update/remove through git, the Available index, and "Apply and restart".

Every call that changes something refuses on a server reachable from the network unless the operator opted in
(A1111's ``--enable-insecure-extension-access``): the check is here so the UI buttons, Gradio's event API and the
REST routes all get it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from webui.config import Settings
from webui.errors import InvalidRequest, StudioError
from webui.extensions.host import DISABLED, LOADED, ExtensionHost, ExtensionRecord
from webui.extensions.index import Index, load_index
from webui.extensions.installer import (InstallPlan, InstallRequest, Installed, Installer, Updates, check_folder)
from webui.extensions.loader import discover
from webui.extensions.manifest import ManifestError, read_manifest
from webui.extensions.state import EnabledState

RESTART_NOTE = "restarts the server process; running jobs are interrupted"


class ExtensionAccessDenied(StudioError):
    """A change to extensions on an exposed server without the opt-in flag (HTTP 403)."""


@dataclass(frozen=True)
class ExtensionRow:
    """One line of the Installed table."""

    name: str
    folder: str
    version: str
    api: str
    status: str                # as loaded at start: loaded, disabled, failed, incompatible; or "not loaded"
    pending: str               # what the next start changes ("" when nothing)
    load_seconds: float
    error: str
    traceback: str
    builtin: bool
    url: str = ""


class ExtensionsService:
    def __init__(self, settings: Settings, host: ExtensionHost, *, installer: Installer | None = None,
                 state: EnabledState | None = None, restart: Callable[[], None] | None = None):
        self._settings = settings
        self._host = host
        self._installer = installer or Installer(settings.extensions_dir)
        self._state = state or EnabledState(settings.data_dir / "extensions.json")
        self._restart = restart
        self._lock = threading.Lock()  # one install/update/remove at a time
        self._index: Index | None = None
        self._installer.sweep()

    @property
    def restart_available(self) -> bool:
        return self._restart is not None

    # ---- reading

    def installed(self) -> list[ExtensionRow]:
        """The records of this start, then folders installed since (pending a restart)."""
        disabled = self._state.disabled()
        rows = [self._row(r, disabled) for r in self._host.records]
        known = {r.path.resolve() for r in self._host.records}
        for folder in discover(self._settings.extensions_dir):
            if folder.resolve() in known:
                continue
            try:
                manifest = read_manifest(folder)
                name, version, api, error = manifest.name, manifest.version, manifest.api, ""
            except ManifestError as exc:
                name, version, api, error = folder.name, "", "", str(exc)
            rows.append(ExtensionRow(name, folder.name, version, api, "not loaded",
                                     "installed: loads after restart" if name not in disabled
                                     else "installed, disabled", 0.0, error, "", False, _remote(folder)))
        return rows

    def available(self, query: str = "", refresh: bool = False) -> Index:
        """The index (fetched once, again on ``refresh``), installed ones marked, filtered by ``query``."""
        if self._index is None or refresh:
            self._index = load_index(self._settings.extensions_index)
        rows = self.installed()
        marked = self._index.marked({r.url for r in rows if r.url}, {r.name for r in rows} | {r.folder for r in rows})
        return Index(tuple(marked.search(query)), marked.message)

    # ---- changing (all guarded)

    def check_access(self) -> None:
        if self._settings.exposed and not self._settings.enable_insecure_extension_access:
            raise ExtensionAccessDenied(
                "Installing, updating, removing, enabling and disabling extensions is off on a server reachable from "
                "the network (--listen or --share); start with --enable-insecure-extension-access to allow it")

    def set_enabled(self, name: str, enabled: bool) -> ExtensionRow:
        self.check_access()
        row = self._find(name)
        with self._lock:
            try:
                self._state.set_enabled(row.name, enabled)
            except OSError as exc:
                raise StudioError(f"cannot save extensions.json: {exc.strerror or exc}") from None
        return self._find(row.name)

    def check_install(self, request: InstallRequest) -> InstallPlan:
        """Clone, read the manifest and what pip would install, and delete the clone: shown before Install."""
        self.check_access()
        with self._lock:
            return self._installer.check(request, taken=self._taken())

    def install(self, request: InstallRequest) -> Installed:
        self.check_access()
        with self._lock:
            return self._installer.install(request, taken=self._taken())

    def updates(self, name: str) -> Updates:
        self.check_access()
        row = self._user_row(name)
        with self._lock:
            return self._installer.updates(row.folder)

    def check_all_updates(self) -> dict[str, Updates | str]:
        """Each git-installed user extension's pending commits (or why they could not be checked)."""
        self.check_access()
        found: dict[str, Updates | str] = {}
        for row in self.installed():
            if row.builtin or not row.url:
                continue
            try:
                with self._lock:
                    found[row.name] = self._installer.updates(row.folder)
            except StudioError as exc:
                found[row.name] = str(exc)
        return found

    def update(self, name: str) -> Updates:
        self.check_access()
        row = self._user_row(name)
        with self._lock:
            return self._installer.update(row.folder)

    def remove(self, name: str) -> None:
        self.check_access()
        row = self._user_row(name)
        with self._lock:
            self._installer.remove(row.folder)

    def restart(self) -> None:
        """Ask the app to restart its process (Apply and restart UI)."""
        self.check_access()
        if self._restart is None:
            raise StudioError("Restarting is not available in this process (it was not started by app.py); "
                              "restart the server by hand")
        self._restart()

    # ---- helpers

    def _row(self, record: ExtensionRecord, disabled: set[str]) -> ExtensionRow:
        manifest = record.manifest
        pending = ""
        if not record.path.exists() and not record.builtin:
            pending = "removed: gone after restart"
        elif record.status == LOADED and record.name in disabled:
            pending = "disabled after restart"
        elif record.status == DISABLED and record.name not in disabled and not self._settings.safe_mode:
            pending = "enabled after restart"
        return ExtensionRow(record.name, record.path.name, manifest.version if manifest else "",
                            manifest.api if manifest else "", record.status, pending, record.load_seconds,
                            record.error, record.traceback, record.builtin,
                            "" if record.builtin else _remote(record.path))

    def _find(self, name: str) -> ExtensionRow:
        for row in self.installed():
            if row.name == name:
                return row
        raise InvalidRequest("name", f"no extension named '{name}' is installed")

    def _user_row(self, name: str) -> ExtensionRow:
        row = self._find(name)
        if row.builtin:
            raise InvalidRequest("name", f"'{name}' is built in: it can be disabled, not updated or removed")
        check_folder(row.folder)
        return row

    def _taken(self) -> set[str]:
        return {row.name for row in self.installed() if "removed" not in row.pending}


def _remote(folder: Path) -> str:
    """The ``origin`` URL git recorded when the extension was cloned ("" when it was not)."""
    config = folder / ".git" / "config"
    try:
        text = config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == '[remote "origin"]' and line.startswith("url"):
            return line.split("=", 1)[1].strip()
    return ""
