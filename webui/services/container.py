"""The services the UI and the API are thin clients of, built once by ``app.py``."""

from __future__ import annotations

from dataclasses import dataclass

from webui.config import Settings
from webui.models import loader
from webui.models.manager import Loader, ModelManager
from webui.models.registry import ModelRegistry
from webui.provenance.credentials import ContentCredentials
from webui.provenance.policy import ProvenancePolicy
from webui.services.downloads import DefaultModelDownloader
from webui.services.generation import GenerationService
from webui.services.jobs import JobQueue
from webui.services.options import OptionsService
from webui.services.safety import SafetyService
from webui.services.style import StyleTransferService


@dataclass(frozen=True)
class Services:
    settings: Settings
    registry: ModelRegistry
    manager: ModelManager
    queue: JobQueue
    generation: GenerationService
    options: OptionsService
    downloads: DefaultModelDownloader
    style: StyleTransferService
    credentials: ContentCredentials  # the one C2PA signer; its key lives under <data dir>/provenance


def build_services(settings: Settings, *, load: Loader | None = None) -> Services:
    """Wire the services together; the only place that decides which concrete pieces are used.

    ``load`` replaces how checkpoints are read (tests pass one that builds each tiny model once per run)."""
    from webui.models.registry import HashCache
    from webui.services.storage import ImageStore

    settings.ensure_dirs()
    hashes = HashCache(settings.hash_cache_file)  # one instance: two would overwrite each other's cache file
    registry = ModelRegistry(settings.checkpoints_dir, hashes,
                             allow_external_links=settings.allow_external_model_links)
    registry.refresh()
    manager = ModelManager(settings, registry, load=load or loader.load)
    queue = JobQueue(max_pending=settings.limits.queue_size, max_job_seconds=settings.limits.max_job_seconds)
    store = ImageStore(settings.outputs_dir)
    safety = SafetyService(settings.models_dir, manager.device, manager.dtype)
    options = OptionsService(settings.data_dir / "config.json", manager,
                             requirements={"safety_checker": lambda on: safety.status() if on else None})
    credentials = ContentCredentials(settings.data_dir / "provenance")

    def provenance() -> ProvenancePolicy:
        return ProvenancePolicy.from_options(options.get_all())

    return Services(
        settings=settings,
        registry=registry,
        manager=manager,
        queue=queue,
        generation=GenerationService(settings, manager, queue, store, credentials, provenance, safety),
        options=options,
        downloads=DefaultModelDownloader(settings.checkpoints_dir, enabled=settings.allow_download),
        style=StyleTransferService(settings.models_dir, queue, store, hashes, device=manager.device,
                                   max_pixels=min(settings.limits.max_image_pixels, settings.limits.max_job_pixels),
                                   max_tile=settings.limits.max_style_tile,
                                   allow_external_links=settings.allow_external_model_links,
                                   credentials=credentials, provenance=provenance),
        credentials=credentials,
    )
