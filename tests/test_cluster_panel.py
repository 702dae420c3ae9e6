"""The Cluster section of the Settings tab and ``GET /studio/v1/replicas``: what the front shows about its Ray Serve
replicas (health aged to unreachable, errors, an empty cluster), and that scale-out off says so and how to turn it
on. The cluster is a small in-test ClusterView returning a ClusterStatus (a data source); the real Ray cluster is
covered by the scale-out tests."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.cluster_data import NOW, StatusSource, cluster, replica
from tests.conftest import install, make_settings
from tests.gradio_events import call, event
from tests.test_security import API_LOGIN, basic
from webui.scaleout.status import STALE_SECONDS
from webui.server import create_app
from webui.services.container import build_services
from webui.ui import cluster_panel

# --- formatting ---------------------------------------------------------------------------------------------------

def test_a_row_names_the_replica_its_host_device_models_job_health_and_age():
    row = cluster_panel.replica_row(replica(), NOW)
    assert row == ["StudioReplica#a1", "gpu-host-1 (10.0.0.5)", "4242", "cuda:0 (NVIDIA H200)",
                   "tiny.safetensors [abc123], other.safetensors [def456]", "job-7 (txt2img)", "busy", "3 s ago", ""]


def test_a_silent_replica_turns_unreachable_whatever_it_said_last():
    fresh = replica(health="idle", job_id=None, job_kind=None, last_seen=NOW - STALE_SECONDS + 1)
    stale = replica(health="busy", last_seen=NOW - STALE_SECONDS - 1)
    gone = replica(health="idle", last_seen=NOW - 600)
    rows = cluster_panel.replica_rows(cluster(fresh, stale, gone), NOW)
    assert [row[6] for row in rows] == ["idle", "unreachable", "unreachable"]
    assert rows[0][5] == ""  # no job
    assert [row[7] for row in rows] == ["9 s ago", "11 s ago", "10 min ago"]
    assert f"<td{cluster_panel.ALERT}>unreachable</td>" in cluster_panel.table_html(cluster(stale), NOW)


def test_a_load_error_is_shown_and_escaped():
    broken = replica(health="idle", error="<b>sd15.safetensors</b>: sha256 differs (expected ab12, got cd34)")
    table = cluster_panel.table_html(cluster(broken), NOW)
    assert f"<td{cluster_panel.ALERT}>&lt;b&gt;sd15.safetensors&lt;/b&gt;: sha256 differs (expected ab12, got cd34)" \
        in table  # in red
    assert "<b>" not in table
    assert "class='replica-idle'" in table


def test_an_empty_cluster_says_no_replica_has_reported_yet():
    empty = cluster(replica_states={}, in_flight=0, application="DEPLOYING")
    assert cluster_panel.NO_REPLICA in cluster_panel.table_html(empty, NOW)
    assert cluster_panel.summary_text(empty) == ("Ray cluster ray://head:10001 · Serve application DEPLOYING · "
                                                 "replicas: none (min 1, max 4) · jobs in flight: 0")


def test_the_summary_counts_replicas_by_state_and_shows_serves_message():
    status = cluster(replica(), message="Deploying: waiting for resources (1 GPU)")
    summary, _ = cluster_panel.reading_html(cluster_panel.ClusterReading(True, status), NOW)
    assert "replicas: 2 running, 1 starting (min 1, max 4) · jobs in flight: 3" in summary
    assert "studio-error" in summary and "Serve: Deploying: waiting for resources (1 GPU)" in summary


def test_the_off_note_names_the_devices_and_the_flag():
    assert cluster_panel.off_note(["cuda:0", "cuda:1"]) == (
        "Scale-out is off: this process generates on cuda:0, cuda:1. To run generation on a Ray cluster, start "
        "with --ray-address; see docs/scale-out.md")


# --- REST and the UI's events, through the whole app ----------------------------------------------------------------

def _services(data_dir: Path, model_files, tiny_loader, **settings):
    install(model_files["single"], data_dir)
    return build_services(make_settings(data_dir, **settings), load=tiny_loader)


@pytest.fixture(scope="module")
def off_client(tmp_path_factory, model_files, tiny_loader):
    services = _services(tmp_path_factory.mktemp("off") / "data", model_files, tiny_loader)
    try:
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
            yield client
    finally:
        services.queue.shutdown()


@pytest.fixture(scope="module")
def source() -> StatusSource:
    return StatusSource(cluster())


@pytest.fixture(scope="module")
def on_client(tmp_path_factory, model_files, tiny_loader, source):
    services = _services(tmp_path_factory.mktemp("on") / "data", model_files, tiny_loader, api_auth=API_LOGIN)
    services = dataclasses.replace(services, scaleout=source)
    try:
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
            yield client
    finally:
        services.queue.shutdown()


AUTH = basic(*API_LOGIN[0])


def test_replicas_endpoint_off_says_how_to_turn_it_on(off_client):
    response = off_client.get("/studio/v1/replicas")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["enabled"] is False
    assert "--ray-address" in body["message"] and "docs/scale-out.md" in body["message"]
    assert body["replicas"] is None and body["address"] is None and body["in_flight"] is None


def test_replicas_endpoint_is_documented_with_its_fields(off_client):
    spec = off_client.get("/openapi.json").json()
    assert "get" in spec["paths"]["/studio/v1/replicas"]
    fields = spec["components"]["schemas"]["ReplicaReport"]["properties"]
    assert "unreachable" in fields["health"]["description"]
    assert spec["components"]["schemas"]["ReplicasReport"]["properties"]["enabled"]["description"]


def test_the_settings_tab_has_the_off_note_and_no_timer(off_client):
    config = off_client.get("/config").json()
    texts = [c.get("props", {}).get("value") for c in config["components"]]
    assert any(isinstance(t, str) and t.startswith("Scale-out is off: this process generates on cpu.")
               and "--ray-address" in t for t in texts)
    assert not any(c.get("type") == "timer" for c in config["components"])


def test_replicas_endpoint_on_reports_each_replica_aged(on_client, source):
    now = time.time()
    source.current = cluster(replica(last_seen=now - 2),
                             replica("StudioReplica#b2", health="idle", last_seen=now - 60, error="no such file"))
    response = on_client.get("/studio/v1/replicas", headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["enabled"] is True and body["address"] == "ray://head:10001" and body["in_flight"] == 3
    assert body["replica_states"] == {"RUNNING": 2, "STARTING": 1}
    first, second = body["replicas"]
    assert (first["replica_id"], first["health"], first["job_id"], first["job_kind"]) == \
        ("StudioReplica#a1", "busy", "job-7", "txt2img")
    assert first["loaded"] == ["tiny.safetensors [abc123]", "other.safetensors [def456]"]
    assert (second["health"], second["error"]) == ("unreachable", "no such file")
    assert second["seconds_since_seen"] >= 60


def test_replicas_endpoint_needs_the_api_login(on_client):
    assert on_client.get("/studio/v1/replicas").status_code == 401
    assert on_client.get("/studio/v1/replicas", headers=basic("alice", "wrong")).status_code == 401


def test_an_unreadable_cluster_is_reported_not_a_500(on_client, source):
    source.current = ConnectionError("Ray client disconnected")
    response = on_client.get("/studio/v1/replicas", headers=AUTH)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["enabled"] is True and body["replicas"] is None
    assert "Could not read the cluster's status: Ray client disconnected" in body["message"]
    source.current = cluster()
    assert on_client.get("/studio/v1/replicas", headers=AUTH).json()["replicas"] == []  # still serving


def test_refresh_fills_the_table_from_the_cluster(on_client, source):
    source.current = cluster(replica(last_seen=time.time()),
                             replica("StudioReplica#c3", health="starting", job_id=None, job_kind=None,
                                     last_seen=time.time(), error="sd15.safetensors: sha256 differs"))
    done = json.loads(call(on_client, "studio_cluster_refresh", []).splitlines()[-1].removeprefix("data: "))
    assert done["success"] is True
    summary, table = done["output"]["data"]
    assert "Serve application RUNNING" in summary
    assert "StudioReplica#a1" in table and "class='replica-starting'" in table and "sha256 differs" in table


def _select(client, api_name: str, label: str) -> str:
    """Run a select event with the data the browser sends for the tab labelled ``label``."""
    config = client.get("/config").json()
    session = uuid.uuid4().hex
    body = {"data": [], "fn_index": event(config, api_name)["id"], "session_hash": session, "trigger_id": None,
            "event_data": {"index": 0, "value": label, "selected": True}}
    assert client.post("/gradio_api/queue/join", json=body).status_code == 200
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if "process_completed" in line:
                return json.loads(line.removeprefix("data: "))["output"]["data"][0]
    raise AssertionError("the event did not complete")


def test_the_timer_ticks_only_while_settings_is_the_selected_tab(on_client):
    timers = [c for c in on_client.get("/config").json()["components"] if c.get("type") == "timer"]
    assert [(t["props"]["value"], t["props"]["active"]) for t in timers] == [(5, False)]  # off until Settings opens
    assert _select(on_client, "studio_cluster_timer", "Settings")["active"] is True
    assert _select(on_client, "studio_cluster_timer", "txt2img")["active"] is False
