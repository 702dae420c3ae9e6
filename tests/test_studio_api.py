"""The project's own /studio/v1 API: GAN style transfer over the shared queue, with errors naming fields."""

from __future__ import annotations

import base64
import io

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from webui.models.gan import ResnetGenerator
from webui.server import create_app


@pytest.fixture
def client(services, data_dir):
    torch.manual_seed(0)
    generator = ResnetGenerator(3, 3, ngf=8, norm="instance", n_blocks=2)
    torch.save(generator.state_dict(), data_dir / "models" / "CycleGAN" / "horse2zebra.pth")
    services.style.refresh_models()
    with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as test_client:
        yield test_client


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_style_models_listed_with_hash(client):
    [model] = client.get("/studio/v1/style-models").json()
    assert model["kind"] == "CycleGAN" and model["name"] == "CycleGAN/horse2zebra"
    assert model["title"] == f"CycleGAN/horse2zebra [{model['hash']}]"


def test_style_transfer_keeps_the_input_size_and_saves_metadata(client, data_dir):
    response = client.post("/studio/v1/style-transfer",
                           json={"model": "horse2zebra", "image": b64(Image.new("RGB", (70, 45), (90, 160, 30)))})
    assert response.status_code == 200, response.text
    data = response.json()
    out = Image.open(io.BytesIO(base64.b64decode(data["image"])))
    assert out.size == (70, 45)
    assert "Style transfer: CycleGAN" in out.info["parameters"] and "Model: horse2zebra" in data["info"]
    [saved] = (data_dir / "outputs" / "img2img-images").rglob("*.png")
    assert saved.name.endswith("-horse2zebra.png")
    assert "Model hash: " in Image.open(saved).info["parameters"]


@pytest.mark.parametrize("body, field", [
    ({"model": "nope"}, "model"),
    ({"image": "###"}, "image"),
    ({"tile": 8}, "tile"),
    ({"tile": "big"}, "tile"),
])
def test_style_transfer_errors_name_the_field(client, body, field):
    payload = {"model": "horse2zebra", "image": b64(Image.new("RGB", (16, 16))), **body}
    response = client.post("/studio/v1/style-transfer", json=payload)
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]


def test_style_transfer_is_documented(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert "/studio/v1/style-transfer" in paths and "/studio/v1/style-models" in paths
