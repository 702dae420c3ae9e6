"""``/studio/v1/jobs`` over TestClient: the history of real jobs, live progress, cancel, and a restart."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from tests.conftest import make_settings
from tests.test_security import API_LOGIN, basic, serve
from webui.server import create_app
from webui.services.container import build_services
from webui.types import Txt2ImgRequest
from tests.job_helpers import submit_work

BASE_URL = "http://127.0.0.1:7860"
SMALL = {"width": 64, "height": 64, "steps": 3}


@pytest.fixture
def client(services):
    with TestClient(create_app(services), base_url=BASE_URL) as test_client:
        yield test_client


def _txt2img(client, **body):
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, **body})
    assert response.status_code == 200, response.text
    return response


def test_a_txt2img_job_is_listed_with_its_settings_and_result(client):
    _txt2img(client, prompt="a lighthouse", negative_prompt="fog", seed=77, sampler_name="Euler a",
             cfg_scale=6.5, save_images=True)
    jobs = client.get("/studio/v1/jobs").json()
    assert len(jobs) == 1
    job = jobs[0]
    assert (job["kind"], job["status"], job["prompt"], job["device"]) == ("txt2img", "done", "a lighthouse", "cpu")
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert job["finished"].endswith("+00:00") and job["progress"] is None and job["error"] is None

    detail = client.get(f"/studio/v1/jobs/{job['id']}").json()
    request = detail["request"]
    assert (request["seed"], request["steps"], request["sampler_name"], request["cfg_scale"]) == (77, 3, "Euler a",
                                                                                                  6.5)
    assert request["negative_prompt"] == "fog" and request["width"] == 64
    result = detail["result"]
    assert result["seeds"] == [77] and "Seed: 77" in result["infotexts"][0]
    assert len(result["paths"]) == 1 and result["paths"][0].endswith("-77.png")
    assert detail["thumbnail"]  # base64 PNG


def test_list_filters_by_kind_and_pages(client, services):
    for seed in (1, 2, 3):
        _txt2img(client, prompt=f"p{seed}", seed=seed)
    submit_work(services.queue, "test-other", lambda ctx: None).wait(30)
    prompts = [j["prompt"] for j in client.get("/studio/v1/jobs", params={"kind": "txt2img"}).json()]
    assert prompts == ["p3", "p2", "p1"]
    page = client.get("/studio/v1/jobs", params={"limit": 2, "offset": 1}).json()
    assert [j["prompt"] for j in page] == ["p3", "p2"]
    both = client.get("/studio/v1/jobs?kind=txt2img,test-other").json()
    assert len(both) == 4 and both[0]["kind"] == "test-other"


@pytest.mark.parametrize("query, field", [("limit=0", "limit"), ("limit=100000", "limit"),
                                          ("limit=many", "limit"), ("offset=-1", "offset")])
def test_bad_paging_is_a_422_naming_the_field(client, query, field):
    response = client.get(f"/studio/v1/jobs?{query}")
    assert response.status_code == 422
    assert field in response.json()["error"].split(":")[0]


def test_unknown_job_is_a_404_naming_job_id(client):
    for response in (client.get("/studio/v1/jobs/nosuchjob"), client.post("/studio/v1/jobs/nosuchjob/cancel")):
        assert response.status_code == 404
        assert response.json()["error"].startswith("job_id: no job 'nosuchjob'")


def test_live_progress_and_cancel(client, services):
    started, release = threading.Event(), threading.Event()

    def long_job(ctx):
        ctx.begin_image(0, 1, steps=10, text="holding")
        ctx.on_step(4, 10)
        started.set()
        while not ctx.interrupted and not release.is_set():
            release.wait(0.05)
        return None

    running = submit_work(services.queue, "test-long", long_job)
    assert started.wait(30)
    queued = services.generation.submit_txt2img(Txt2ImgRequest(prompt="waits", **SMALL))

    jobs = {j["id"]: j for j in client.get("/studio/v1/jobs").json()}
    assert jobs[running.id]["status"] == "running"
    progress = jobs[running.id]["progress"]
    assert (progress["step"], progress["steps"], progress["image_count"]) == (4, 10, 1)
    assert progress["fraction"] == pytest.approx(0.4) and progress["metrics"] == {}
    assert jobs[queued.id]["status"] == "queued" and jobs[queued.id]["progress"]["state"] == "queued"

    cancelled = client.post(f"/studio/v1/jobs/{queued.id}/cancel").json()
    assert cancelled == {"id": queued.id, "status": "cancelled", "stopping": False}
    assert client.get(f"/studio/v1/jobs/{queued.id}").json()["status"] == "cancelled"

    stopping = client.post(f"/studio/v1/jobs/{running.id}/cancel").json()
    assert stopping["stopping"] is True
    running.wait(30)
    assert client.get(f"/studio/v1/jobs/{running.id}").json()["status"] == "done"  # it ended at its check
    again = client.post(f"/studio/v1/jobs/{running.id}/cancel")
    assert again.status_code == 422 and again.json()["error"].startswith("job_id: ")


def test_restart_keeps_the_history_and_marks_a_killed_job_interrupted(data_dir, model_files, services):
    with TestClient(create_app(services), base_url=BASE_URL) as client:
        _txt2img(client, prompt="before the restart", seed=9)
    # A job the process was running when it died: the row says "running" and nothing will ever finish it.
    services.jobs_store.submitted("killedjob", "txt2img", None, 0, created_at=1.0)
    services.jobs_store.started("killedjob", 2.0, "cpu")
    services.queue.shutdown()
    services.jobs_store.close()

    again = build_services(make_settings(data_dir))
    try:
        with TestClient(create_app(again), base_url=BASE_URL) as client:
            jobs = {j["prompt"] or j["id"]: j for j in client.get("/studio/v1/jobs").json()}
            assert jobs["before the restart"]["status"] == "done"
            detail = client.get(f"/studio/v1/jobs/{jobs['before the restart']['id']}").json()
            assert detail["request"]["seed"] == 9 and detail["result"]["seeds"] == [9]
            assert jobs["killedjob"]["status"] == "interrupted"
            assert "stopped before this job finished" in jobs["killedjob"]["error"]
    finally:
        again.queue.shutdown()
        again.jobs_store.close()


def test_jobs_routes_need_the_api_login(tmp_path):
    with serve(tmp_path, api_auth=API_LOGIN) as client:
        assert client.get("/studio/v1/jobs").status_code == 401
        assert client.post("/studio/v1/jobs/x/cancel").status_code == 401
        assert client.get("/studio/v1/jobs", headers=basic(*API_LOGIN[0])).status_code == 200
