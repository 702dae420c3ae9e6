"""The Extensions tab's *Available* list: an index of extensions from an https URL or a local JSON file.

A1111's ``index.json`` format is read as it is (``{"tags": {...}, "extensions": [{"name", "url", "description",
"tags": [...]}, ...]}``); a bare list of such entries also works. Every problem is one line for the user.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

MAX_BYTES = 16 * 1024 * 1024  # A1111's whole index is about 1 MB
NO_INDEX = ("No extension index configured: start with --extensions-index URL|FILE (an https URL or a local JSON "
            "file in A1111's index.json format)")


@dataclass(frozen=True)
class IndexEntry:
    name: str
    url: str
    description: str = ""
    tags: tuple[str, ...] = ()
    installed: bool = False


@dataclass(frozen=True)
class Index:
    entries: tuple[IndexEntry, ...] = ()
    message: str = ""          # one line when the index could not be had (offline, malformed, none configured)

    def search(self, query: str) -> list[IndexEntry]:
        """Entries whose name, description or a tag contains every word of ``query`` (any case)."""
        words = query.lower().split()
        return [e for e in self.entries
                if all(w in " ".join((e.name, e.description, *e.tags)).lower() for w in words)]

    def marked(self, installed_urls: set[str], installed_names: set[str]) -> "Index":
        """The same index with the entries already installed marked (by URL or by name)."""
        urls = {normal_url(u) for u in installed_urls if u}
        names = {n.lower() for n in installed_names}
        entries = tuple(IndexEntry(e.name, e.url, e.description, e.tags,
                                   normal_url(e.url) in urls or e.name.lower() in names) for e in self.entries)
        return Index(entries, self.message)


def normal_url(url: str) -> str:
    """A git URL compared loosely: any case, without a trailing ``/`` or ``.git``."""
    url = url.strip().rstrip("/").lower()
    return url[:-4] if url.endswith(".git") else url


def load_index(source: str, timeout: float = 5.0) -> Index:
    """The index ``source`` names: an https URL (fetched with ``timeout``) or a JSON file on this machine."""
    source = source.strip()
    if not source:
        return Index(message=NO_INDEX)
    if "://" in source:
        if urlsplit(source).scheme.lower() != "https":
            return Index(message=f"Extension index {source}: only https URLs (or a local file) are read")
        try:
            with urllib.request.urlopen(source, timeout=timeout) as response:  # noqa: S310 - https only, above
                raw = response.read(MAX_BYTES + 1)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return Index(message=f"Extension index unreachable (offline?): {source}: {reason}")
    else:
        try:
            with Path(source).expanduser().open("rb") as handle:
                raw = handle.read(MAX_BYTES + 1)
        except OSError as exc:
            return Index(message=f"Extension index {source} cannot be read: {exc.strerror or exc}")
    if len(raw) > MAX_BYTES:
        return Index(message=f"Extension index {source} is larger than {MAX_BYTES // (1024 * 1024)} MB")
    return parse_index(raw, source)


def parse_index(raw: bytes, source: str = "index") -> Index:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        return Index(message=f"Extension index {source} is not valid JSON: {exc}")
    items = data.get("extensions") if isinstance(data, dict) else data
    if not isinstance(items, list):
        return Index(message=f"Extension index {source} has no \"extensions\" list (A1111's index.json format)")
    entries = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("url"), str) or not item["url"].strip():
            continue  # an entry without a URL cannot be installed; the rest of the index is still useful
        tags = item.get("tags")
        entries.append(IndexEntry(
            name=str(item.get("name") or item["url"].rstrip("/").rsplit("/", 1)[-1]),
            url=item["url"].strip(),
            description=str(item.get("description") or ""),
            tags=tuple(str(t) for t in tags) if isinstance(tags, list) else ()))
    return Index(tuple(entries))
