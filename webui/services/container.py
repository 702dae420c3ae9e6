"""The services the UI and the API are thin clients of, built once by ``app.py``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

from webui.config import Settings
from webui.extensions.api import Extension
from webui.extensions.hooks import Hooks, model_info
from webui.extensions.host import ExtensionHost
from webui.extensions.policies import PolicyGuard
from webui.models.device import DeviceOwner
from webui.models.embeddings import EmbeddingLibrary
from webui.models.last_checkpoint import LastCheckpoint
from webui.models.manager import Loader, ModelManager
from webui.models.memory import resolve_devices
from webui.models.preview_decoders import PreviewDecoders
from webui.models.ram_cache import RamCache
from webui.models.registry import ModelRegistry
from webui.models.selection import CheckpointSelection
from webui.models.vae import VaeFiles
from webui.provenance.credentials import ContentCredentials
from webui.provenance.policy import ProvenancePolicy
from webui.scaleout.status import ClusterView
from webui.services.checkpoints import CheckpointService
from webui.services.downloads import DefaultModelDownloader
from webui.services.extensions import ExtensionsService
from webui.services.extra_networks import ExtraNetworksService
from webui.services.listings import LoraRegistry, build_lora_registry, embeddings_for_current_model
from webui.services.folders import folder_policy
from webui.services.generation import GenerationService
from webui.services.job_store import JobStore
from webui.services.job_loras import JobLoras
from webui.services.jobs import JobQueue
from webui.services.merging import MergeService
from webui.services.options import OptionsService
from webui.services.live_preview import preview_settings
from webui.services.safety import SafetyService
from webui.services.saving import SaveOptions
from webui.services.scripts import ScriptService
from webui.services.style import StyleTransferService
from webui.services.styles import PromptStyles
from webui.services.token_count import TokenCounter
from webui.services.training import TrainingService
from webui.services.training_setup import build_training_service
from webui.services.upscaling import UpscalingService


@dataclass(frozen=True)
class Services:
    settings: Settings
    registry: ModelRegistry
    manager: ModelManager              # the first device's; ``devices`` has one per device
    devices: tuple[ModelManager, ...]
    queue: JobQueue
    checkpoints: CheckpointService
    generation: GenerationService
    options: OptionsService
    downloads: DefaultModelDownloader
    style: StyleTransferService
    credentials: ContentCredentials  # the one C2PA signer; its key lives under <data dir>/provenance
    jobs_store: JobStore  # the job history, <data dir>/studio.sqlite3
    vaes: VaeFiles | None = None  # models/VAE: the "SD VAE" choices and which file each means
    styles: PromptStyles | None = None  # <data dir>/styles.csv (A1111's prompt styles)
    tokens: TokenCounter | None = None  # the prompt boxes' token counter
    upscaling: UpscalingService | None = None  # Extras: built-in resizers and upscaler models (models/ESRGAN...)
    training: TrainingService | None = None  # the Train tab's runs, jobs of kind "train" on the shared queue
    loras: LoraRegistry | None = None  # models/Lora: the API's lists, the panel, prompts; a training run refreshes it
    merging: MergeService | None = None  # the checkpoint merger (writes into models/Stable-diffusion)
    embeddings: EmbeddingLibrary | None = None  # embeddings/: textual inversion files prompts may name
    extra_networks: ExtraNetworksService | None = None  # the Extra Networks panel's cards
    extensions: ExtensionHost | None = None  # the extensions found at start: their status and what they registered
    extension_admin: ExtensionsService | None = None  # the Extensions tab: install/update/remove/enable, restart
    scripts: ScriptService | None = None  # the extensions' scripts (A1111's Script dropdown), one job each
    scaleout: ClusterView | None = None  # --ray-address: the Ray Serve replicas (webui/scaleout); None: local only


def build_services(settings: Settings, *, load: Loader | None = None,
                   restart: Callable[[], None] | None = None, extensions: Sequence[Extension] = ()) -> Services:
    """Wire the services together; the only place that decides which concrete pieces are used. ``load`` replaces
    the checkpoint loader (tests share tiny models between runs through it); ``restart`` restarts the process
    (app.py's; the Extensions tab's "Apply and restart UI"); ``extensions``: extensions built in code, loaded after
    the folders' ones (tests drive hooks and scripts through them)."""
    from webui.models.registry import HashCache
    from webui.services.storage import ImageStore

    settings.ensure_dirs()
    hashes = HashCache(settings.hash_cache_file)  # one instance: two would overwrite each other's cache file
    registry = ModelRegistry(settings.checkpoints_dir, hashes,
                             allow_external_links=settings.allow_external_model_links)
    registry.refresh()
    selection = CheckpointSelection(registry, LastCheckpoint(settings.last_checkpoint_file))
    extra = {"load": load} if load is not None else {}
    ram_cache = RamCache.from_gib(settings.ram_cache_gib)  # one for every device: RAM is one pool
    devices = tuple(ModelManager(settings, registry, owner=DeviceOwner(device), selection=selection,
                                 ram_cache=ram_cache, **extra)
                    for device in resolve_devices(settings.device))
    manager = devices[0]
    jobs_store = JobStore(settings.data_dir / "studio.sqlite3", settings.data_dir / "history" / "inputs")
    jobs_store.mark_unfinished_interrupted()  # before this run queues anything: what is left is the last run's
    front = _connect_cluster(settings)  # --ray-address: generation runs on Ray Serve replicas
    queue = JobQueue(max_pending=settings.limits.queue_size, max_job_seconds=settings.limits.max_job_seconds,
                     devices=devices, store=jobs_store, remote_slots=front.max_replicas if front else 0)
    checkpoints = CheckpointService(registry, queue, load=front is None)
    store = ImageStore(settings.outputs_dir)
    safety = SafetyService(settings.models_dir, manager.dtype)
    vaes = VaeFiles(settings.vae_dir, hashes.sha256, allow_pickle=settings.allow_pickle,
                    allow_external_links=settings.allow_external_model_links)
    options = OptionsService(settings.data_dir / "config.json", manager,
                             requirements={"safety_checker": lambda on: safety.status() if on else None,
                                           "sd_vae": vaes.problem},
                             switch=checkpoints.submit_switch, outputs_dir=settings.outputs_dir)
    credentials = ContentCredentials(settings.data_dir / "provenance")
    tiny_decoders = PreviewDecoders(settings.models_dir / "VAE-approx", manager.dtype,  # TAESD live previews
                                    allow_external_links=settings.allow_external_model_links)
    upscaling = UpscalingService(
        settings.models_dir, queue, store, allow_external_links=settings.allow_external_model_links,
        max_pixels=settings.limits.max_image_pixels,
        tile_options=lambda: (options.value("ESRGAN_tile"), options.value("ESRGAN_tile_overlap")),
        folders=folder_policy(settings))

    embeddings = EmbeddingLibrary(settings.embeddings_dir, allow_pickle=settings.allow_pickle,
                                  allow_external_links=settings.allow_external_model_links)
    loras = build_lora_registry(settings)

    def provenance() -> ProvenancePolicy:
        return ProvenancePolicy.from_options(options.get_all())

    style = StyleTransferService(settings.models_dir, queue, store, hashes,
                                 max_pixels=min(settings.limits.max_image_pixels, settings.limits.max_job_pixels),
                                 max_tile=settings.limits.max_style_tile,
                                 allow_external_links=settings.allow_external_model_links,
                                 credentials=credentials, provenance=provenance)
    training = build_training_service(settings, queue, registry,
                                      refresh=[style.refresh_models, loras.refresh, embeddings.refresh],
                                      ram_cache=ram_cache)
    remote = None if front is None else front.deploy(manager.resolve, options.get_all,
                                                     lambda: queue.in_flight_remote)
    loaded: list[ExtensionHost] = []  # the extensions load last (their contexts use the services)
    hooks = Hooks(lambda: loaded[0] if loaded else None, guard=PolicyGuard.capture())

    services = Services(
        settings=settings,
        registry=registry,
        manager=manager,
        devices=devices,
        queue=queue,
        checkpoints=checkpoints,
        generation=GenerationService(settings, manager, queue, store, credentials, provenance, safety,
                                     vaes=vaes, vae_option=lambda: options.value("sd_vae"),
                                     save_before_hires=lambda: options.value("save_images_before_highres_fix"),
                                     saving=lambda: SaveOptions.from_options(options.get_all()),
                                     upscalers=upscaling,
                                     preview=lambda: preview_settings(options.value, tiny_decoders.decoder),
                                     confirm_after=lambda: options.value("confirm_long_jobs_seconds"),
                                     embeddings=embeddings,
                                     loras=JobLoras(loras, allow_pickle=settings.allow_pickle), hooks=hooks,
                                     remote=remote),
        options=options,
        downloads=DefaultModelDownloader(settings.checkpoints_dir, enabled=settings.allow_download),
        style=style,
        credentials=credentials,
        jobs_store=jobs_store,
        vaes=vaes,
        styles=PromptStyles(settings.data_dir),
        tokens=TokenCounter(settings.limits, embeddings=lambda: embeddings_for_current_model(embeddings, manager)),
        upscaling=upscaling,
        training=training,
        loras=loras,
        merging=MergeService(registry, queue, vaes=vaes, loras=loras, allow_pickle=settings.allow_pickle),
        embeddings=embeddings,
        extra_networks=ExtraNetworksService(registry, loras, embeddings, manager,
                                            allow_external_links=settings.allow_external_model_links),
        scaleout=front,
    )
    loaded.append(_load_extensions(settings, services, extensions))
    for device in devices:
        device.loaded_listeners.append(lambda info, model: hooks.model_loaded(model_info(info, model.family)))
    host = loaded[0]
    return replace(services, extensions=host, extension_admin=ExtensionsService(settings, host, restart=restart),
                   scripts=ScriptService(host, services.generation, queue, registry, upscaling))


def _connect_cluster(settings: Settings):
    """The Ray front (webui/scaleout/front.py) with --ray-address; None otherwise, and Ray is never imported."""
    if settings.scale_out is None:
        return None
    from webui.scaleout.auth import use_token_if_present

    use_token_if_present(settings.scale_out.address)  # before Ray is imported: it reads the mode once
    from webui.scaleout.front import RayFront

    return RayFront(settings)


def _load_extensions(settings: Settings, services: Services, in_code: Sequence[Extension]) -> ExtensionHost:
    """Import every extension (errors isolated, see webui/extensions/loader.py), each with its own context."""
    from webui.extensions.context import AppContext
    from webui.extensions.loader import LoadOptions, load_extensions
    from webui.extensions.state import EnabledState, ExtensionSettings

    values = ExtensionSettings(settings.data_dir / "extension-settings.json")
    hosts: list[ExtensionHost] = []  # filled below; a context looks its extension up only when asked

    def extension_of(name: str):
        record = hosts[0].record(name) if hosts else None
        return record.extension if record is not None else None

    options = LoadOptions(user_dir=settings.extensions_dir,
                          disabled=frozenset(EnabledState(settings.data_dir / "extensions.json").disabled()),
                          safe_mode=settings.safe_mode, import_seconds=settings.extension_import_seconds)
    host = load_extensions(options, lambda name: AppContext(name, services, values, lambda: extension_of(name)))
    host.records.extend(ExtensionHost.of(*in_code).records)
    hosts.append(host)
    return host
