"""The front's connection to the Ray cluster: connect, deploy the replicas, read their status, clean up.

Only imported with ``--ray-address``. The front is a Ray driver in namespace ``stable-studio``; it runs one Serve
application ("stable-studio") with one deployment (``StudioReplica``) and no Serve HTTP proxy: the replicas are
reached only from here, over Ray's own protocol, and this process stays the only HTTP entry. A small control actor
(webui/scaleout/control.py) pinned to this node carries Interrupt/Skip to replicas, their status back, and
checkpoint files to replicas that do not share the models folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import replace
from typing import Any, Callable

import ray
from ray import serve
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from webui.config import Settings
from webui.errors import StudioError
from webui.scaleout.config import APP_NAME, NAMESPACE, ScaleOutConfig
from webui.scaleout.control import FrontControl
from webui.scaleout.remote import RemoteGeneration
from webui.scaleout.deployment import CONTROL_NAME, DEPLOYMENT, replica_application, replica_counts
from webui.scaleout.status import ClusterStatus

log = logging.getLogger(__name__)
FORGET_SECONDS = 120.0  # a replica silent this long is gone (Serve replaced it): dropped from the table
ATTACH_SECONDS = 30 * 60.0  # --ray-attach waits this long for the cluster to deploy the replicas


class RayFront:
    """Implements ``ClusterView`` (webui/scaleout/status.py)."""

    def __init__(self, settings: Settings):
        config = settings.scale_out
        if config is None:
            raise ValueError("RayFront needs --ray-address")
        self.config: ScaleOutConfig = config
        self._settings = settings
        self._in_flight: Callable[[], int] = lambda: 0
        local = config.address == "local"
        log.info("Connecting to the Ray cluster at %s", config.address)
        ray.init(address=None if local else config.address, namespace=NAMESPACE, log_to_driver=False,
                 **({"include_dashboard": False} if local else {}))
        self.replica_gpus, self.min_replicas, self.max_replicas = replica_counts(
            settings, int(ray.cluster_resources().get("GPU", 0)))
        # On this node, so it can read the checkpoint files replicas fetch (under Ray Client, ray://, this process
        # is no node: the actor lands anywhere and replicas need the shared models folder).
        here = None if config.address.startswith("ray://") else ray.get_runtime_context().get_node_id()
        placement = {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=here, soft=True)} if here else {}
        try:
            ray.get_actor(CONTROL_NAME, namespace=NAMESPACE)
        except ValueError:
            pass  # no other front: the usual case
        else:
            raise StudioError(f"Another Stable Studio front is connected to the Ray cluster at {config.address} "
                              f"(its actor {CONTROL_NAME!r} exists); one front per cluster")
        self.control = ray.remote(FrontControl).options(
            name=CONTROL_NAME, namespace=NAMESPACE, num_cpus=0, **placement).remote()
        self.handle: Any = None
        self._closed = False

    def deploy(self, resolve, options: Callable[[], dict[str, Any]],
               in_flight: Callable[[], int]) -> RemoteGeneration:
        """Start (or update) the replicas and return what sends generation jobs to them. Waits until the minimum
        number of replicas is up."""
        self._in_flight = in_flight
        config = self.config
        if config.attach:
            self.handle = self._attach()
            return RemoteGeneration(handle=self.handle, control=self.control, resolve=resolve, options=options,
                                    replica_count=self.replica_count)
        application = replica_application(self._settings, self.replica_gpus, self.min_replicas, self.max_replicas,
                                          _passed_env())
        serve.start(proxy_location="Disabled")  # no Serve HTTP entry: this process is the only one
        log.info("Starting %s Ray Serve replica(s) (%s GPU, %s CPU each); the first start imports the model code",
                 f"{self.min_replicas}-{self.max_replicas}" if self.min_replicas != self.max_replicas
                 else self.max_replicas, self.replica_gpus, config.replica_cpus)
        started = time.monotonic()
        try:
            self.handle = serve.run(application, name=APP_NAME, route_prefix=None)
        except RuntimeError as exc:  # Serve gave up starting them: say why, and leave no broken app behind
            reason = self._deployment_problem() or str(exc)
            with contextlib.suppress(Exception):
                serve.delete(APP_NAME)
            raise StudioError(f"The Ray Serve replicas could not start: {reason}") from None
        log.info("Replicas ready after %.0f s", time.monotonic() - started)
        return RemoteGeneration(handle=self.handle, control=self.control, resolve=resolve, options=options,
                                replica_count=self.replica_count)

    def _deployment_problem(self) -> str:
        """The last line of the error Serve recorded for the replicas (their constructor's exception)."""
        with contextlib.suppress(Exception):
            app = serve.status().applications.get(APP_NAME)
            deployment = app.deployments.get(DEPLOYMENT) if app is not None else None
            lines = [line.strip() for line in (deployment.message if deployment else "").splitlines() if line.strip()]
            return lines[-1] if lines else ""
        return ""

    def _attach(self) -> Any:
        """--ray-attach: the application is deployed by someone else (a KubeRay RayService): wait for it."""
        log.info("Waiting for the Serve application %r (deployed by the cluster, --ray-attach)", APP_NAME)
        deadline = time.monotonic() + ATTACH_SECONDS
        while True:
            app = serve.status().applications.get(APP_NAME)
            if app is not None and str(getattr(app.status, "value", app.status)) == "RUNNING":
                return serve.get_app_handle(APP_NAME)
            if time.monotonic() > deadline:
                raise StudioError(f"--ray-attach: no running Serve application {APP_NAME!r} on the cluster after "
                                  f"{ATTACH_SECONDS:.0f} s (status: {app.status if app else 'absent'}); deploy it "
                                  "(deploy/rayservice.yaml) or start without --ray-attach")
            time.sleep(2)

    # ---- ClusterView
    def status(self) -> ClusterStatus:
        application, states, message = "NOT_STARTED", {}, ""
        try:
            app = serve.status().applications.get(APP_NAME)
            if app is not None:
                application = str(getattr(app.status, "value", app.status))
                deployment = app.deployments.get(DEPLOYMENT)
                if deployment is not None:
                    states = {str(getattr(k, "value", k)): int(v) for k, v in deployment.replica_states.items()}
                    message = deployment.message or app.message or ""
            replicas = self._reports()
        except Exception as exc:  # noqa: BLE001 - the page says what is wrong instead of failing
            return ClusterStatus(address=self.config.address, application="UNREACHABLE",
                                 min_replicas=self.min_replicas, max_replicas=self.max_replicas,
                                 in_flight=self._in_flight(), message=f"Cannot read the cluster's status: {exc}")
        return ClusterStatus(address=self.config.address, application=application, min_replicas=self.min_replicas,
                             max_replicas=self.max_replicas, replica_states=states, replicas=tuple(replicas),
                             in_flight=self._in_flight(), message=message)

    def _reports(self) -> list:
        now = time.time()
        reports = ray.get(self.control.replicas.remote(), timeout=5)
        kept = []
        for report in sorted(reports, key=lambda r: r.replica_id):
            age = now - report.last_seen
            if age > FORGET_SECONDS:
                self.control.drop.remote(report.replica_id)
                continue
            kept.append(replace(report, health=report.health_at(now)))
        return kept

    def replica_count(self) -> int:
        return sum(1 for r in self._reports() if r.health != "unreachable")

    def close(self) -> None:
        """Remove the replicas (they hold GPUs) and disconnect; a local cluster stops with it. Replicas deployed
        by the cluster (--ray-attach) stay: their owner manages them. Closing twice does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.config.attach:
                serve.delete(APP_NAME)
        except Exception:  # noqa: BLE001 - the cluster may already be gone
            log.warning("Could not remove the Serve application", exc_info=True)
        ray.shutdown()


def _passed_env() -> dict[str, str]:
    """Switches the replicas must share with the front."""
    keys = ("GRADIO_ANALYTICS_ENABLED", "RAY_AUTH_MODE")
    return {key: os.environ[key] for key in keys if key in os.environ}
