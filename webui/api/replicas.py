"""``GET /studio/v1/replicas``: the Ray Serve replicas generation runs on (``--ray-address``), or that it is off.

Under ``/studio/v1``, so ``--api-auth`` guards it like the rest of the API (webui/api/security.py, by path).
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from webui.services.cluster_report import read_cluster, replicas_body
from webui.services.container import Services


class ReplicaReport(BaseModel):
    replica_id: str = Field(description="Serve's replica id")
    host: str = Field(description="the replica's host name")
    node_ip: str = Field(description="the Ray node's IP address")
    pid: int = Field(description="the replica's process id on its host")
    device: str = Field(description='what it generates on: "cuda:0 (NVIDIA H200, 139.8 GiB)", "cpu"')
    loaded: list[str] = Field(description="checkpoint titles on its device, most recent first")
    job_id: str | None = Field(description="the front's job id it is running (as in /studio/v1/jobs), if any")
    job_kind: str | None = Field(description='that job\'s kind: "txt2img", "img2img" ...')
    health: str = Field(description='"starting", "idle", "busy", or "unreachable" when it has not reported for '
                                    "10 s (STALE_SECONDS), whatever it said last")
    last_seen: float = Field(description="when it last reported, seconds since the epoch (the front's clock)")
    seconds_since_seen: float = Field(description="how long ago that was")
    error: str | None = Field(description="the last checkpoint it could not load, and why")


class ReplicasReport(BaseModel):
    enabled: bool = Field(description="generation runs on a Ray cluster (--ray-address); false: in this process")
    message: str = Field(description="off: how to turn it on; on: Serve's message when something is wrong, or why "
                                     "the status could not be read (the other fields are then null)")
    address: str | None = Field(description="--ray-address as given (auto, local, HOST:6379, ray://HOST:10001)")
    application: str | None = Field(description="Serve's status of the application: RUNNING, DEPLOYING, "
                                                "UNHEALTHY ...")
    min_replicas: int | None = Field(description="autoscaling's minimum replica count (--ray-replicas MIN:MAX)")
    max_replicas: int | None = Field(description="autoscaling's maximum replica count")
    replica_states: dict[str, int] | None = Field(description='Serve\'s replica counts by state: {"RUNNING": 2, '
                                                              '"STARTING": 1}')
    replicas: list[ReplicaReport] | None = Field(description="each replica as it last reported itself")
    in_flight: int | None = Field(description="jobs the front has sent to replicas and not yet got back")


def build_replicas_router(services: Services) -> APIRouter:
    router = APIRouter(prefix="/studio/v1", tags=["studio"])

    @router.get("/replicas", response_model=ReplicasReport,
                summary="The Ray Serve replicas generation runs on: device, loaded checkpoints, current job, health "
                        "(answers at once; enabled false without --ray-address)")
    def replicas() -> dict[str, Any]:
        return replicas_body(read_cluster(services.scaleout), time.time())

    return router
