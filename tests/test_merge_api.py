"""POST /studio/v1/merge: a merge through the API is a job, listed in /sdapi/v1/sd-models when done; 422s name
the field."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from webui.server import create_app


@pytest.fixture
def client(services):
    with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as test_client:
        yield test_client


def test_merge_through_the_api(client, services, data_dir):
    before = {m["title"] for m in client.get("/sdapi/v1/sd-models").json()}
    response = client.post("/studio/v1/merge", json={"primary_model": "tiny-sd15", "secondary_model": "other-sd15",
                                                     "multiplier": 0.5, "output_name": "api-merge"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "done" and body["title"].startswith("api-merge.safetensors [")
    assert (data_dir / "models" / "Stable-diffusion" / "api-merge.safetensors").is_file()
    listed = {m["title"]: m for m in client.get("/sdapi/v1/sd-models").json()}
    assert set(listed) - before == {body["title"]}
    assert listed[body["title"]]["hash"] and len(listed[body["title"]]["sha256"]) == 64

    # without waiting: the job id at once, then the jobs API follows it
    queued = client.post("/studio/v1/merge", json={"primary_model": "tiny-sd15", "secondary_model": "other-sd15",
                                                   "output_name": "later", "wait": False}).json()
    assert queued["title"] is None and queued["status"] in ("queued", "running", "done")
    services.queue.get(queued["job_id"]).wait(60)
    job = client.get(f"/studio/v1/jobs/{queued['job_id']}").json()
    assert job["kind"] == "merge" and job["status"] == "done"
    assert job["request"]["output"].endswith("later.safetensors")
    assert job["result"]["checkpoint"].startswith("later.safetensors [")
    assert job["result"]["paths"] == [str(data_dir / "models" / "Stable-diffusion" / "later.safetensors")]

    # the merged model is usable at once: switch to it
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": body["title"]}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == body["title"]


BAD = [
    ({"primary_model": "tiny-sd15", "secondary_model": "other-sd15", "multiplier": 2}, "multiplier"),
    ({"primary_model": "tiny-sd15", "secondary_model": "missing"}, "secondary_model"),
    ({"primary_model": "tiny-sd15", "secondary_model": "other-sd15", "output_name": "tiny-sd15"}, "output_name"),
    ({"primary_model": "tiny-sd15", "secondary_model": "other-sd15", "interp_method": "Add difference"},
     "tertiary_model"),
    ({"primary_model": "tiny-sd15", "secondary_model": "other-sd15", "interp_method": "Magic"}, "interp_method"),
    ({"primary_model": "tiny-sd15", "secondary_model": "other-sd15", "loras": [{"name": "x", "weight": "heavy"}]},
     "loras"),
    ({"primary_model": "tiny-sd15", "format": "ckpt"}, "format"),
]


def test_bad_merge_requests_are_422_naming_the_field(client, data_dir):
    for body, field in BAD:  # one app for all of them
        response = client.post("/studio/v1/merge", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error"].startswith(field), response.json()
    assert sorted(p.name for p in (data_dir / "models" / "Stable-diffusion").iterdir()) == \
        ["other-sd15.safetensors", "tiny-sd15.safetensors"]


def test_a_damaged_or_pickled_lora_to_bake_is_422_naming_loras(client, services, data_dir):
    lora_dir = data_dir / "models" / "Lora"
    lora_dir.mkdir(parents=True, exist_ok=True)
    (lora_dir / "garbage.safetensors").write_bytes(b"\xff" * 64)
    (lora_dir / "pickled.pt").write_bytes(b"\x80\x04K\x01.")
    services.loras.refresh()
    for name in ("garbage", "pickled"):
        response = client.post("/studio/v1/merge", json={"primary_model": "tiny-sd15", "output_name": "baked",
                                                         "interp_method": "No interpolation",
                                                         "loras": [{"name": name, "weight": 1}]})
        assert response.status_code == 422, response.text
        assert response.json()["error"].startswith("loras: ") and name in response.json()["error"]
    assert not (data_dir / "models" / "Stable-diffusion" / "baked.safetensors").exists()
