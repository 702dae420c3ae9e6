"""What the front knows about the cluster's replicas: shown in the UI and ``GET /studio/v1/replicas``.

Plain data, no Ray import: the UI and API read it through ``Services.scaleout`` (None without ``--ray-address``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

HEALTH = ("starting", "idle", "busy", "unreachable")
STALE_SECONDS = 10.0  # a replica that has not reported for this long is shown as unreachable


@dataclass(frozen=True)
class ReplicaStatus:
    """One Serve replica as it last reported itself (every 2 s and on every change)."""

    replica_id: str           # Serve's replica id
    host: str                 # the node's host name
    node_ip: str
    pid: int
    device: str               # "cuda:0 (NVIDIA H200, 139.8 GiB)" / "cpu"
    loaded: tuple[str, ...]   # checkpoint titles on its device, most recent first
    job_id: str | None        # the front's job id it is running, if any
    job_kind: str | None
    health: str               # one of HEALTH
    last_seen: float          # time.time() of its last report
    error: str | None = None  # the last checkpoint it could not load, and why

    def health_at(self, now: float) -> str:
        """Its own health, or "unreachable" once it has been silent longer than STALE_SECONDS (a killed process
        or a lost host never reports again)."""
        return "unreachable" if now - self.last_seen > STALE_SECONDS else self.health

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["loaded"] = list(self.loaded)
        return data


@dataclass(frozen=True)
class ClusterStatus:
    address: str                # as given to --ray-address
    application: str            # Serve's application status: RUNNING, DEPLOYING, UNHEALTHY, ...
    min_replicas: int
    max_replicas: int
    replica_states: dict[str, int] = field(default_factory=dict)  # Serve's counts: {"RUNNING": 2, ...}
    replicas: tuple[ReplicaStatus, ...] = ()
    in_flight: int = 0          # jobs the front has sent to replicas and not yet got back
    message: str = ""           # Serve's message when something is wrong

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["replicas"] = [replica.as_dict() for replica in self.replicas]
        return data


class ClusterView(Protocol):
    """What the UI and the API read (webui/scaleout/front.py implements it)."""

    def status(self) -> ClusterStatus: ...
    def close(self) -> None: ...
