"""The Extra Networks panel's data: one card per checkpoint, textual-inversion embedding and LoRA on disk.

What a card shows follows A1111's ``ui_extra_networks*.py``: a preview image found beside the model file
(``name.preview.png``, then ``name.png``; ``.jpg``/``.jpeg``/``.webp`` too), a description (``name.txt``,
``name.description.txt``, or ``description`` in A1111's user metadata ``name.json``), and for LoRAs the kohya
``ss_*`` training metadata. Cards are plain data: the UI escapes every string (file names come from anyone who
can drop a file in a model folder).

Preview images are served by card (kind + the model file's path inside its folder), never by a path the client
names: only a file beside a listed model, passing the model folder's rules (regular file, links inside the
folder unless allowed), can be read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from webui.errors import InvalidRequest, ModelNotFound
from webui.models.embeddings import Embedding, EmbeddingLibrary, Skipped
from webui.models.folder_scan import ModelFolder
from webui.models.loras import LoraInfo, LoraRegistry
from webui.models.manager import ModelManager
from webui.models.registry import ModelRegistry
from webui.services.listings import embeddings_for_current_model

KINDS = ("checkpoints", "textual_inversion", "lora")
LABELS = {"checkpoints": "Checkpoints", "textual_inversion": "Textual Inversion", "lora": "LoRA"}
PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
PREVIEW_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
MAX_PREVIEW_BYTES = 20 * 1024**2
MAX_DESCRIPTION_BYTES = 4096
TOP_TAGS = 10
SORTS = ("Name", "Date modified")


@dataclass(frozen=True)
class Card:
    kind: str                 # one of KINDS
    name: str                 # what the card is titled with
    key: str                  # the model's path inside its folder (POSIX): the card's id, and the preview's
    insert: str               # the prompt text a click toggles; for a checkpoint, its title
    path: Path
    has_preview: bool = False
    description: str = ""
    mtime: float = 0.0
    details: dict[str, str] = field(default_factory=dict)   # label -> value, shown in the card's details
    tags: tuple[str, ...] = ()                               # kohya's most frequent training tags
    note: str = ""            # e.g. why an embedding cannot be used with the current checkpoint

    def matches(self, query: str) -> bool:
        """A1111's search: every word of ``query`` in the name, path, description or tags (any case)."""
        haystack = " ".join([self.name, self.key, self.description, *self.tags]).lower()
        return all(word in haystack for word in query.lower().split())


def _siblings(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files named like ``path`` with another ending, in A1111's order of preference."""
    base = path.parent / (path.name if path.is_dir() else path.stem)
    return [Path(f"{base}{suffix}") for suffix in suffixes]


def _read_small(path: Path, folder: ModelFolder) -> str | None:
    if not path.exists() or folder.check_file(path) is not None:
        return None
    try:
        with open(path, "rb") as fh:
            return fh.read(MAX_DESCRIPTION_BYTES).decode("utf-8", errors="replace").strip()
    except OSError:
        return None


def _description(path: Path, folder: ModelFolder) -> str:
    for candidate in _siblings(path, (".txt", ".description.txt")):
        text = _read_small(candidate, folder)
        if text:
            return text
    raw = _read_small(_siblings(path, (".json",))[0], folder)
    if raw:
        try:
            data = json.loads(raw)
        except ValueError:
            return ""
        value = data.get("description") if isinstance(data, dict) else None
        return value.strip() if isinstance(value, str) else ""
    return ""


def find_preview(path: Path, folder: ModelFolder) -> Path | None:
    """The preview image beside a model file that the folder's rules allow reading (None: no preview)."""
    stemmed = _siblings(path, tuple(f".preview{s}" for s in PREVIEW_SUFFIXES) + PREVIEW_SUFFIXES)
    for candidate in stemmed:
        if candidate.exists() and folder.check_file(candidate) is None \
                and candidate.stat().st_size <= MAX_PREVIEW_BYTES:
            return candidate
    return None


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def top_tags(metadata: dict) -> list[str]:
    """kohya's ``ss_tag_frequency`` ({dataset: {tag: count}}), summed over datasets, most frequent first."""
    totals: dict[str, int] = {}
    frequency = metadata.get("ss_tag_frequency")
    if isinstance(frequency, dict):
        for tags in frequency.values():
            if isinstance(tags, dict):
                for tag, count in tags.items():
                    if isinstance(count, (int, float)) and str(tag).strip():
                        totals[str(tag).strip()] = totals.get(str(tag).strip(), 0) + int(count)
    return [tag for tag, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))][:TOP_TAGS]


_LORA_DETAILS = (("Base model", ("ss_sd_model_name",)), ("Base model version", ("ss_base_model_version",)),
                 ("Resolution", ("ss_resolution",)), ("Network dim", ("ss_network_dim",)),
                 ("Network alpha", ("ss_network_alpha",)), ("Network module", ("ss_network_module",)),
                 ("Training images", ("ss_num_train_images",)), ("Epochs", ("ss_num_epochs", "ss_epoch")),
                 ("Steps", ("ss_max_train_steps", "ss_steps")), ("Output name", ("ss_output_name",)))


def lora_details(info: LoraInfo) -> dict[str, str]:
    details: dict[str, str] = {}
    for label, keys in _LORA_DETAILS:
        value = next((info.metadata[k] for k in keys if info.metadata.get(k) not in (None, "", "None")), None)
        if value is not None and not isinstance(value, (dict, list)):
            details[label] = str(value)
    if info.short_hash:
        details["Hash"] = info.short_hash
    return details


class ExtraNetworksService:
    """Cards for the three kinds, from the same registries the API lists (one scan serves both)."""

    def __init__(self, registry: ModelRegistry, loras: LoraRegistry, embeddings: EmbeddingLibrary,
                 manager: ModelManager, *, allow_external_links: bool = False,
                 default_multiplier: Callable[[], float] = lambda: 1.0):
        self._registry = registry
        self._loras = loras
        self._embeddings = embeddings
        self._manager = manager
        self._links = allow_external_links
        self._multiplier = default_multiplier

    def _folder(self, kind: str) -> ModelFolder:
        root = {"checkpoints": self._registry.directory, "lora": self._loras.directory,
                "textual_inversion": self._embeddings.directory}[kind]
        return ModelFolder(root, allow_external_links=self._links)

    def refresh(self) -> dict[str, list[Card]]:
        """Rescan all three folders (new files appear, deleted ones go) and return the new cards. The app calls
        this after anything writes a model (e.g. a finished training run)."""
        self._registry.refresh()
        self._loras.refresh()
        self._embeddings.refresh()
        return {kind: self.cards(kind) for kind in KINDS}

    def cards(self, kind: str, query: str = "", sort: str = "Name") -> list[Card]:
        if kind not in KINDS:
            raise InvalidRequest("kind", f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
        builder = {"checkpoints": self._checkpoint_cards, "textual_inversion": self._embedding_cards,
                   "lora": self._lora_cards}[kind]
        cards = [card for card in builder() if not query.strip() or card.matches(query)]
        if sort == "Date modified":
            return sorted(cards, key=lambda c: (-c.mtime, c.name.lower()))
        return sorted(cards, key=lambda c: (c.name.lower(), c.key))

    def _card(self, kind: str, name: str, key: str, insert: str, path: Path, **extra) -> Card:
        folder = self._folder(kind)
        return Card(kind=kind, name=name, key=key, insert=insert, path=path,
                    has_preview=find_preview(path, folder) is not None, description=_description(path, folder),
                    mtime=_mtime(path), **extra)

    def _checkpoint_cards(self) -> list[Card]:
        return [self._card("checkpoints", info.model_name, info.name, info.title, info.path,
                           details={"Title": info.title, "Kind": info.kind})
                for info in self._registry.list()]

    def _lora_cards(self) -> list[Card]:
        root = self._loras.directory
        weight = f"{self._multiplier():g}"
        return [self._card("lora", info.name, info.path.relative_to(root).as_posix(),
                           f"<lora:{info.name}:{weight}>", info.path, details=lora_details(info),
                           tags=tuple(top_tags(info.metadata)))
                for info in self._loras.list()]

    def _embedding_cards(self) -> list[Card]:
        root = self._embeddings.directory
        split = embeddings_for_current_model(self._embeddings, self._manager)
        cards = []
        for item in self._embeddings.files():
            details: dict[str, str] = {}
            if isinstance(item, Embedding):
                details = {"Vectors": str(item.count), "Width": str(item.shape), "Hash": item.short_hash}
                if item.step is not None:
                    details["Step"] = str(item.step)
            skipped = split.skipped.get(item.name)
            usable = isinstance(item, Embedding) and split.loaded.get(item.name) is item
            note = "" if usable else (skipped.reason if skipped is not None else (
                item.reason if isinstance(item, Skipped) else ""))
            cards.append(self._card("textual_inversion", item.name, item.path.relative_to(root).as_posix(),
                                    item.name, item.path, details=details, note=note))
        return cards

    def preview(self, kind: str, key: str) -> tuple[Path, str]:
        """(file, media type) of a listed model's preview; ModelNotFound for anything else."""
        if kind not in KINDS:
            raise ModelNotFound(f"unknown kind {kind!r}")
        card = next((c for c in self.cards(kind) if c.key == key), None)
        preview = find_preview(card.path, self._folder(kind)) if card is not None else None
        if preview is None:
            raise ModelNotFound(f"no preview image for {kind} {key!r}")
        return preview, PREVIEW_TYPES[preview.suffix.lower()]
