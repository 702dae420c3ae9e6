"""Hires fix with an upscaler model (hr_upscaler naming a file in models/ESRGAN), through the API."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.upscaler_models import write_upscalers
from webui.infotext import parse_infotext
from webui.services.upscaling import UPSCALER_KIND

SMALL = {"prompt": "a red cube", "steps": 2, "width": 64, "height": 64, "seed": 5, "enable_hr": True,
         "denoising_strength": 0.5, "hr_scale": 2}


@pytest.fixture(scope="module")
def services(tmp_path_factory, model_files, tiny_loader):
    from tests.conftest import install, make_settings
    from webui.services.container import build_services

    data_dir = tmp_path_factory.mktemp("hires-upscaler") / "data"
    install(model_files["single"], data_dir)
    write_upscalers(data_dir / "models")
    svc = build_services(make_settings(data_dir), load=tiny_loader)
    yield svc
    svc.queue.shutdown()


@pytest.fixture(scope="module")
def client(services):
    from fastapi.testclient import TestClient

    from webui.server import create_app

    with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as test_client:
        yield test_client


def _post(client, **fields) -> dict:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def _image(data: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data["images"][0])))


def test_hires_fix_runs_an_esrgan_model_and_records_it(client, services):
    data = _post(client, hr_upscaler="ESRGAN_2x_tiny")
    image = _image(data)
    assert image.size == (128, 128)
    params = parse_infotext(image.info["parameters"]).params
    assert params["Hires upscaler"] == "ESRGAN_2x_tiny"
    # The model ran on the job's device (and stays there for the next job).
    assert services.devices[0].owner.names(UPSCALER_KIND) == [f"{UPSCALER_KIND}:ESRGAN_2x_tiny"]
    lanczos = _image(_post(client, hr_upscaler="Lanczos"))
    assert not np.array_equal(np.asarray(image), np.asarray(lanczos))


def test_an_unknown_hires_upscaler_lists_the_models_too(client):
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "hr_upscaler": "ESRGAN_4x"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error.startswith("hr_upscaler: unknown upscaler 'ESRGAN_4x'")
    assert "ESRGAN_2x_tiny" in error and "Latent (nearest-exact)" in error


def test_sd_upscale_script_runs_the_esrgan_model_and_img2img_per_tile(client, services):
    """A1111's SD upscale through the API (script_args in its order: info, overlap, upscaler, scale) with the
    model upscaler: one job, the image doubled by the model, then img2img tile by tile."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 60, 30)).save(buffer, format="PNG")
    body = {"prompt": "a red cube", "steps": 2, "width": 64, "height": 64, "seed": 5, "denoising_strength": 0.3,
            "init_images": [base64.b64encode(buffer.getvalue()).decode()],
            "script_name": "SD upscale", "script_args": [None, 16, "ESRGAN_2x_tiny", 2.0]}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    image = _image(response.json())
    assert image.size == (128, 128)
    params = parse_infotext(image.info["parameters"]).params
    assert params["SD upscale upscaler"] == "ESRGAN_2x_tiny" and params["SD upscale overlap"] == "16"
    assert f"{UPSCALER_KIND}:ESRGAN_2x_tiny" in services.devices[0].owner.names(UPSCALER_KIND)
