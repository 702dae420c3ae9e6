"""Tiling (seamless textures): circular padding for the job, recorded in the infotext, restored afterwards; and a
refiner that is not on disk, refused rather than ignored (the refiner itself: tests/test_refiner.py)."""

from __future__ import annotations

import numpy as np
import torch

from tests.tiny_models import tiny_vae
from webui.infotext import parse_infotext
from webui.models.loader import LoadedModel
from webui.pipelines.common import seamless
from webui.types import Txt2ImgRequest

SMALL = dict(width=64, height=64, steps=3, save_images=False)


def paddings(model: LoadedModel) -> set[str]:
    return {m.padding_mode for name in ("unet", "vae") for m in getattr(model.pipe, name).modules()
            if isinstance(m, torch.nn.Conv2d)}


def test_tiling_changes_the_image_is_recorded_and_is_undone(services):
    plain = services.generation.txt2img(Txt2ImgRequest(prompt="bricks", seed=5, **SMALL), timeout=120)
    tiled = services.generation.txt2img(Txt2ImgRequest(prompt="bricks", seed=5, tiling=True, **SMALL),
                                        timeout=120)
    assert not np.array_equal(np.asarray(plain.images[0]), np.asarray(tiled.images[0]))
    assert parse_infotext(tiled.infotexts[0]).params["Tiling"] == "True"
    assert "Tiling" not in parse_infotext(plain.infotexts[0]).params
    with services.manager.lease() as model:
        assert paddings(model) == {"zeros"}  # restored after the job
    again = services.generation.txt2img(Txt2ImgRequest(prompt="bricks", seed=5, **SMALL), timeout=120)
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(again.images[0]))


def test_tiled_decoding_wraps_around():
    """With circular padding the VAE decoder commutes with a circular shift: the left edge continues the right."""
    torch.manual_seed(0)
    vae = tiny_vae().eval()
    latent = torch.randn(1, 4, 16, 16)
    shifted = torch.roll(latent, shifts=4, dims=-1)

    class Holder:  # what seamless() reads: a pipeline with a unet and a vae
        pass

    pipe = Holder()
    pipe.unet, pipe.vae = torch.nn.Identity(), vae
    model = LoadedModel(info=None, family="sd1", variant="normal", pipe=pipe, scheduler_config={}, default_size=64)
    with torch.no_grad():
        with seamless(model, True):
            out, out_shifted = vae.decode(latent).sample, vae.decode(shifted).sample
        plain, plain_shifted = vae.decode(latent).sample, vae.decode(shifted).sample
    factor = out.shape[-1] // latent.shape[-1]
    assert torch.allclose(torch.roll(out, shifts=4 * factor, dims=-1), out_shifted, atol=1e-4)
    assert not torch.allclose(torch.roll(plain, shifts=4 * factor, dims=-1), plain_shifted, atol=1e-4)


def test_the_api_takes_tiling_and_the_infotext_gives_it_back(services):
    from fastapi.testclient import TestClient

    from webui.server import create_app

    client = TestClient(create_app(services), base_url="http://127.0.0.1:7860")
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "tile", "steps": 2, "width": 64, "height": 64,
                                                      "seed": 1, "tiling": True})
    assert response.status_code == 200, response.text
    assert "Tiling: True" in response.json()["info"]
    bad = client.post("/sdapi/v1/txt2img", json={"prompt": "tile", "tiling": "sometimes"})
    assert bad.status_code == 422 and bad.json()["error"].startswith("tiling")


def test_an_unknown_refiner_is_refused_not_ignored(services):
    from fastapi.testclient import TestClient

    from webui.server import create_app

    client = TestClient(create_app(services), base_url="http://127.0.0.1:7860")
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "refiner_checkpoint": "sdxl-refiner",
                                                      "refiner_switch_at": 0.8})
    assert response.status_code == 422 and response.json()["error"].startswith("refiner_checkpoint: ")
