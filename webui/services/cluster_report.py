"""The Ray cluster's replicas as the UI's Cluster section and ``GET /studio/v1/replicas`` show them.

Reads ``Services.scaleout`` (None without ``--ray-address``) and adds what only the reader knows: how long ago each
replica last reported, and "unreachable" for one silent longer than ``STALE_SECONDS``, whatever it said last (a
killed process or a lost host never reports again). No Ray import here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from webui.scaleout.status import ClusterStatus, ClusterView, ReplicaStatus

log = logging.getLogger(__name__)

OFF_MESSAGE = "Scale-out is off: start with --ray-address (docs/scale-out.md)"


def observed_health(replica: ReplicaStatus, now: float) -> str:
    """The replica's own health, or "unreachable" once it has been silent longer than STALE_SECONDS."""
    return replica.health_at(now)


def seconds_since_seen(replica: ReplicaStatus, now: float) -> float:
    return max(0.0, now - replica.last_seen)  # clocks of other hosts may run a little ahead


@dataclass(frozen=True)
class ClusterReading:
    """One look at the cluster: ``status`` None when scale-out is off or the front could not read it (``problem``)."""

    enabled: bool
    status: ClusterStatus | None
    problem: str = ""


def read_cluster(view: ClusterView | None) -> ClusterReading:
    if view is None:
        return ClusterReading(enabled=False, status=None)
    try:
        return ClusterReading(enabled=True, status=view.status())
    except Exception as exc:  # a lost Ray connection must not take the page or the API down with it
        log.warning("could not read the cluster's status: %s", exc)
        return ClusterReading(enabled=True, status=None, problem=f"Could not read the cluster's status: {exc}")


def replicas_body(reading: ClusterReading, now: float) -> dict[str, Any]:
    """The API's answer: ``enabled`` plus ClusterStatus's fields (null when off or unreadable)."""
    status = reading.status
    if status is None:
        return {"enabled": reading.enabled, "message": reading.problem or OFF_MESSAGE, "address": None,
                "application": None, "min_replicas": None, "max_replicas": None, "replica_states": None,
                "replicas": None, "in_flight": None}
    body = {"enabled": True, **status.as_dict()}
    body["replicas"] = [{**replica.as_dict(), "health": observed_health(replica, now),
                         "seconds_since_seen": round(seconds_since_seen(replica, now), 1)}
                        for replica in status.replicas]
    return body
