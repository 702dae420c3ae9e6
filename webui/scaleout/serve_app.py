"""The replicas as a Serve import path, for a KubeRay RayService's ``serveConfigV2`` (deploy/rayservice.yaml).

``args: {flags: [...]}`` are the front's own command-line flags (the same ``--data-dir``, ``--precision``,
``--ray-*`` ...), so the replicas run exactly as a front would deploy them; start the front with the same flags
plus ``--ray-attach``.
"""

from __future__ import annotations

from typing import Any

import ray

from webui.cli import parse_settings
from webui.scaleout.deployment import replica_application, replica_counts


def app(args: dict[str, Any]):
    flags = args.get("flags")
    if not isinstance(flags, list) or not all(isinstance(flag, str) for flag in flags):
        raise ValueError("args.flags must be the front's command-line flags, a list of strings")
    settings = parse_settings(flags)
    if settings.scale_out is None:
        raise ValueError("args.flags must include --ray-address (as the front's do)")
    gpus = int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0
    return replica_application(settings, *replica_counts(settings, gpus), env={})
