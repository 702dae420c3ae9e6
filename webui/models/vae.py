"""External VAE files (A1111's ``models/VAE`` and ``sd_vae`` option): which file a choice means, and loading it.

Choices as A1111 names them: ``Automatic`` (a VAE file named like the checkpoint, ``<checkpoint>.vae.safetensors``
/ ``.vae.pt`` / ``.vae.ckpt``, in ``models/VAE`` or beside the checkpoint; else the checkpoint's own VAE),
``None`` (the checkpoint's own VAE) or a file in ``models/VAE`` by its file name (A1111's ``sd_vae`` values; the
name without extension is accepted too). ``.pt``/``.ckpt`` files are pickles: refused unless ``--allow-pickle``,
and then read with ``weights_only``.

A loaded VAE is built with the checkpoint VAE's config and its dtype (an fp16-fixed SDXL VAE runs in fp16 as is);
the job places it through its device owner and hands it to its own pipeline object, never into the shared one.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors import SafetensorError
from safetensors.torch import load_file

from webui.errors import InvalidRequest, ModelLoadError
from webui.models.folder_scan import ModelFolder
from webui.models.loader import _instantiate

__all__ = ["AUTOMATIC", "NONE", "VaeChoice", "VaeFiles", "load_vae"]

AUTOMATIC, NONE = "Automatic", "None"
VAE_SUFFIXES = (".safetensors", ".pt", ".ckpt")
PICKLE_SUFFIXES = (".pt", ".ckpt")
LDM_PREFIX = "first_stage_model."
_IGNORED = ("model_ema.", "loss")  # training leftovers in some VAE files (A1111 drops them too)


@dataclass(frozen=True)
class VaeChoice:
    """The file a job uses (None: the checkpoint's own VAE) and what its infotext records."""

    path: Path | None = None
    short_hash: str | None = None  # A1111's "VAE hash": the first 10 hex of the file's sha256

    @property
    def name(self) -> str | None:
        """A1111's "VAE" value: the file name."""
        return self.path.name if self.path is not None else None


class VaeFiles:
    """The VAE files a server offers and which one a choice means. ``sha256(path)`` is the shared hash cache.

    The folder is scanned once, then again when its own entries change (its mtime: files added, removed or renamed
    at the top level) or on :meth:`refresh` (the UI's Refresh button, ``POST /sdapi/v1/refresh-vae``; needed for
    changes inside sub-folders), so a request naming a VAE does not walk the folder (and log its skipped entries)
    each time.
    """

    def __init__(self, vae_dir: Path, sha256: Callable[[Path], str], *, allow_pickle: bool = False,
                 allow_external_links: bool = False):
        self._folder = ModelFolder(vae_dir, allow_external_links=allow_external_links)
        self._dir = vae_dir
        self._sha256 = sha256
        self._allow_pickle = allow_pickle
        self._lock = threading.Lock()
        self._listed: list[Path] | None = None
        self._stamp: int | None = None  # the folder's mtime at the last scan

    def files(self) -> list[Path]:
        """``models/VAE`` files (recursive), sorted by file name as A1111's dropdown is; from the last scan."""
        with self._lock:
            if self._listed is None or self._folder_stamp() != self._stamp:
                self._scan()
            return list(self._listed)

    def refresh(self) -> list[Path]:
        """Scan the folder again (new, removed or renamed files) and return the new list."""
        with self._lock:
            self._scan()
            return list(self._listed)

    def _scan(self) -> None:
        self._stamp = self._folder_stamp()
        found = self._folder.scan(VAE_SUFFIXES).files
        self._listed = sorted(found, key=lambda p: (p.name.lower(), str(p)))

    def _folder_stamp(self) -> int | None:
        try:
            return os.stat(self._dir).st_mtime_ns
        except OSError:
            return None

    def choices(self) -> list[str]:
        return [AUTOMATIC, NONE, *(p.name for p in self.files())]

    def find(self, name: str) -> Path | None:
        """A listed file by its file name (or the name without extension); None when there is none."""
        files = self.files()
        return next((p for p in files if p.name == name), None) or \
            next((p for p in files if p.name.removesuffix(p.suffix) == name), None)

    def problem(self, choice: object) -> str | None:
        """Why ``choice`` cannot be used, or None."""
        if not isinstance(choice, str):
            return "must be a VAE file name, Automatic or None"
        if choice in (AUTOMATIC, NONE):
            return None
        path = self.find(choice)
        if path is None:
            listed = ", ".join(p.name for p in self.files()) or f"none (put .safetensors files in {self._dir})"
            return f"no VAE named '{choice}'. Use Automatic, None or one of: {listed}"
        return self._pickle_problem(path)

    def check(self, field: str, choice: object) -> None:
        if (problem := self.problem(choice)) is not None:
            raise InvalidRequest(field, problem)

    def _pickle_problem(self, path: Path) -> str | None:
        if path.suffix.lower() in PICKLE_SUFFIXES and not self._allow_pickle:
            return (f"{path.name} is a pickle (.pt/.ckpt), which can run code when loaded; use a .safetensors "
                    "VAE, or start with --allow-pickle if you trust its source")
        return None

    def resolve(self, choice: str, checkpoint_path: Path) -> VaeChoice:
        """The file ``choice`` means for the checkpoint at ``checkpoint_path``; InvalidRequest when it is gone."""
        if choice == NONE:
            return VaeChoice()
        if choice == AUTOMATIC:
            path = self._beside(checkpoint_path)
            if path is None:
                return VaeChoice()
        else:
            self.check("sd_vae", choice)  # checked when queued; the file may have gone since
            path = self.find(choice)
            assert path is not None
        return VaeChoice(path, self._sha256(path)[:10])

    def _beside(self, checkpoint_path: Path) -> Path | None:
        """A1111's Automatic: ``<checkpoint name>.vae.<ext>`` in models/VAE, else beside the checkpoint."""
        stem = checkpoint_path.name.removesuffix(checkpoint_path.suffix) if checkpoint_path.is_file() \
            else checkpoint_path.name
        wanted = [f"{stem}.vae{suffix}" for suffix in VAE_SUFFIXES
                  if self._allow_pickle or suffix not in PICKLE_SUFFIXES]
        for path in self.files():
            if path.name in wanted:
                return path
        for name in wanted:
            candidate = checkpoint_path.parent / name
            if candidate.is_file():
                return candidate
        return None


def load_vae(path: Path, config: dict[str, Any], dtype: torch.dtype, allow_pickle: bool = False) -> AutoencoderKL:
    """An AutoencoderKL with ``config`` (the checkpoint VAE's) holding the weights of the VAE file at ``path``.

    Reads the LDM layout (``encoder.*``/``decoder.*``/``quant_conv.*``, with or without ``first_stage_model.``) and
    the diffusers layout. ModelLoadError naming the file when it cannot be read or does not fit the checkpoint.
    """
    state = _read(path, allow_pickle)
    state = {k.removeprefix(LDM_PREFIX): v for k, v in state.items() if not k.startswith(_IGNORED)}
    if not any(k.startswith(("encoder.", "decoder.")) for k in state):
        raise ModelLoadError(f"VAE {path.name} holds no VAE weights (no encoder.*/decoder.* tensors).")
    init = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        diffusers_layout = any(".up_blocks." in k or ".down_blocks." in k for k in state)
        weights = state if diffusers_layout else convert_ldm_vae_checkpoint(state, init)
        return _instantiate(lambda: AutoencoderKL(**init), weights, dtype)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ModelLoadError(f"VAE {path.name} does not fit this checkpoint's VAE ({_short(exc)}).") from exc


def _read(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelLoadError(f"VAE {path.name} is a pickle; start with --allow-pickle to use it.")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several unrelated types for bad pickles
            raise ModelLoadError(f"VAE {path.name} could not be loaded as a weights-only pickle: "
                                 f"{_short(exc)}") from exc
        data = data.get("state_dict", data) if isinstance(data, dict) else None
        if not isinstance(data, dict):
            raise ModelLoadError(f"VAE {path.name} does not contain a state dict.")
        return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"VAE {path.name} could not be read: {_short(exc)}") from exc


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]
