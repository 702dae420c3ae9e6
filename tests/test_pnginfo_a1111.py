"""PNG Info as A1111 clients see it: ``POST /sdapi/v1/png-info`` answers in A1111 1.10's ``parameters`` shape and
reads A1111's PNG, JPEG and WebP files."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import ExifTags, Image, PngImagePlugin

from webui.a1111_pnginfo import a1111_parameters
from webui.api.sdapi import build_router, install_error_handlers
from webui.services.container import build_services

from tests.conftest import install, make_settings

# What A1111 adds for every key an image leaves out (parse_generation_parameters, 1.10).
A1111_DEFAULTS = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
    "Refiner switch by sampling steps": False,
}

SD15_HIRES = """\
masterpiece, best quality,   
(detailed eyes:1.2), cherry blossoms, <lora:add_detail:0.6>
Negative prompt:   (worst quality, low quality:1.4), bad anatomy
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1741860054, \
Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, \
Clip skip: 2, Hires upscale: 2, Hires upscaler: Latent, \
Lora hashes: "add_detail: 7c6bad76eb54, more: 0123456789ab", Version: v1.10.1"""

SD15_HIRES_PARAMETERS = {
    **A1111_DEFAULTS,
    "Prompt": "masterpiece, best quality,\n(detailed eyes:1.2), cherry blossoms, <lora:add_detail:0.6>",
    "Negative prompt": "(worst quality, low quality:1.4), bad anatomy",
    "Steps": "28",
    "Sampler": "DPM++ 2M",
    "Schedule type": "Karras",
    "CFG scale": "7",
    "Seed": "1741860054",
    "Size-1": "512",
    "Size-2": "768",
    "Model hash": "6ce0161689",
    "Model": "v1-5-pruned-emaonly",
    "Denoising strength": "0.45",
    "Clip skip": "2",
    "Hires upscale": "2",
    "Hires upscaler": "Latent",
    "Lora hashes": "add_detail: 7c6bad76eb54, more: 0123456789ab",
    "Version": "v1.10.1",
    "Emphasis": "Original",  # the prompt weights a part
}

OLD_FUSED = """\
a [photo] of an astronaut
Negative prompt: blurry
Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 3456789012, Size: 768x512, Version: v1.5.2"""


def test_a1111_shape_of_a_hires_sd15_text():
    assert a1111_parameters(SD15_HIRES) == SD15_HIRES_PARAMETERS


def test_old_texts_get_a1111s_compatibility_keys_and_the_fused_schedule():
    params = a1111_parameters(OLD_FUSED)
    assert params["Sampler"] == "DPM++ 2M Karras"  # as written, like A1111
    assert params["Schedule type"] == "Karras"
    # Written by 1.5.2: A1111 switches on the old prompt-editing timeline (the prompt has "[") and the
    # old alphas_cumprod downcast for such texts.
    assert params["Old prompt editing timelines"] is True
    assert params["Downcast alphas_cumprod"] is True
    assert params["Emphasis"] == "Original"  # "[photo]" is weighted 1/1.1
    assert params["Size-1"] == "768" and params["Size-2"] == "512"
    assert "Pad conds v0" not in params  # only for DDIM/PLMS


def test_texts_before_hires_resize_give_first_pass_size_and_hires_resize():
    text = "a cat\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 1024x768, First pass size: 0x0, Denoising strength: 0.7"
    params = a1111_parameters(text)
    assert (params["Size-1"], params["Size-2"]) == (576, 448)  # A1111's ~512² first pass, multiples of 64
    assert (params["Hires resize-1"], params["Hires resize-2"]) == (1024, 768)


def test_every_wxh_value_is_split_and_quoted_values_unquoted():
    text = ('a\nSteps: 20, Seed: 1, Size: 512x512, Hires resize: 1024x1536, '
            'Hires prompt: "a castle,\\nnight", Version: v1.8.0-RC-5')
    params = a1111_parameters(text)
    assert (params["Hires resize-1"], params["Hires resize-2"]) == ("1024", "1536")
    assert params["Hires prompt"] == "a castle,\nnight"
    assert "Downcast alphas_cumprod" not in params and "Emphasis" not in params


def test_no_parameters_line_is_all_prompt_plus_a1111_defaults():
    assert a1111_parameters("") == {**A1111_DEFAULTS, "Prompt": "", "Negative prompt": ""}
    two_pairs = "a quiet landscape\nstyle: watercolor, mood: calm"
    assert a1111_parameters(two_pairs) == {**A1111_DEFAULTS, "Prompt": two_pairs, "Negative prompt": ""}


# ----------------------------------------------------------------------------------------------- the route


@pytest.fixture(scope="module")
def client(tmp_path_factory, model_files, tiny_loader) -> Iterator[TestClient]:
    data_dir = tmp_path_factory.mktemp("pnginfo") / "data"
    install(model_files["single"], data_dir)
    services = build_services(make_settings(data_dir), load=tiny_loader)
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_router(services))
    try:
        with TestClient(app) as test_client:
            yield test_client
    finally:
        services.queue.shutdown()


def _a1111_file(fmt: str, infotext: str) -> bytes:
    """Bytes as A1111 saves them: a PNG "parameters" chunk; JPEG/WebP: EXIF UserComment, UTF-16BE ("UNICODE")."""
    buffer = io.BytesIO()
    image = Image.new("RGB", (16, 16), "red")
    if fmt == "PNG":
        meta = PngImagePlugin.PngInfo()
        meta.add_text("parameters", infotext)
        meta.add_text("postprocessing", "Postprocess upscaler: R-ESRGAN 4x+")
        image.save(buffer, "PNG", pnginfo=meta)
    else:
        exif = Image.Exif()
        exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = b"UNICODE\x00" + infotext.encode("utf-16-be")
        image.save(buffer, fmt, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_png_info_route_reads_a1111_images_in_a1111s_shape(client, fmt):
    data = base64.b64encode(_a1111_file(fmt, SD15_HIRES)).decode()
    response = client.post("/sdapi/v1/png-info", json={"image": data})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["info"] == SD15_HIRES
    assert body["parameters"] == SD15_HIRES_PARAMETERS
    if fmt == "PNG":
        assert body["items"] == {"postprocessing": "Postprocess upscaler: R-ESRGAN 4x+"}
    else:
        assert "parameters" not in body["items"] and "exif" not in body["items"]


def test_png_info_route_on_an_image_without_parameters(client):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    response = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(buffer.getvalue()).decode()})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["info"] == ""
    assert body["parameters"] == {**A1111_DEFAULTS, "Prompt": "", "Negative prompt": ""}


def test_png_info_route_refuses_a_non_image_naming_the_field(client):
    response = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(b"not an image").decode()})
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("image: ")
