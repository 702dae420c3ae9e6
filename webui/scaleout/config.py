"""What the front tells Ray Serve: replica counts, resources, where replicas find models. No Ray import here."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

APP_NAME = "stable-studio"          # the Serve application; one per cluster namespace
NAMESPACE = "stable-studio"         # Ray namespace of the front's control actor and the Serve app
DEFAULT_REPLICA_CACHE = "~/.cache/stable-studio/replica"  # on each replica's host: fetched checkpoints, hashes
HOST = r"(\[[0-9A-Fa-f:]+\]|[A-Za-z0-9.\-]+)"  # a name, an IPv4 address or a bracketed IPv6 address
ADDRESS = re.compile(rf"auto|local|(ray://)?{HOST}:\d{{1,5}}")


@dataclass(frozen=True)
class ScaleOutConfig:
    """``--ray-*`` flags. ``min_replicas``/``max_replicas`` None: one replica per GPU in the cluster (at least
    one); ``replica_gpus`` None: 1 when the cluster has GPUs, else 0 (CPU replicas); ``models_dir`` None: the
    front's own models folder path (used by a replica when that path exists on its host, e.g. a shared mount)."""

    address: str
    min_replicas: int | None = None
    max_replicas: int | None = None
    replica_gpus: float | None = None
    replica_cpus: float = 1.0
    models_dir: Path | None = None
    replica_cache: str = DEFAULT_REPLICA_CACHE
    attach: bool = False  # the replicas are deployed by the cluster (a KubeRay RayService), not by the front


def parse_replicas(value: str) -> tuple[int, int]:
    """``--ray-replicas N`` or ``MIN:MAX`` -> (min, max); ValueError naming what is wrong."""
    parts = value.strip().split(":")
    if len(parts) > 2 or not all(part.strip().isdigit() for part in parts):
        raise ValueError(f"{value!r} is not N or MIN:MAX (whole numbers, e.g. 2 or 1:4)")
    low, high = int(parts[0]), int(parts[-1])
    if high < 1:
        raise ValueError(f"{value!r}: the maximum must be at least 1")
    if low > high:
        raise ValueError(f"{value!r}: the minimum {low} is above the maximum {high}")
    return low, high


def check_address(value: str) -> str:
    """``--ray-address``: auto, local, host:port or ray://host:port; ValueError otherwise."""
    value = value.strip()
    port = value.rpartition(":")[2]
    if not ADDRESS.fullmatch(value) or (port.isdigit() and not 0 < int(port) < 65536):
        raise ValueError(f"{value!r} is not auto, local, HOST:PORT (the head's GCS port, usually 6379) or "
                         "ray://HOST:10001 (Ray Client)")
    return value
