"""Textual-inversion embeddings: reading the files in ``embeddings/`` and deciding which fit a model.

Formats, as A1111's ``EmbeddingDatabase.load_from_file`` reads them:

- A1111 ``.pt``/``.bin`` pickles holding ``string_to_param`` (one term) plus ``step``, ``sd_checkpoint``,
  ``sd_checkpoint_name``; read with ``torch.load(weights_only=True)`` and only with ``--allow-pickle``;
- ``.safetensors`` with ``emb_params`` (A1111's export) or any single tensor (diffusers' ``{token: tensor}``);
- SDXL files with ``clip_l`` and ``clip_g``: each text encoder gets its own vectors.

A file is *loaded* for a model when its vectors have the width of every text encoder the model has, else
*skipped* with the reason (A1111's two lists). Names are file stems (sub-folders allowed, A1111's rule).
Vectors stay on the CPU here; conditioning copies them to the encoder's device per prompt (a few KB).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from webui.models import detect
from webui.models.folder_scan import ModelFolder
from webui.models.safetensors_file import sha256_file
from webui.types import CheckpointInfo

log = logging.getLogger(__name__)

SUFFIXES = (".safetensors", ".pt", ".bin")
PICKLE_SUFFIXES = (".pt", ".bin")
ONE_ENCODER = "*"  # the vectors of a one-encoder file (SD1.x CLIP-L, SD2.x OpenCLIP-H)
XL_KEYS = ("clip_l", "clip_g")
MAX_BYTES = 256 * 1024**2

# Which vectors each text encoder of a model takes, with its width: {"*": 768} for SD1.x, {"clip_l": 768,
# "clip_g": 1280} for SDXL, {"clip_g": 1280} for the SDXL refiner (OpenCLIP-G only).
EncoderWidths = Mapping[str, int]


class EmbeddingError(ValueError):
    """A file in ``embeddings/`` that cannot be used at all; the message says why (no path outside the folder)."""


@dataclass(frozen=True)
class Embedding:
    name: str
    path: Path
    vectors: dict[str, torch.Tensor]  # ONE_ENCODER, or "clip_l" and "clip_g"; fp32 [count, width] on the CPU
    sha256: str = ""
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None

    @property
    def count(self) -> int:
        """How many tokens the embedding stands for (A1111's ``vectors``)."""
        first = self.vectors.get("clip_g", next(iter(self.vectors.values())))
        return int(first.shape[0])

    @property
    def shape(self) -> int:
        """A1111's ``shape``: the vector width, the sum of both for an SDXL file."""
        return sum(int(v.shape[-1]) for v in self.vectors.values())

    @property
    def short_hash(self) -> str:
        """A1111's ``shorthash``: the first 12 hex of the sha256 of the whole file (used in ``TI hashes``)."""
        return self.sha256[:12]

    def widths(self) -> dict[str, int]:
        return {key: int(v.shape[-1]) for key, v in self.vectors.items()}


@dataclass(frozen=True)
class Skipped:
    """A file that is present but not usable with the model: why, and what little is known of it."""

    name: str
    path: Path
    reason: str
    embedding: Embedding | None = None  # None when the file could not be read at all

    @property
    def shape(self) -> int:
        return self.embedding.shape if self.embedding is not None else 0

    @property
    def count(self) -> int:
        return self.embedding.count if self.embedding is not None else 0


def _as_vectors(tensor: Any, name: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.dim() not in (1, 2):
        raise EmbeddingError(f"{name}: the vectors are not a 1- or 2-D float tensor")
    tensor = tensor.detach().to(torch.float32)
    tensor = tensor.unsqueeze(0) if tensor.dim() == 1 else tensor
    if tensor.shape[0] == 0 or not bool(torch.isfinite(tensor).all()):
        raise EmbeddingError(f"{name}: the vectors are empty or not finite")
    return tensor.contiguous()


def vectors_of(data: Mapping[str, Any], name: str) -> dict[str, torch.Tensor]:
    """The vectors of a loaded file's contents, by A1111's three rules."""
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)  # an old torch ParameterDict
        if not isinstance(params, Mapping) or len(params) != 1:
            raise EmbeddingError(f"{name}: the file holds {len(params) if isinstance(params, Mapping) else 'no'} "
                                 "terms; an embedding has exactly one")
        return {ONE_ENCODER: _as_vectors(next(iter(params.values())), name)}
    if "clip_l" in data and "clip_g" in data:
        vectors = {key: _as_vectors(data[key], name) for key in XL_KEYS}
        if vectors["clip_l"].shape[0] != vectors["clip_g"].shape[0]:
            raise EmbeddingError(f"{name}: clip_l and clip_g have different vector counts")
        return vectors
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if "emb_params" in tensors:
        return {ONE_ENCODER: _as_vectors(tensors["emb_params"], name)}
    if len(tensors) == 1:  # diffusers' {token: tensor}
        return {ONE_ENCODER: _as_vectors(next(iter(tensors.values())), name)}
    raise EmbeddingError(f"{name}: neither a textual-inversion embedding nor a diffusers concept "
                         f"({len(tensors)} tensors)")


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def read_embedding(path: Path, *, allow_pickle: bool, name: str | None = None) -> Embedding:
    """Read one file; EmbeddingError with the reason when it cannot be used at all."""
    name = name or path.stem
    suffix = path.suffix.lower()
    meta: Mapping[str, Any] = {}
    if suffix in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise EmbeddingError(f"{path.name} is a pickle (.pt/.bin), which can run code when loaded; start "
                                 "with --allow-pickle to use it, or convert it to .safetensors")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several unrelated types for bad or hostile pickles
            raise EmbeddingError(f"{path.name} could not be loaded as a weights-only pickle "
                                 f"({type(exc).__name__})") from None
        if not isinstance(data, Mapping):
            raise EmbeddingError(f"{path.name} does not hold a dictionary")
        meta = data
    else:
        try:
            data = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise EmbeddingError(f"{path.name} is not a readable .safetensors file ({exc})") from None
        meta = _safetensors_metadata(path)
    vectors = vectors_of(data, path.name)
    try:
        digest = sha256_file(path)
    except OSError:
        digest = ""
    checkpoint = meta.get("sd_checkpoint")
    checkpoint_name = meta.get("sd_checkpoint_name")
    return Embedding(name=name, path=path, vectors=vectors, sha256=digest, step=_int_or_none(meta.get("step")),
                     sd_checkpoint=checkpoint if isinstance(checkpoint, str) else None,
                     sd_checkpoint_name=checkpoint_name if isinstance(checkpoint_name, str) else None)


def _safetensors_metadata(path: Path) -> dict[str, Any]:
    """The ``__metadata__`` strings of a safetensors file (where our trainer records step and checkpoint)."""
    try:
        with open(path, "rb") as fh:
            length = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(min(length, 100_000_000)))
    except (OSError, ValueError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def misfit(embedding: Embedding, widths: EncoderWidths | None) -> str | None:
    """Why ``embedding`` cannot be used with a model whose encoders take ``widths`` (None: it can)."""
    if widths is None:
        return None  # no model to compare with: A1111 registers everything then
    have = embedding.widths()
    for key, width in widths.items():
        if key not in have:
            want = "an SDXL file (clip_l and clip_g)" if key in XL_KEYS else "a one-encoder file (SD1.x/SD2.x)"
            return f"made for another model family: this model needs {want}"
        if have[key] != width:
            return f"vectors {have[key]} wide where this model's text encoder takes {width}"
    return None


def pipe_widths(pipe: Any) -> dict[str, int]:
    """The encoder widths of a loaded diffusers pipeline."""
    first, second = getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)
    if second is None:
        return {ONE_ENCODER: int(first.config.hidden_size)} if first is not None else {}
    widths = {"clip_g": int(second.config.hidden_size)}
    if first is not None:
        widths["clip_l"] = int(first.config.hidden_size)
    return widths


def checkpoint_widths(info: CheckpointInfo) -> dict[str, int] | None:
    """The encoder widths of a checkpoint on disk, without loading it (None when they cannot be told)."""
    try:
        if info.kind == "safetensors":
            spec = detect.detect(detect.read_safetensors_header(info.path), info.name)
            hidden = [int(c["hidden_size"]) for c in spec.text_configs]
            if spec.family != "sdxl":
                return {ONE_ENCODER: hidden[0]}
            return {"clip_g": hidden[0]} if len(hidden) == 1 else {"clip_l": hidden[0], "clip_g": hidden[1]}
        if info.kind == "diffusers":
            widths = {}
            for folder in ("text_encoder", "text_encoder_2"):
                config = info.path / folder / "config.json"
                if config.is_file():
                    widths[folder] = int(json.loads(config.read_text())["hidden_size"])
            if "text_encoder_2" not in widths:
                return {ONE_ENCODER: widths["text_encoder"]} if widths else None
            return {"clip_g": widths["text_encoder_2"],
                    **({"clip_l": widths["text_encoder"]} if "text_encoder" in widths else {})}
    except Exception as exc:  # a broken file: the listing must still answer
        log.info("Cannot tell the text encoder widths of %s: %s", info.name, exc)
    return None


class EmbeddingSet:
    """The embeddings usable with one model (``loaded``) and the rest (``skipped``), A1111's two lists.

    ``find(tokens, position)`` is A1111's ``find_embedding_at_position``: the embedding whose name's tokens start
    at ``position``, the longest name first.
    """

    def __init__(self, loaded: dict[str, Embedding], skipped: dict[str, Skipped]):
        self.loaded = loaded
        self.skipped = skipped
        self._lookup: dict[int, tuple[Any, dict[int, list[tuple[list[int], Embedding]]]]] = {}
        self._lock = threading.Lock()

    def _ids_lookup(self, tokenizer) -> dict[int, list[tuple[list[int], Embedding]]]:
        with self._lock:
            cached = self._lookup.get(id(tokenizer))
            if cached is not None and cached[0] is tokenizer:
                return cached[1]
        lookup: dict[int, list[tuple[list[int], Embedding]]] = {}
        names = list(self.loaded)
        ids_per_name = tokenizer(names, add_special_tokens=False, truncation=False)["input_ids"] if names else []
        for ids, name in zip(ids_per_name, names):
            if ids:
                lookup.setdefault(ids[0], []).append((list(ids), self.loaded[name]))
        for matches in lookup.values():
            matches.sort(key=lambda item: len(item[0]), reverse=True)
        with self._lock:
            self._lookup[id(tokenizer)] = (tokenizer, lookup)
        return lookup

    def find(self, tokenizer, tokens: list[int], position: int) -> tuple[Embedding, int] | None:
        """(embedding, how many prompt tokens its name takes) when one is named at ``position``."""
        if not self.loaded:
            return None
        for ids, embedding in self._ids_lookup(tokenizer).get(tokens[position], ()):
            if tokens[position:position + len(ids)] == ids:
                return embedding, len(ids)
        return None


@dataclass
class JobEmbeddings:
    """One job's embeddings: what may be used, and what its prompts did use (for the ``TI hashes`` infotext)."""

    available: EmbeddingSet
    used: dict[str, Embedding] = field(default_factory=dict)

    def find(self, tokenizer, tokens: list[int], position: int) -> tuple[Embedding, int] | None:
        return self.available.find(tokenizer, tokens, position)

    def for_pipe(self, pipe: Any) -> JobEmbeddings:
        """The same job's embeddings for another pipeline (an SDXL refiner takes only ``clip_g``): those that fit
        it, noting use in the same ``used``."""
        widths = pipe_widths(pipe)
        fitting = {name: e for name, e in self.available.loaded.items() if misfit(e, widths) is None}
        return JobEmbeddings(EmbeddingSet(fitting, {}), self.used)

    def note_used(self, embedding: Embedding) -> None:
        self.used.setdefault(embedding.name, embedding)

    def hashes_text(self) -> str | None:
        """A1111's ``TI hashes`` value: ``name: shorthash`` of each embedding used, ``:`` and ``,`` dropped from
        names (they would break the infotext line)."""
        parts = [f"{name.replace(':', '').replace(',', '')}: {e.short_hash}"
                 for name, e in sorted(self.used.items(), key=lambda item: item[0].lower()) if e.short_hash]
        return ", ".join(parts) or None


class EmbeddingLibrary:
    """Every file under ``embeddings/`` (recursive), read once per (path, size, mtime); ``refresh()`` rescans.

    Reading is lazy (the first listing or job), so building the library costs nothing at startup.
    """

    def __init__(self, directory: Path, *, allow_pickle: bool = False, allow_external_links: bool = False):
        self._dir = directory
        self._allow_pickle = allow_pickle
        # An embedding is a few KB; a file of hundreds of MB here is a misplaced checkpoint, not worth reading.
        self._folder = ModelFolder(directory, allow_external_links=allow_external_links, min_size=1,
                                   max_size=MAX_BYTES)
        self._lock = threading.Lock()
        self._files: list[Embedding | Skipped] | None = None
        self._cache: dict[tuple[str, int, int], Embedding | Skipped] = {}
        self._sets: dict[tuple, EmbeddingSet] = {}
        self._widths: dict[tuple[str, str], dict[str, int] | None] = {}

    @property
    def directory(self) -> Path:
        return self._dir

    def refresh(self) -> list[Embedding | Skipped]:
        scan = self._folder.scan(SUFFIXES)
        paths = sorted(scan.files, key=lambda p: p.relative_to(self._dir).as_posix().lower())
        files = [self._read(path) for path in paths]
        files += [Skipped(s.path.stem, s.path, s.reason) for s in scan.skipped
                  if s.path.suffix.lower() in SUFFIXES]
        live = {str(p) for p in paths}
        with self._lock:
            self._files = files
            self._cache = {k: v for k, v in self._cache.items() if k[0] in live}
            self._sets = {}
        return list(files)

    def files(self) -> list[Embedding | Skipped]:
        with self._lock:
            files = self._files
        return list(files) if files is not None else self.refresh()

    def for_widths(self, widths: EncoderWidths | None) -> EmbeddingSet:
        """The loaded/skipped split for a model whose encoders take ``widths`` (None: no model known)."""
        files = self.files()
        key = tuple(sorted(widths.items())) if widths is not None else None
        with self._lock:
            cached = self._sets.get(key) if self._files is not None else None
        if cached is not None:
            return cached
        loaded: dict[str, Embedding] = {}
        skipped: dict[str, Skipped] = {}
        for item in files:
            if isinstance(item, Skipped):
                skipped.setdefault(item.name, item)
                continue
            reason = misfit(item, widths)
            if reason is not None:
                skipped.setdefault(item.name, Skipped(item.name, item.path, reason, item))
            elif item.name in loaded:
                # Two files with one name (in different sub-folders): the prompt can only mean one.
                skipped.setdefault(item.name, Skipped(item.name, item.path, "another file has the same name",
                                                      item))
            else:
                loaded[item.name] = item
        result = EmbeddingSet(dict(sorted(loaded.items(), key=lambda kv: kv[0].lower())), skipped)
        with self._lock:
            self._sets[key] = result
        return result

    def for_pipe(self, pipe: Any) -> EmbeddingSet:
        return self.for_widths(pipe_widths(pipe))

    def for_checkpoint(self, info: CheckpointInfo) -> EmbeddingSet:
        """The split for a checkpoint on disk, its widths read from the file once (listings ask often)."""
        key = (str(info.path), info.sha256 or info.title)
        with self._lock:
            known = key in self._widths
            widths = self._widths.get(key)
        if not known:
            widths = checkpoint_widths(info)
            with self._lock:
                self._widths[key] = widths
        return self.for_widths(widths)

    def _read(self, path: Path) -> Embedding | Skipped:
        try:
            stat = path.stat()
        except OSError:
            return Skipped(path.stem, path, "unreadable")
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            hit = self._cache.get(key)
        if hit is None:
            try:
                hit = read_embedding(path, allow_pickle=self._allow_pickle)
            except EmbeddingError as exc:
                log.warning("Embedding skipped: %s", exc)
                hit = Skipped(path.stem, path, str(exc))
            with self._lock:
                self._cache[key] = hit
        return hit
