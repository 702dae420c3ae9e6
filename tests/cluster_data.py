"""Cluster statuses for the Cluster section's tests: replicas and a ClusterView over a status the test sets."""

from __future__ import annotations

from webui.scaleout.status import ClusterStatus, ReplicaStatus

NOW = 1_800_000_000.0


def replica(replica_id: str = "StudioReplica#a1", **changes) -> ReplicaStatus:
    fields = dict(replica_id=replica_id, host="gpu-host-1", node_ip="10.0.0.5", pid=4242, device="cuda:0 (NVIDIA H200)",
                  loaded=("tiny.safetensors [abc123]", "other.safetensors [def456]"), job_id="job-7",
                  job_kind="txt2img", health="busy", last_seen=NOW - 3, error=None)
    return ReplicaStatus(**{**fields, **changes})


def cluster(*replicas: ReplicaStatus, **changes) -> ClusterStatus:
    fields = dict(address="ray://head:10001", application="RUNNING", min_replicas=1, max_replicas=4,
                  replica_states={"RUNNING": 2, "STARTING": 1}, replicas=replicas, in_flight=3)
    return ClusterStatus(**{**fields, **changes})


class StatusSource:
    """A ClusterView over a status the test sets (or an exception it raises, like a lost Ray connection)."""

    def __init__(self, status: ClusterStatus | Exception):
        self.current = status

    def status(self) -> ClusterStatus:
        if isinstance(self.current, Exception):
            raise self.current
        return self.current

    def close(self) -> None:
        self.closed = True  # the app's shutdown closes its cluster view (a real one removes its replicas)
