"""Find extensions (the built-in ones in webui/builtin_extensions, the user's in extensions/), check their manifests
and import each one, so that one broken extension is reported and skipped and the app still starts.

Each extension's import and ``setup()`` run in a worker thread with a time limit; anything they raise (SystemExit
and KeyboardInterrupt included) is caught there. After each one the core's pickle policy is re-asserted
(webui/extensions/policies.py): an extension that weakened it is marked failed and its change undone."""

from __future__ import annotations

import importlib.util
import logging
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from webui.extensions.api import API_VERSION, Context, Extension
from webui.extensions.host import DISABLED, FAILED, INCOMPATIBLE, LOADED, ExtensionHost, ExtensionRecord
from webui.extensions.manifest import ManifestError, read_manifest
from webui.extensions.policies import PolicyGuard

log = logging.getLogger(__name__)
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "builtin_extensions"
PACKAGE = "studio_extensions"  # extensions import as studio_extensions.<name>, so their relative imports work


@dataclass(frozen=True)
class LoadOptions:
    user_dir: Path
    builtin_dir: Path = BUILTIN_DIR
    disabled: frozenset[str] = frozenset()  # by the user (webui/extensions/state.py)
    safe_mode: bool = False                 # every user extension off
    import_seconds: float = 10.0


def discover(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def load_extensions(options: LoadOptions, make_context: Callable[[str], Context]) -> ExtensionHost:
    """Every extension found, built-ins first; each failure is kept in its record (and logged with its
    traceback), never raised. PolicyError only when the pickle policy cannot be restored (see policies.py)."""
    records: list[ExtensionRecord] = []
    seen: dict[str, Path] = {}
    guard = PolicyGuard.capture()
    for builtin, folder in [(True, p) for p in discover(options.builtin_dir)] + \
                           [(False, p) for p in discover(options.user_dir)]:
        record = _load_one(folder, builtin, options, make_context, seen)
        changes = guard.restore()
        if changes and record.status == LOADED:
            _fail(record, "weakened the core's pickle policy, which was restored: " + "; ".join(changes))
            log.critical("Extension %s %s", record.name, record.error)
        elif changes:  # a hung extension's thread, still running, may have done it: nothing to blame by name
            log.critical("The core's pickle policy was changed while extensions loaded and was restored: %s",
                         "; ".join(changes))
        records.append(record)
        if record.status == LOADED:
            seen[record.name] = folder
        _log(record)
    skipped = sum(1 for r in records if not r.builtin and r.status == DISABLED and r.error.startswith("safe mode"))
    if options.safe_mode:
        log.warning("Safe mode (--safe-mode): %d user extension(s) skipped; built-in extensions are on.", skipped)
    guard.probe()
    return ExtensionHost(records)


def _log(record: ExtensionRecord) -> None:
    if record.status in (LOADED, DISABLED):
        log.info("Extension %s: %s%s (%.2f s)", record.name, record.status,
                 f" ({record.error})" if record.error else "", record.load_seconds)
    else:
        log.error("Extension %s: %s: %s (%.2f s)%s", record.name, record.status, record.error, record.load_seconds,
                  f"\n{record.traceback}" if record.traceback else "")


def _fail(record: ExtensionRecord, error: str, trace: str = "") -> None:
    """Mark ``record`` failed: it keeps nothing it registered."""
    record.status, record.error, record.traceback, record.extension = FAILED, error, trace, None


def _load_one(folder: Path, builtin: bool, options: LoadOptions, make_context: Callable[[str], Context],
              seen: dict[str, Path]) -> ExtensionRecord:
    record = ExtensionRecord(name=folder.name, path=folder, builtin=builtin)
    try:
        manifest = read_manifest(folder)
    except ManifestError as exc:
        record.status, record.error = INCOMPATIBLE, str(exc)
        return record
    record.name, record.manifest = manifest.name, manifest
    # The user may switch a built-in off too (as A1111's built-in extensions); safe mode leaves built-ins on.
    if manifest.name in options.disabled or (options.safe_mode and not builtin):
        record.status = DISABLED
        record.error = "safe mode (--safe-mode)" if options.safe_mode and not builtin else ""
        return record
    if not manifest.supports(API_VERSION):
        record.status = INCOMPATIBLE
        record.error = f"needs extension API {manifest.api}; this Stable Studio has {API_VERSION}"
        return record
    if manifest.name in seen:
        _fail(record, f"another extension named '{manifest.name}' is already loaded from {seen[manifest.name]}")
        return record
    attempt = _Attempt(folder, manifest.name, manifest.entry, make_context)
    thread = threading.Thread(target=attempt.run, name=f"extension-{manifest.name}", daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(options.import_seconds)
    record.load_seconds = time.monotonic() - started
    if thread.is_alive():
        # Python cannot stop a thread: it runs on in the background (a daemon, so it does not keep the app from
        # exiting); whatever it registers later is ignored, as its Extension object is never kept.
        frame = sys._current_frames().get(thread.ident or -1)
        where = "".join(traceback.format_stack(frame)) if frame is not None else ""
        _fail(record, f"did not finish importing in {options.import_seconds:g} s (skipped; its code may still be "
                      "running in the background, as a thread cannot be stopped)",
              f"Where it was when skipped:\n{where}" if where else "")
        return record
    if attempt.error:
        _fail(record, attempt.error, attempt.trace)
        _forget_modules(manifest.name)
        return record
    record.extension = attempt.extension
    return record


@dataclass
class _Attempt:
    """One extension's import and setup(), run in its own thread; the Extension is kept only once setup()
    returned, so a failure leaves nothing half-registered."""

    folder: Path
    name: str
    entry: str
    make_context: Callable[[str], Context]
    extension: Extension | None = None
    error: str = ""
    trace: str = field(default="", repr=False)

    def run(self) -> None:
        try:
            module = _import(self.folder, self.name, self.entry)
            setup = getattr(module, "setup", None)
            if not callable(setup):
                raise ManifestError(f"{self.entry} defines no setup(ext) function")
            extension = Extension(self.name, self.make_context(self.name))
            setup(extension)
        except BaseException as exc:  # noqa: BLE001 - any failure of an extension's code (even SystemExit) is its own
            self.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if isinstance(exc, SystemExit):
                self.error = f"called sys.exit({exc.code!r}) while loading (the app goes on without it)"
            self.trace = traceback.format_exc()
        else:
            self.extension = extension


def _forget_modules(name: str) -> None:
    """A failed extension's half-imported modules are dropped, so nothing can find them later."""
    package = f"{PACKAGE}.{name.replace('-', '_')}"
    for key in [k for k in sys.modules if k == package or k.startswith(package + ".")]:
        del sys.modules[key]


def _import(folder: Path, name: str, entry: str):
    package = f"{PACKAGE}.{name.replace('-', '_')}"
    if PACKAGE not in sys.modules:
        root = importlib.util.module_from_spec(importlib.machinery.ModuleSpec(PACKAGE, None, is_package=True))
        root.__path__ = []
        sys.modules[PACKAGE] = root
    spec = importlib.util.spec_from_file_location(package, folder / "__init__.py" if (folder / "__init__.py").is_file()
                                                  else None, submodule_search_locations=[str(folder)])
    if spec is None:
        spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
        spec.submodule_search_locations = [str(folder)]
    pkg = importlib.util.module_from_spec(spec)
    sys.modules[package] = pkg
    if spec.loader is not None:
        spec.loader.exec_module(pkg)
    entry_spec = importlib.util.spec_from_file_location(f"{package}.{entry[:-3]}", folder / entry)
    if entry_spec is None or entry_spec.loader is None:
        raise ManifestError(f"{entry} cannot be imported")
    module = importlib.util.module_from_spec(entry_spec)
    sys.modules[entry_spec.name] = module
    entry_spec.loader.exec_module(module)
    return module
