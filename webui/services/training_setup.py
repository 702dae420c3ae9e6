"""How the training service is put together: its methods, the resources they get, and what is refreshed when a
run writes a file (kept out of container.py so the composition root stays a list of one-line wirings)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import torch

from webui.config import Settings
from webui.errors import InvalidRequest, ModelLoadError, ModelNotFound
from webui.models import detect, loader
from webui.models.loader import LoadedModel
from webui.models.ram_cache import RamCache, load_bytes
from webui.models.registry import ModelRegistry
from webui.services.folders import folder_policy
from webui.services.jobs import JobQueue
from webui.services.training import TrainingService
from webui.training import textual_inversion
from webui.training.gan_training import CYCLEGAN_METHOD, PIX2PIX_METHOD
from webui.training.lora_training import DREAMBOOTH_METHOD
from webui.training.lora_training import METHOD as LORA_METHOD
from webui.training.protocol import TrainingMethod, TrainingResources

DEFAULT_METHODS: tuple[TrainingMethod, ...] = (LORA_METHOD, DREAMBOOTH_METHOD, textual_inversion.METHOD,
                                                CYCLEGAN_METHOD, PIX2PIX_METHOD)


def training_resources(settings: Settings, registry: ModelRegistry,
                       ram_cache: RamCache | None = None) -> TrainingResources:
    """``ram_cache``: the checkpoints kept in RAM for fast switching, which give way before a run loads its own
    copy (that load, and the run's memory check, need the RAM)."""
    def find(title: str):
        try:
            return registry.find(title)
        except ModelNotFound as exc:
            raise InvalidRequest("base_model", str(exc)) from None

    def load_checkpoint(title: str) -> LoadedModel:
        # Always a fresh fp32 copy from disk: a run adds adapters to it and must never touch the generation cache.
        info = find(title)
        if ram_cache is not None:
            ram_cache.make_room_for_load(load_bytes(info))
        try:
            return loader.load(info, torch.float32, settings.allow_pickle)
        except ModelLoadError as exc:
            raise InvalidRequest("base_model", str(exc)) from None

    def checkpoint_hash(title: str) -> str | None:
        """The A1111 short hash; an unknown title or a file that is not a diffusion checkpoint is refused here,
        which is how a method's ``check`` finds out before any loading."""
        info = find(title)
        if info.kind == "safetensors":
            try:
                detect.detect(detect.read_safetensors_header(info.path), info.name)
            except ModelLoadError as exc:
                raise InvalidRequest("base_model", f"{info.name} is not a diffusion checkpoint: {exc}") from None
        return info.short_hash

    # Training folders follow the img2img Batch rule: the data dir and --batch-dirs, off when exposed unless opted in.
    folders = folder_policy(settings)
    return TrainingResources(models_dir=settings.models_dir, embeddings_dir=settings.embeddings_dir,
                             load_checkpoint=load_checkpoint, checkpoint_hash=checkpoint_hash,
                             allow_pickle=settings.allow_pickle, image_folder=folders.input_files)


def build_training_service(settings: Settings, queue: JobQueue, registry: ModelRegistry, *,
                           refresh: Sequence[Callable[[], object]] = (),
                           methods: Sequence[TrainingMethod] = DEFAULT_METHODS,
                           ram_cache: RamCache | None = None) -> TrainingService:
    """``refresh``: model lists to rescan when a run writes its result (the checkpoint registry always is)."""
    def written(path: Path) -> None:
        for rescan in (registry.refresh, *refresh):
            rescan()

    return TrainingService(methods, queue, training_resources(settings, registry, ram_cache),
                           settings.data_dir / "training",
                           on_artifact=written)
