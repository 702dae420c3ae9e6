"""The model manager: diffusion checkpoints on one device.

One ``ModelManager`` per device. It keeps checkpoints as residents of that device's ``DeviceOwner`` (which also
holds GAN generators, the safety checker and whatever comes next, and evicts them all by one rule), and lends
them to jobs through ``lease()``. Which checkpoint is the default is a separate, shared ``CheckpointSelection``:
reading it, the loaded list or the memory report never waits for a running job.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from webui.config import Settings
from webui.errors import ModelLoadError, NoModelAvailable
from webui.models import attention, fast_path, loader, memory
from webui.models.device import DeviceOwner
from webui.models.last_checkpoint import LastCheckpoint
from webui.models.loader import LoadedModel
from webui.models.ram_cache import CacheKey, RamCache, file_version, load_bytes
from webui.models.registry import ModelRegistry
from webui.models.selection import CheckpointSelection
from webui.types import CheckpointInfo

log = logging.getLogger(__name__)

Loader = Callable[[CheckpointInfo, torch.dtype, bool], LoadedModel]
CHECKPOINT = "checkpoint"


def resident_name(info: CheckpointInfo) -> str:
    return resident_name_of(info.title)


def resident_name_of(title: str) -> str:
    return f"{CHECKPOINT}:{title}"


@dataclass(frozen=True)
class Placement:
    """How a checkpoint was put on its device: the memory plan, the attention kernel, and whether its UNet is
    compiled."""

    plan: memory.MemoryPlan
    attention: str
    compiled: bool

    def describe(self) -> dict:
        return {"profile": self.plan.profile, "text_encoders": self.plan.text_encoders,
                "offload": self.plan.offload, "vae_tile_over": self.plan.vae_tile_over,
                "attention": self.attention, "compiled": self.compiled}


class ModelManager:
    def __init__(self, settings: Settings, registry: ModelRegistry, load: Loader = loader.load,
                 last_used: LastCheckpoint | None = None, *, owner: DeviceOwner | None = None,
                 selection: CheckpointSelection | None = None, ram_cache: RamCache | None = None,
                 compile_unet: Callable[..., bool] = fast_path.compile_unet):
        """``load`` and ``compile_unet`` (used with --compile) are replaceable: tests share tiny models and compile
        with a backend that generates no C++. ``ram_cache``: where evicted checkpoints wait to be used again (shared
        by every device's manager; default: one of this manager's own, sized by ``settings.ram_cache_gib``)."""
        self._settings = settings
        self._registry = registry
        self._load = load
        self._compile_unet = compile_unet
        self.owner = owner or DeviceOwner(memory.resolve_devices(settings.device)[0])
        self.selection = selection or CheckpointSelection(
            registry, last_used or LastCheckpoint(settings.last_checkpoint_file))
        self.device = self.owner.device
        self.dtype = memory.resolve_dtype(settings.precision, self.device)
        self.profile = memory.resolve_profile(settings.memory_profile, self.device)
        # How each loaded checkpoint was placed (plan, attention kernel, compiled), by resident name.
        self._placements: dict[str, Placement] = {}
        self._attention_problem = attention.problem(settings.attention, self.device)
        if self._attention_problem:
            log.error("%s", self._attention_problem)
        if settings.compile:
            fast_path.use_cache_dir(settings.cache_dir / "torch-compile")
        self.ram_cache = ram_cache if ram_cache is not None else RamCache.from_gib(settings.ram_cache_gib)
        # Called with each checkpoint this manager loads, after it is on its device (extensions' on_model_loaded,
        # wired in webui/services/container.py). Listeners must not raise.
        self.loaded_listeners: list[Callable[[CheckpointInfo, LoadedModel], None]] = []

    @property
    def registry(self) -> ModelRegistry:
        return self._registry

    @property
    def selected(self) -> CheckpointInfo | None:
        """The checkpoint new jobs use by default (see ``CheckpointSelection``). Never waits."""
        return self.selection.current

    def loaded_titles(self) -> list[str]:
        """Checkpoints loaded on this device, least recently used first. Never waits."""
        prefix = f"{CHECKPOINT}:"
        return [name.removeprefix(prefix) for name in self.owner.names(CHECKPOINT)]

    def has_loaded(self, title: str) -> bool:
        return self.owner.has(f"{CHECKPOINT}:{title}")

    def select(self, query: str) -> CheckpointInfo:
        """Load ``query`` on this device and make it the default. Runs as a checkpoint-switch job (see
        webui/services/checkpoints.py), never on a web thread. On failure the previous selection and the
        models already loaded stay as they were (the new file is loaded before anything is evicted)."""
        info = self._registry.find(query)
        with self.owner.work():
            self._get(info)
        self.selection.choose(info)
        return info

    def resolve(self, query: str | None) -> CheckpointInfo:
        """The checkpoint a job asking for ``query`` (None: the default) would run on."""
        if query:
            return self._registry.find(query)
        info = self.selected
        if info is None:
            raise NoModelAvailable(
                f"No checkpoint found. Put a Stable Diffusion .safetensors file (or a diffusers folder) in "
                f"{self._registry.directory} and press refresh.")
        return info

    @contextmanager
    def lease(self, query: str | None = None) -> Iterator[LoadedModel]:
        """Borrow a loaded model (the selected one, or ``query``) for the duration of a job on this device.

        The selected one, once loaded, is remembered as the last used; a per-request ``query`` (A1111's
        override_settings, restored afterwards) does not change the default.
        """
        with self.owner.work():
            info = self.resolve(query)
            model = self._get(info)
            if not query:
                self.selection.remember(info)
            with self.owner.pinned(resident_name(info)):
                yield model

    def _get(self, info: CheckpointInfo) -> LoadedModel:
        key = CacheKey.of(info, self.dtype, self.profile)
        read_as: list = []  # the file's version when it was read: what an evicted copy is cached under

        def build() -> LoadedModel:
            version = file_version(info)  # before reading: an edit made while reading shows as a new version
            read_as.append(version)
            cached = self.ram_cache.take(key, version)
            if cached is not None:
                log.info("Taking %s from the RAM cache (%s, %s)", info.title, self.device, self.dtype)
                return cached
            self.ram_cache.make_room_for_load(load_bytes(info))
            log.info("Loading %s (%s, %s, profile %s)", info.title, self.device, self.dtype, self.profile)
            return self._load(info, self.dtype, self._settings.allow_pickle)

        def keep_in_ram(model: LoadedModel, size: int) -> None:
            if read_as[-1] == file_version(info):  # a file edited since it was read is not worth keeping
                self.ram_cache.put(key, read_as[-1], info.title, model, size, self.device)

        def place(model: LoadedModel, device: torch.device) -> None:
            plan = memory.plan_for_load(self.profile, model.family, device)
            memory.apply_plan(model.pipe, plan, device)
            kernel = attention.choose(self._settings.attention, device, model.pipe.unet,
                                      memory_short=plan.attention_slicing)  # a forced --attention wins
            attention.apply(model.pipe, kernel)
            second = getattr(model.pipe, "text_encoder_2", None)  # SDXL: its projection is the pooled width
            compiled = self._settings.compile and self._compile_unet(
                model.pipe.unet, device, text_embeds_dim=second.config.projection_dim if second else None)
            log.info("Placed %s on %s: %s, attention %s%s", info.title, device, plan, kernel,
                     ", UNet compiled" if compiled else "")
            kept = {name: p for name, p in self._placements.items() if self.owner.has(name)}
            self._placements = {**kept, resident_name(info): Placement(plan, kernel, compiled)}

        built: list[bool] = []

        def build_once() -> LoadedModel:
            built.append(True)
            return build()

        if self._attention_problem:  # a forced kernel that cannot run here: say so before loading anything
            raise ModelLoadError(self._attention_problem)
        try:
            model = self.owner.resident(resident_name(info), build_once, kind=CHECKPOINT, version=info.sha256 or
                                        info.title, place=place, max_of_kind=self._settings.max_loaded_models,
                                        on_evict=keep_in_ram)
        except torch.cuda.OutOfMemoryError as exc:
            raise ModelLoadError(f"Out of GPU memory while loading {info.name}. Try --memory-profile 4gb.") from exc
        if built:
            for listener in self.loaded_listeners:
                listener(info, model)
        return model

    def unload_all(self) -> None:
        self.owner.evict_all(CHECKPOINT)

    def memory_report(self) -> dict:
        """What is on this device. Never waits for a running job."""
        report = self.owner.report()
        report.update({"dtype": str(self.dtype).replace("torch.", ""), "profile": self.profile,
                       "loaded": self.loaded_titles(), "ram_cache": self.ram_cache.report()})
        # Placements of evicted checkpoints are dropped here (the resident table is the truth).
        loaded = [resident_name_of(title) for title in report["loaded"]]
        placements = {name: self._placements[name] for name in loaded if name in self._placements}
        latest = placements[loaded[-1]] if loaded and loaded[-1] in placements else None
        report["attention"] = latest.attention if latest else attention.expected(self._settings.attention, self.device)
        report["compiled"] = bool(latest and latest.compiled)
        report["plans"] = {name.removeprefix(f"{CHECKPOINT}:"): placement.describe()
                           for name, placement in placements.items()}
        return report
