"""The training API (/studio/v1/training): methods with schemas, start with 422s naming bad settings, follow a run
to its result and samples, pause/resume/cancel, and the same auth as the rest of the API."""

from __future__ import annotations

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import install, make_settings
from tests.training_helpers import colour_set
from webui.services.container import build_services
from webui.server import create_app


@pytest.fixture(scope="module")
def env(tmp_path_factory, model_files):
    root = tmp_path_factory.mktemp("training-api")
    data = root / "data"
    install(model_files["single"], data)
    # The test's temp folders hold the training images: allowed like --batch-dirs folders.
    services = build_services(make_settings(data, batch_dirs=(tmp_path_factory.getbasetemp(),)))
    with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
        yield client, services, colour_set(root / "colours")
    services.queue.shutdown()


def _body(images, **settings):
    return {"method": "lora", "base_model": "tiny-sd15", "data_dir": str(images), "output_name": "api-lora",
            "resolution": 64, "max_train_steps": 3, "sample_prompts": ["colour0 square"], "sample_steps": 2,
            **settings}


def test_methods_list_names_and_schemas(env):
    client, _, _ = env
    methods = {m["name"]: m for m in client.get("/studio/v1/training/methods").json()}
    assert {"lora", "dreambooth_lora"} <= set(methods)
    schema = methods["lora"]["schema"]
    assert schema["properties"]["rank"]["type"] == "integer"
    assert "cosine" in schema["properties"]["lr_scheduler"]["enum"]
    assert set(schema["required"]) == {"base_model", "data_dir", "output_name"}


def test_a_run_from_start_to_result(env):
    client, services, images = env
    assert client.get("/sdapi/v1/loras").json() == []  # listed (and cached) before the run
    response = client.post("/studio/v1/training", json=_body(images))
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    assert services.queue.get(job_id).wait_done(120)
    run = client.get(f"/studio/v1/training/{job_id}").json()
    assert run["state"] == "done" and run["step"] == 3 and run["total_steps"] == 3
    assert run["output"] == str(services.settings.lora_dir / "api-lora.safetensors")
    assert [p["step"] for p in run["history"]] == [1, 2, 3] and all("loss" in p for p in run["history"])
    sample = Image.open(io.BytesIO(base64.b64decode(run["samples"][0]["image"])))
    assert sample.size == (64, 64) and run["samples"][0]["step"] == 3
    assert job_id in [r["id"] for r in client.get("/studio/v1/training").json()]
    # The new LoRA is listed at once, without a refresh or a restart.
    assert "api-lora" in [lora["name"] for lora in client.get("/sdapi/v1/loras").json()]


@pytest.mark.parametrize("change, field", [
    ({"method": "alchemy"}, "method"),
    ({"rank": "sixteen"}, "rank"),
    ({"resolution": 100}, "resolution"),
    ({"data_dir": "/no/such/folder"}, "data_dir"),
    ({"base_model": "unknown-model"}, "base_model"),
    ({"mystery": True}, "mystery"),
])
def test_bad_settings_are_422_naming_the_field(env, change, field):
    client, services, images = env
    before = len(services.queue.jobs())
    response = client.post("/studio/v1/training", json=_body(images, **change))
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(f"{field}: ")
    assert len(services.queue.jobs()) == before


def test_pause_resume_and_cancel(env):
    client, services, images = env
    job_id = client.post("/studio/v1/training", json=_body(images, output_name="api-long",
                                                              max_train_steps=500)).json()["id"]
    job = services.queue.get(job_id)
    version = 0
    while job.progress.step < 1:
        version, _ = job.watch(version, 60)
    assert client.post(f"/studio/v1/training/{job_id}/pause").status_code == 200
    while job.progress.state.value != "paused":
        version, _ = job.watch(version, 60)
    assert client.get(f"/studio/v1/training/{job_id}").json()["state"] == "paused"
    assert client.post(f"/studio/v1/training/{job_id}/resume").status_code == 200
    assert client.post(f"/studio/v1/training/{job_id}/cancel").status_code == 200
    assert job.wait_done(120)
    run = client.get(f"/studio/v1/training/{job_id}", params={"samples": False}).json()
    assert run["state"] == "cancelled" and run["resume_states"] and run["output"] is None
    again = client.post(f"/studio/v1/training/{job_id}/cancel")
    assert again.status_code == 422 and "already ended" in again.json()["error"]
    assert client.get("/studio/v1/training/nope").status_code == 422


def test_the_training_api_needs_the_api_login(tmp_path, model_files):
    data = tmp_path / "data"
    install(model_files["single"], data)
    services = build_services(make_settings(data, api_auth=(("user", "secret"),)))
    try:
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
            assert client.get("/studio/v1/training").status_code == 401
            assert client.post("/studio/v1/training", json={}).status_code == 401
            assert client.get("/studio/v1/training", auth=("user", "secret")).status_code == 200
    finally:
        services.queue.shutdown()


@pytest.mark.parametrize("body, field", [
    ({"method": "textual_inversion", "name": "swatch", "checkpoint": "tiny-sd15", "dataset": "no-such-folder",
      "init_text": "red"}, "dataset"),
    ({"method": "cyclegan", "name": "h2z", "dataset_a": "no-such-a", "dataset_b": "no-such-b"}, "dataset_a"),
    ({"method": "pix2pix", "name": "facades", "dataset": "no-such-folder"}, "dataset"),
    ({"method": "cyclegan", "name": "h2z", "dataset_a": "a", "dataset_b": "b", "mystery": 1}, "mystery"),
])
def test_every_method_takes_its_settings_over_the_api(env, body, field):
    """The body's "method" picks the method and is not one of its settings: each is checked field by field."""
    client, services, _ = env
    before = len(services.queue.jobs())
    response = client.post("/studio/v1/training", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(f"{field}: ")
    assert len(services.queue.jobs()) == before


def test_a_cyclegan_run_over_the_api_writes_both_generators(env):
    client, services, images = env
    body = {"method": "cyclegan", "name": "api-cycle", "dataset_a": str(images), "dataset_b": str(images),
            "load_size": 36, "crop_size": 32, "ngf": 4, "ndf": 4, "steps": 2, "sample_every": 0}
    response = client.post("/studio/v1/training", json=body)
    assert response.status_code == 200, response.text
    job_id = response.json()["id"]
    assert services.queue.get(job_id).wait_done(120)
    run = client.get(f"/studio/v1/training/{job_id}").json()
    assert run["state"] == "done", run["message"]
    folder = services.settings.models_dir / "CycleGAN" / "api-cycle"
    assert run["outputs"] == [str(folder / "latest_net_G_A.safetensors"), str(folder / "latest_net_G_B.safetensors")]
    assert run["output_name"] == "api-cycle"
