"""The model manager: the one owner of loaded checkpoints and device memory.

Everything that runs a model borrows it through ``lease()``, which holds the manager's lock for the duration of
the work, so a checkpoint switch never happens under a running job. A small LRU keeps recently used checkpoints
in RAM so switching back is quick. The checkpoint last used successfully is remembered across restarts
(``last_checkpoint``) and is the default after one.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from webui.config import Settings
from webui.errors import ModelLoadError, NoModelAvailable
from webui.models import detect, loader, memory
from webui.models.last_checkpoint import LastCheckpoint
from webui.models.loader import LoadedModel
from webui.models.registry import ModelRegistry
from webui.types import CheckpointInfo

log = logging.getLogger(__name__)

Loader = Callable[[CheckpointInfo, torch.dtype, bool], LoadedModel]


class ModelManager:
    def __init__(self, settings: Settings, registry: ModelRegistry, load: Loader = loader.load,
                 last_used: LastCheckpoint | None = None):
        self._settings = settings
        self._registry = registry
        self._load = load
        self._last_used = last_used or LastCheckpoint(settings.last_checkpoint_file)
        self._lock = threading.RLock()
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()  # title -> model, most recent last
        self._selected: CheckpointInfo | None = None
        self.device = memory.resolve_device(settings.device)
        self.dtype = memory.resolve_dtype(settings.precision, self.device)
        self.profile = memory.resolve_profile(settings.memory_profile, self.device)

    @property
    def registry(self) -> ModelRegistry:
        return self._registry

    @property
    def selected(self) -> CheckpointInfo | None:
        """The checkpoint new jobs use by default. Until the user picks one: the last one used successfully
        (remembered across restarts) if it is still listed, else the first that looks usable for txt2img from
        its header (a normal, parseable model), else the first on disk."""
        with self._lock:
            if self._selected is None or not self._selected.path.exists():
                self._selected = self._default(self._registry.list())
            return self._selected

    def _default(self, items: list[CheckpointInfo]) -> CheckpointInfo | None:
        remembered = self._last_used.name
        for info in items:
            if info.name == remembered:
                return info
        return next((info for info in items if _plain_txt2img(info)), items[0] if items else None)

    def loaded_titles(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def select(self, query: str) -> CheckpointInfo:
        """Make ``query`` the default checkpoint, loading it now so errors surface immediately.

        On failure the previous selection (and whatever is loaded) stays usable.
        """
        info = self._registry.find(query)
        with self._lock:
            self._get(info)
            self._selected = info
            self._last_used.remember(info)
        return info

    @contextmanager
    def lease(self, query: str | None = None) -> Iterator[LoadedModel]:
        """Borrow a loaded model (the selected one, or ``query``) for the duration of a job.

        The selected one, once loaded, is remembered as the last used; a per-request ``query`` (A1111's
        override_settings, restored afterwards) does not change the default.
        """
        with self._lock:
            if query:
                info = self._registry.find(query)
                model = self._get(info)
            else:
                info = self.selected
                if info is None:
                    raise NoModelAvailable(
                        f"No checkpoint found. Put a Stable Diffusion .safetensors file (or a diffusers folder) in "
                        f"{self._registry.directory} and press refresh.")
                model = self._get(info)
                self._last_used.remember(info)
            yield model

    def _get(self, info: CheckpointInfo) -> LoadedModel:
        model = self._loaded.get(info.title)
        if model is not None:
            self._loaded.move_to_end(info.title)
            return model
        self._evict(keep=self._settings.max_loaded_models - 1)
        log.info("Loading %s (%s, %s, profile %s)", info.title, self.device, self.dtype, self.profile)
        model = self._load(info, self.dtype, self._settings.allow_pickle)
        try:
            memory.apply_plan(model.pipe, memory.plan_for(self.profile, model.family), self.device)
        except torch.cuda.OutOfMemoryError as exc:
            del model
            self._free_device_memory()
            raise ModelLoadError(f"Out of GPU memory while loading {info.name}. Try --memory-profile 4gb.") from exc
        self._loaded[info.title] = model
        return model

    def _evict(self, keep: int) -> None:
        while len(self._loaded) > max(0, keep):
            title, _ = self._loaded.popitem(last=False)
            log.info("Unloading %s", title)
        self._free_device_memory()

    def unload_all(self) -> None:
        with self._lock:
            self._evict(keep=0)

    def _free_device_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def memory_report(self) -> dict:
        report: dict = {"device": str(self.device), "dtype": str(self.dtype).replace("torch.", ""),
                        "profile": self.profile, "loaded": self.loaded_titles()}
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            report["cuda"] = {"free": free, "total": total, "allocated": torch.cuda.memory_allocated(self.device),
                              "peak": torch.cuda.max_memory_allocated(self.device),
                              "stats": dict(torch.cuda.memory_stats(self.device))}
        return report


def _plain_txt2img(info: CheckpointInfo) -> bool:
    """Whether a checkpoint looks usable for txt2img from its header or config alone (no weights read): a
    normal 4-channel model that parses. Pickles cannot be told without unpickling, so they never qualify."""
    try:
        if info.kind == "diffusers":
            config = json.loads((info.path / "unet" / "config.json").read_text(encoding="utf-8"))
            return isinstance(config, dict) and config.get("in_channels", 4) == 4
        if info.kind == "safetensors":
            return detect.detect(detect.read_safetensors_header(info.path), info.name).variant == "normal"
    except (ModelLoadError, OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        log.info("Not choosing %s as the default checkpoint: %s", info.name, exc)
    return False
