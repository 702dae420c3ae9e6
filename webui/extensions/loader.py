"""Find extensions (the built-in ones in webui/builtin_extensions, the user's in extensions/), check their manifests
and import each one, so that one broken extension is reported and skipped and the app still starts."""

from __future__ import annotations

import importlib.util
import logging
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from webui.extensions.api import API_VERSION, Context, Extension
from webui.extensions.host import DISABLED, FAILED, INCOMPATIBLE, LOADED, ExtensionHost, ExtensionRecord
from webui.extensions.manifest import ManifestError, read_manifest

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
    records: list[ExtensionRecord] = []
    seen: dict[str, Path] = {}
    for builtin, folder in [(True, p) for p in discover(options.builtin_dir)] + \
                           [(False, p) for p in discover(options.user_dir)]:
        record = _load_one(folder, builtin, options, make_context, seen)
        records.append(record)
        if record.status == LOADED:
            seen[record.name] = folder
        level = logging.INFO if record.status in (LOADED, DISABLED) else logging.ERROR
        log.log(level, "Extension %s: %s%s (%.2f s)", record.name, record.status,
                f": {record.error}" if record.error else "", record.load_seconds)
    return ExtensionHost(records)


def _load_one(folder: Path, builtin: bool, options: LoadOptions, make_context: Callable[[str], Context],
              seen: dict[str, Path]) -> ExtensionRecord:
    record = ExtensionRecord(name=folder.name, path=folder, builtin=builtin)
    try:
        manifest = read_manifest(folder)
    except ManifestError as exc:
        record.status, record.error = INCOMPATIBLE, str(exc)
        return record
    record.name, record.manifest = manifest.name, manifest
    if not builtin and (options.safe_mode or manifest.name in options.disabled):
        record.status = DISABLED
        record.error = "safe mode (--safe-mode)" if options.safe_mode else ""
        return record
    if not manifest.supports(API_VERSION):
        record.status = INCOMPATIBLE
        record.error = f"needs extension API {manifest.api}; this Stable Studio has {API_VERSION}"
        return record
    if manifest.name in seen:
        record.status, record.error = FAILED, f"another extension named '{manifest.name}' is loaded from {seen[manifest.name]}"
        return record
    started = time.monotonic()
    try:
        module = _import(folder, manifest.name, manifest.entry)
        setup = getattr(module, "setup", None)
        if not callable(setup):
            raise ManifestError(f"{manifest.entry} defines no setup(ext) function")
        extension = Extension(manifest.name, make_context(manifest.name))
        setup(extension)
    except BaseException as exc:  # noqa: BLE001 - any failure of an extension's code (even SystemExit) is its own
        record.status, record.error = FAILED, f"{type(exc).__name__}: {exc}"
        record.traceback = traceback.format_exc()
    else:
        record.extension = extension
    record.load_seconds = time.monotonic() - started
    return record


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
