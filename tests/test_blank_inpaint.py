"""txt2img with an inpainting checkpoint works as in A1111: the 9-channel UNet gets a full mask and the latents of
a 0.5-grey image (A1111's txt2img_image_conditioning) on every call, instead of the job being refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from tests.conftest import install, make_settings
from webui.server import create_app
from webui.services.container import build_services

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.fixture
def inpaint_services(data_dir, model_files, tiny_loader):
    install(model_files["inpaint"], data_dir)
    svc = build_services(make_settings(data_dir), load=tiny_loader)
    yield svc
    svc.queue.shutdown()


def test_txt2img_with_an_inpainting_checkpoint_feeds_a_full_mask_and_a_grey_image(inpaint_services):
    with inpaint_services.manager.lease() as model:
        unet, vae = model.pipe.unet, model.pipe.vae
    assert unet.config.in_channels == 9
    seen: list[torch.Tensor] = []
    handle = unet.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    client = TestClient(create_app(inpaint_services), base_url="http://127.0.0.1:7860")
    try:
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 3, "width": 64, "height": 64,
                                                          "seed": 5, "sampler_name": "Euler a"})
    finally:
        handle.remove()
    assert response.status_code == 200, response.text
    assert len(seen) == 3 and all(x.shape[1] == 9 for x in seen)
    with torch.no_grad():
        grey = vae.encode(torch.zeros((1, 3, 64, 64), dtype=vae.dtype)).latent_dist.mean * vae.config.scaling_factor
    for x in seen:
        assert torch.equal(x[:, 4], torch.ones_like(x[:, 4]))  # everything is to be painted
        torch.testing.assert_close(x[:, 5:], grey.expand(x.shape[0], -1, -1, -1))
    # The noisy latents move from call to call; the conditioning does not.
    assert not torch.equal(seen[0][:, :4], seen[1][:, :4])
    image = np.asarray(_decode(response.json()["images"][0]))
    assert image.shape == (64, 64, 3) and image.std() > 0
    assert '"is_using_inpainting_conditioning": true' in response.json()["info"]


def _decode(b64: str):
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")
