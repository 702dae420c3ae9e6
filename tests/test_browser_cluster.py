"""The Settings tab's Cluster section in a real browser: without --ray-address it says scale-out is off, on which
device this process generates, and how to turn it on; the REST endpoint says the same. With a cluster (an in-test
ClusterView over a ClusterStatus, served in-process; the real Ray cluster is covered by the scale-out tests) it
shows the replicas' table, filled when the tab opens and again by Refresh and by the timer."""

from __future__ import annotations

import dataclasses
import time

import pytest

from tests.browser_support import (  # noqa: F401  (_report_failures: screenshots + app log on failure)
    ARTIFACTS, RunningApp, _report_failures, app_server, browser, chromium_binary, expect, page, screenshot)
from tests.live_server import live_server
from tests.cluster_data import StatusSource, cluster, replica

pytestmark = pytest.mark.browser


def test_settings_shows_that_scale_out_is_off_and_names_the_flag(page, app_server: RunningApp):
    page.get_by_role("tab", name="Settings", exact=True).click()
    section = page.locator("#settings_section_cluster")
    expect(section.get_by_text("Cluster", exact=True)).to_be_visible()
    note = section.locator("#cluster_summary")
    expect(note).to_contain_text("Scale-out is off: this process generates on cpu.")
    expect(note).to_contain_text("start with --ray-address; see docs/scale-out.md")
    expect(section.locator("#cluster_refresh")).to_have_count(0)  # nothing to refresh when off
    note.scroll_into_view_if_needed()
    screenshot(page, "cluster-off.png")
    ARTIFACTS.mkdir(exist_ok=True)
    section.screenshot(path=str(ARTIFACTS / "cluster-off-section.png"))

    body = page.request.get(app_server.url + "/studio/v1/replicas").json()
    assert body["enabled"] is False and "--ray-address" in body["message"]


@pytest.fixture(scope="module")
def cluster_server(tmp_path_factory, model_files, tiny_loader):
    source = StatusSource(cluster())
    with live_server(tmp_path_factory.mktemp("cluster") / "data", model_files, load=tiny_loader,
                     adapt=lambda services: dataclasses.replace(services, scaleout=source)) as server:
        yield server, source


def test_settings_shows_the_replicas_and_refreshes_them(browser, cluster_server):
    server, source = cluster_server
    now = time.time()
    source.current = cluster(
        replica(last_seen=now + 3600),  # reported "in the future": stays busy while the test runs
        replica("StudioReplica#b2", host="gpu-host-2", node_ip="10.0.0.6", health="idle", job_id=None, job_kind=None,
                last_seen=now - 120, error="sd15.safetensors: sha256 differs (expected ab12, got cd34)"))
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(45_000)
    try:
        pg = context.new_page()
        pg.goto(server.url + "/")
        pg.get_by_role("tab", name="Settings", exact=True).click()
        table = pg.locator("#cluster_replicas")
        expect(pg.locator("#cluster_summary")).to_contain_text(  # patience: a loaded CI machine mounts tabs slowly
            "Ray cluster ray://head:10001 · Serve application RUNNING · replicas: 2 running, 1 starting",
            timeout=60_000)
        expect(table.locator("tr[data-replica='StudioReplica#a1'] td").nth(6)).to_have_text("busy")
        expect(table.locator("tr[data-replica='StudioReplica#a1'] td").nth(5)).to_have_text("job-7 (txt2img)")
        gone = table.locator("tr[data-replica='StudioReplica#b2'] td")
        expect(gone.nth(6)).to_have_text("unreachable")
        expect(gone.nth(8)).to_contain_text("sha256 differs")
        table.scroll_into_view_if_needed()
        screenshot(pg, "cluster-on.png")
        pg.locator("#settings_section_cluster").screenshot(path=str(ARTIFACTS / "cluster-on-section.png"))

        source.current = cluster(replica_states={}, in_flight=0, application="DEPLOYING")
        pg.locator("#cluster_refresh").click()
        expect(table).to_contain_text("No replica has reported yet")
        expect(pg.locator("#cluster_summary")).to_contain_text("Serve application DEPLOYING")

        # No click: the 5 s timer refreshes while Settings is open (a wait for the text, not a timing check).
        source.current = cluster(replica(last_seen=time.time() + 3600))
        expect(table.locator("tr[data-replica='StudioReplica#a1']")).to_be_visible(timeout=60_000)
    finally:
        context.close()
