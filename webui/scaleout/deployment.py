"""The Serve application of replicas, built from the front's settings: by the front itself (``serve.run``), or
by a KubeRay RayService through ``webui.scaleout.serve_app:app`` (the front then attaches, ``--ray-attach``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ray import serve

from webui.config import REPO_ROOT, Settings
from webui.scaleout.replica import ReplicaConfig, StudioReplica

DEPLOYMENT = "StudioReplica"
CONTROL_NAME = "stable-studio-front"  # the front's control actor: one front per cluster namespace
# Environment the replicas' processes need: our code on the path (the same checkout path on every host) and no
# model hub (models come from the front or the shared folder).
REPLICA_ENV = {"PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
STATE_FILES = ("extensions.json", "extension-settings.json")


def replica_counts(settings: Settings, cluster_gpus: int) -> tuple[float, int, int]:
    """(GPUs per replica, min, max): the flags, else one replica per GPU (CPU replicas without GPUs)."""
    config = settings.scale_out
    gpus = config.replica_gpus if config.replica_gpus is not None else (1.0 if cluster_gpus else 0.0)
    default = max(1, int(cluster_gpus / gpus)) if gpus else 1
    low = config.min_replicas if config.min_replicas is not None else default
    high = config.max_replicas if config.max_replicas is not None else default
    return gpus, low, high


def replica_application(settings: Settings, gpus: float, low: int, high: int, env: dict[str, str]):
    """The bound Serve application: ``StudioReplica`` with its resources, counts and configuration."""
    config = settings.scale_out
    replica = ReplicaConfig(
        settings=replace(settings, gradio_auth=(), api_auth=()),  # replicas serve nobody: no credentials
        control=CONTROL_NAME, models_dir=str(config.models_dir or settings.models_dir),
        extensions_dir=str(settings.extensions_dir), embeddings_dir=str(settings.embeddings_dir),
        cache=config.replica_cache, gpus=gpus,
        state_files=tuple((name, (settings.data_dir / name).read_text(encoding="utf-8"))
                          for name in STATE_FILES if (settings.data_dir / name).is_file()))
    scaling: dict[str, Any] = (
        {"num_replicas": high} if low == high else
        {"autoscaling_config": {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": 1,
                                "upscale_delay_s": 3, "downscale_delay_s": 120}})
    deployment = serve.deployment(
        StudioReplica, name=DEPLOYMENT, max_ongoing_requests=1, graceful_shutdown_timeout_s=10,
        health_check_period_s=10,
        ray_actor_options={"num_cpus": config.replica_cpus, "num_gpus": gpus,
                           "runtime_env": {"env_vars": {**REPLICA_ENV, **env}}},
        **scaling)
    return deployment.bind(replica)
