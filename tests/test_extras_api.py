"""The extras / upscaler API as A1111 clients call it, with tiny upscaler models in the data dir."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from tests.image_data import decode, png_b64_of
from tests.upscaler_models import write_upscalers
from webui.api.extras import build_extras_router
from webui.api.sdapi import install_error_handlers


@pytest.fixture
def client(services):
    models = services.settings.models_dir
    write_upscalers(models)
    (models / "GFPGAN").mkdir(parents=True, exist_ok=True)
    torch.save({"w": torch.zeros(64)}, models / "GFPGAN" / "GFPGANv1.4.pth")
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_extras_router(services))
    with TestClient(app) as test_client:
        assert test_client.post("/studio/v1/refresh-upscalers").status_code == 200
        yield test_client


def png_b64(size: tuple[int, int], parameters: str | None = None, seed: int = 0) -> str:
    image = Image.fromarray((np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype(np.uint8))
    return png_b64_of(image, parameters)


def test_upscalers_list_the_model_files_with_their_scale(client):
    items = {i["name"]: i for i in client.get("/sdapi/v1/upscalers").json()}
    assert list(items)[:3] == ["None", "Lanczos", "Nearest"]
    esrgan = items["ESRGAN_2x_tiny"]
    assert esrgan["scale"] == 2 and esrgan["model_name"] == "ESRGAN"
    assert esrgan["model_path"].endswith("models/ESRGAN/ESRGAN_2x_tiny.pth")
    assert items["RealESRGAN_x4_tiny"]["scale"] == 4
    assert items["SwinIR_2x_tiny"]["scale"] == 2


def test_realesrgan_models_and_face_restorers(client, services):
    models = client.get("/sdapi/v1/realesrgan-models").json()
    assert [(m["name"], m["scale"]) for m in models] == [("RealESRGAN_x4_tiny", 4)]
    restorers = client.get("/sdapi/v1/face-restorers").json()
    assert restorers == [{"name": "GFPGAN", "cmd_dir": str(services.settings.models_dir / "GFPGAN")}]


def test_extra_single_image_with_a_model_and_a_second_upscaler(client):
    body = {"image": png_b64((24, 16), parameters="a cat\nSteps: 20, Seed: 1"), "upscaler_1": "ESRGAN_2x_tiny",
            "upscaler_2": "SwinIR_2x_tiny", "extras_upscaler_2_visibility": 0.4, "upscaling_resize": 4}
    response = client.post("/sdapi/v1/extra-single-image", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    image = decode(data["image"])
    assert image.size == (96, 64)
    assert data["html_info"] == ("<p>Postprocess upscale by: 4, Postprocess upscaler: ESRGAN_2x_tiny, "
                                 "Postprocess upscaler 2: SwinIR_2x_tiny</p>")
    assert image.info["parameters"] == "a cat\nSteps: 20, Seed: 1"
    assert image.info["postprocessing"].startswith("Postprocess upscale by: 4")


def test_extra_single_image_to_a_size_with_crop(client):
    body = {"image": png_b64((20, 20)), "upscaler_1": "RealESRGAN_x4_tiny", "resize_mode": 1,
            "upscaling_resize_w": 48, "upscaling_resize_h": 32, "upscaling_crop": True}
    data = client.post("/sdapi/v1/extra-single-image", json=body).json()
    assert decode(data["image"]).size == (48, 32)
    assert "Postprocess upscale to: 48x32" in data["html_info"]


def test_extra_batch_images(client):
    body = {"imageList": [{"data": png_b64((16, 16)), "name": "a.png"},
                          {"data": png_b64((24, 8), seed=1), "name": "b.png"}],
            "upscaler_1": "ESRGAN_2x_tiny", "upscaling_resize": 2}
    response = client.post("/sdapi/v1/extra-batch-images", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert [decode(i).size for i in data["images"]] == [(32, 32), (48, 16)]
    assert data["html_info"] == "<p>Postprocess upscale by: 2, Postprocess upscaler: ESRGAN_2x_tiny</p>"


@pytest.mark.parametrize("path, fields, field", [
    ("/sdapi/v1/extra-single-image", {"upscaler_1": "R-ESRGAN 4x+"}, "upscaler_1"),
    ("/sdapi/v1/extra-single-image", {"upscaler_2": "nope"}, "upscaler_2"),
    ("/sdapi/v1/extra-single-image", {"gfpgan_visibility": 0.5}, "gfpgan_visibility"),
    ("/sdapi/v1/extra-single-image", {"codeformer_visibility": 1}, "codeformer_visibility"),
    ("/sdapi/v1/extra-single-image", {"codeformer_weight": 2}, "codeformer_weight"),
    ("/sdapi/v1/extra-single-image", {"image": "%%%"}, "image"),
    ("/sdapi/v1/extra-batch-images", {"imageList": []}, "imageList"),
    ("/sdapi/v1/extra-batch-images", {"imageList": [{"data": "%%%", "name": "x"}]}, "imageList.0.data"),
])
def test_bad_fields_are_422_naming_them(client, path, fields, field):
    body = {"image": png_b64((8, 8)), "imageList": [{"data": png_b64((8, 8)), "name": "x.png"}], **fields}
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(field)


def test_face_restoration_refusal_says_what_is_missing(client):
    body = {"image": png_b64((8, 8)), "gfpgan_visibility": 1}
    error = client.post("/sdapi/v1/extra-single-image", json=body).json()["error"]
    assert "GFPGAN weights are present" in error and "no face detector" in error


def test_a_broken_model_file_is_a_422_naming_it_and_the_server_keeps_working(client, services):
    (services.settings.models_dir / "ESRGAN" / "broken.pth").write_bytes(b"\x00not a model" * 20)
    client.post("/studio/v1/refresh-upscalers")
    response = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64((8, 8)), "upscaler_1": "broken"})
    assert response.status_code == 422
    assert "broken.pth could not be read" in response.json()["error"]
    ok = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64((8, 8)), "upscaler_1": "ESRGAN_2x_tiny"})
    assert ok.status_code == 200
