"""``extension.toml``: what an extension declares about itself, read and checked without importing its code."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

MANIFEST = "extension.toml"
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")  # also its /ext/<name>/ route and its data folder


class ManifestError(ValueError):
    """The manifest is missing or wrong; the message names the file and the field."""


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    api: str                 # the API versions it works with, a PEP 440 range: ">=1.0,<2"
    entry: str = "main.py"   # a .py file in the extension's folder defining ``setup(ext)``
    requirements: tuple[str, ...] = ()  # pip requirement lines, installed once when the extension is installed
    description: str = ""
    url: str = ""
    tags: tuple[str, ...] = ()
    license: str = ""

    def supports(self, api_version: str) -> bool:
        return Version(api_version) in SpecifierSet(self.api)


def read_manifest(folder: Path) -> Manifest:
    """The manifest of the extension in ``folder``; ManifestError naming the problem."""
    path = folder / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{folder.name}: no {MANIFEST} (A1111-style extensions that patch its internals are "
                            "not supported; see docs/extensions.md)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ManifestError(f"{folder.name}/{MANIFEST}: cannot be read: {exc}") from None
    return parse_manifest(data, f"{folder.name}/{MANIFEST}")


def parse_manifest(data: dict, where: str = MANIFEST) -> Manifest:
    def text(key: str, required: bool = False) -> str:
        value = data.get(key, "")
        if not isinstance(value, str) or (required and not value.strip()):
            raise ManifestError(f"{where}: '{key}' must be a{' non-empty' if required else ''} string")
        return value.strip()

    def strings(key: str) -> tuple[str, ...]:
        value = data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise ManifestError(f"{where}: '{key}' must be a list of strings")
        return tuple(v.strip() for v in value)

    unknown = sorted(set(data) - {f for f in Manifest.__dataclass_fields__})
    if unknown:
        raise ManifestError(f"{where}: unknown key(s) {', '.join(unknown)}")
    name = text("name", required=True)
    if not NAME.fullmatch(name):
        raise ManifestError(f"{where}: name '{name}' must be lower-case letters, digits, '-' or '_' (at most 64)")
    version = text("version", required=True)
    try:
        Version(version)
    except InvalidVersion:
        raise ManifestError(f"{where}: version '{version}' is not a version number like 1.2.0") from None
    api = text("api", required=True)
    try:
        SpecifierSet(api)
    except InvalidSpecifier:
        raise ManifestError(f"{where}: api '{api}' is not a version range like \">=1.0,<2\"") from None
    entry = text("entry") or "main.py"
    if "/" in entry or "\\" in entry or not entry.endswith(".py") or entry.startswith("."):
        raise ManifestError(f"{where}: entry '{entry}' must be a .py file in the extension's folder")
    return Manifest(name=name, version=version, api=api, entry=entry, requirements=strings("requirements"),
                    description=text("description"), url=text("url"), tags=strings("tags"),
                    license=text("license"))
