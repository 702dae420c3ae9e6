"""The A1111-compatible REST API through FastAPI's TestClient, on the same services as the UI."""

from __future__ import annotations

import base64
import io
import json
import threading

import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from tests.conftest import install, make_settings
from webui.server import create_app
from webui.services.container import build_services

SMALL = {"width": 64, "height": 64, "steps": 3}


@pytest.fixture
def client(services):
    with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as test_client:
        yield test_client


@pytest.fixture(scope="module")
def readonly_client(tmp_path_factory, model_files, tiny_loader):
    """One app for the tests that only read (listings) or are refused (422s): nothing they do changes it, so they
    need not rebuild the app and its UI per test. The same two checkpoints as ``services``."""
    data_dir = tmp_path_factory.mktemp("api-readonly") / "data"
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    services = build_services(make_settings(data_dir), load=tiny_loader)
    try:
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as test_client:
            yield test_client
    finally:
        services.queue.shutdown()


def decode_png(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_sd_models_lists_a1111_titles(readonly_client):
    models = readonly_client.get("/sdapi/v1/sd-models").json()
    assert [m["model_name"] for m in models] == ["other-sd15", "tiny-sd15"]
    first = models[0]
    assert first["title"] == f"other-sd15.safetensors [{first['hash']}]"
    assert len(first["hash"]) == 10 and first["sha256"].startswith(first["hash"])


def test_samplers_and_schedulers_listings(readonly_client):
    names = [s["name"] for s in readonly_client.get("/sdapi/v1/samplers").json()]
    for expected in ("Euler a", "Euler", "DDIM", "DDPM", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "UniPC",
                     "LMS", "Heun", "DPM2"):
        assert expected in names
    labels = [s["label"] for s in readonly_client.get("/sdapi/v1/schedulers").json()]
    assert "Karras" in labels and "Automatic" in labels


def test_txt2img_returns_png_with_infotext_and_info_json(client):
    body = {"prompt": "a lighthouse", "negative_prompt": "fog", "seed": 77, "sampler_name": "Euler a",
            "batch_size": 2, **SMALL}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    assert len(data["images"]) == 2
    image = decode_png(data["images"][0])
    assert image.size == (64, 64)
    assert "Seed: 77," in image.info["parameters"] and image.info["parameters"].startswith("a lighthouse\n")
    info = json.loads(data["info"])
    assert info["all_seeds"] == [77, 78]
    assert info["sampler_name"] == "Euler a"
    assert info["sd_model_name"] in ("tiny-sd15", "other-sd15")
    assert len(info["infotexts"]) == 2
    assert data["parameters"]["prompt"] == "a lighthouse"


def test_txt2img_accepts_old_fused_sampler_names_and_override_settings(client):
    body = {"prompt": "x", "seed": 1, "sampler_name": "DPM++ 2M Karras",
            "override_settings": {"sd_model_checkpoint": "tiny-sd15", "CLIP_stop_at_last_layers": 2}, **SMALL}
    data = client.post("/sdapi/v1/txt2img", json=body).json()
    text = decode_png(data["images"][0]).info["parameters"]
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in text
    assert "Model: tiny-sd15," in text and "Clip skip: 2" in text


def test_txt2img_does_not_save_unless_asked(client, data_dir):
    client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL})
    assert not list((data_dir / "outputs").rglob("*.png"))
    client.post("/sdapi/v1/txt2img", json={"prompt": "x", "save_images": True, **SMALL})
    assert len(list((data_dir / "outputs").rglob("*.png"))) == 1


@pytest.mark.parametrize("body, field", [
    ({"steps": "many"}, "steps"),
    ({"width": 100}, "width"),
    ({"width": 4096, "height": 64, "steps": 3}, "width"),
    ({"cfg_scale": "NaN"}, "cfg_scale"),
    ({"sampler_name": "Nope"}, "sampler_name"),
    ({"batch_size": 0}, "batch_size"),
    ({"seed": -5}, "seed"),
    ({"script_name": "x/y plot"}, "script_name"),
    ({"enable_hr": True, "hr_upscaler": "ESRGAN_4x"}, "hr_upscaler"),
    ({"styles": ["cinematic"]}, "styles"),
    ({"subseed_strength": 1.3}, "subseed_strength"),
    ({"restore_faces": True}, "restore_faces"),
    ({"alwayson_scripts": {"ADetailer": {"args": [True]}}}, "alwayson_scripts.ADetailer"),
    ({"s_min_uncond": 0.5}, "s_min_uncond"),
    ({"infotext": "a cat\nSteps: 20"}, "infotext"),
    ({"firstpass_image": "iVBORw0KGgo="}, "firstpass_image"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 99}}, "override_settings.CLIP_stop_at_last_layers"),
    ({"override_settings": {"sd_model_checkpoint": "missing.safetensors"}}, "override_settings.sd_model_checkpoint"),
])
def test_invalid_txt2img_fields_get_422_naming_the_field(readonly_client, body, field):
    response = readonly_client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL, **body})
    assert response.status_code == 422, response.text
    data = response.json()
    assert field in data["error"]
    assert any(field in ".".join(map(str, d["loc"])) for d in data["detail"])
    assert "Traceback" not in response.text and "Value error" not in data["error"]


def test_raw_nan_and_infinity_literals_are_rejected(readonly_client):
    raw = '{"prompt": "x", "width": 64, "height": 64, "steps": 3, "cfg_scale": Infinity}'
    response = readonly_client.post("/sdapi/v1/txt2img", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert "cfg_scale" in response.json()["error"]


def test_options_switch_checkpoint(client):
    response = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd15.safetensors"})
    assert response.status_code == 200
    options = client.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"].startswith("tiny-sd15.safetensors [")
    data = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL}).json()
    assert json.loads(data["info"])["sd_model_name"] == "tiny-sd15"
    bad = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "ghost"})
    assert bad.status_code == 422 and "sd_model_checkpoint" in bad.json()["error"]
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-sd15")


def test_progress_and_interrupt_during_a_running_job(client, services):
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 150, "n_iter": 5}
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(r=client.post("/sdapi/v1/txt2img", json=body)))
    worker.start()
    # Wait (on the job's own condition variable) until sampling is under way.
    while services.queue.current is None:
        threading.Event().wait(0.05)
    job = services.queue.current
    version = 0
    while job.progress.step < 2:
        version, _ = job.watch(version, timeout=5)
    progress = client.get("/sdapi/v1/progress").json()
    assert 0 < progress["progress"] < 1
    assert progress["state"]["sampling_steps"] == 150 and progress["state"]["job_count"] == 5
    assert progress["current_image"] is None or decode_png(progress["current_image"]).size[0] > 0
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    worker.join(timeout=120)
    response = outcome["r"]
    assert response.status_code == 200
    info = json.loads(response.json()["info"])
    assert info["interrupted"] is True and len(response.json()["images"]) == 1
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["current_image"] is None


def test_png_info_round_trip(client):
    text = "a cabin\nNegative prompt: blurry\nSteps: 7, Sampler: Euler a, CFG scale: 5.5, Seed: 99, Size: 64x64"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    encoded = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    data = client.post("/sdapi/v1/png-info", json={"image": encoded}).json()
    assert data["info"] == text
    assert data["parameters"]["Prompt"] == "a cabin" and data["parameters"]["Seed"] == "99"


@pytest.mark.parametrize("image, message", [("%%%not-base64", "not valid base64"),
                                            (base64.b64encode(b"hello").decode(), "not a readable image")])
def test_png_info_bad_image_is_422(readonly_client, image, message):
    response = readonly_client.post("/sdapi/v1/png-info", json={"image": image})
    assert response.status_code == 422 and message in response.json()["error"]
    assert response.json()["error"].startswith("image:")


def test_no_model_gives_409_with_instructions(data_dir):
    services = build_services(make_settings(data_dir))
    try:
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
            response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", **SMALL})
            assert response.status_code == 409
            assert "No checkpoint found" in response.json()["error"]
    finally:
        services.queue.shutdown()


def test_ui_and_openapi_served_on_the_same_port(readonly_client):
    assert readonly_client.get("/").status_code == 200
    paths = readonly_client.get("/openapi.json").json()["paths"]
    assert "/sdapi/v1/txt2img" in paths and "/sdapi/v1/options" in paths


def png_b64(image: Image.Image, data_url: bool = True) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    raw = base64.b64encode(buffer.getvalue()).decode()
    return "data:image/png;base64," + raw if data_url else raw


def test_img2img_with_data_urls_and_mask(client):
    init = Image.new("RGB", (64, 64), (200, 120, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    body = {"prompt": "x", "init_images": [png_b64(init)], "mask": png_b64(mask, data_url=False),
            "denoising_strength": 0.9, "mask_blur": 0, "inpaint_full_res": False, "seed": 5, **SMALL}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    out = decode_png(data["images"][0])
    assert out.size == (64, 64) and out.getpixel((2, 2)) == (200, 120, 40)  # outside the mask: untouched
    assert "Denoising strength: 0.9" in out.info["parameters"]
    assert "init_images" not in data["parameters"]
    assert json.loads(data["info"])["denoising_strength"] == 0.9


@pytest.mark.parametrize("patch, field", [
    ({"init_images": []}, "init_images"),
    ({"init_images": ["@@@"]}, "init_images.0"),
    ({"init_images": ["aGVsbG8="]}, "init_images.0"),
    ({"mask": "data:image/png;base64,@@"}, "mask"),
    ({"denoising_strength": 1.5}, "denoising_strength"),
    ({"resize_mode": 7}, "resize_mode"),
])
def test_img2img_bad_fields_are_422(readonly_client, patch, field):
    body = {"prompt": "x", "init_images": [png_b64(Image.new("RGB", (64, 64)))], **SMALL, **patch}
    response = readonly_client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(field + ":")


def test_img2img_mask_size_mismatch_is_422(readonly_client):
    body = {"init_images": [png_b64(Image.new("RGB", (64, 64)))], "mask": png_b64(Image.new("L", (32, 32))),
            **SMALL}
    response = readonly_client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 422 and response.json()["error"].startswith("mask: is 32x32")


def test_images_past_the_pixel_budget_are_refused_before_decoding(readonly_client):
    huge = png_b64(Image.new("L", (4100, 4100)))  # compresses to a few KB, would be 16.8 MP decoded
    response = readonly_client.post("/sdapi/v1/img2img", json={"init_images": [huge], **SMALL})
    assert response.status_code == 422
    assert "over the pixel budget" in response.json()["error"]


def test_refresh_checkpoints_finds_a_dropped_file(client, data_dir, model_files):
    import shutil
    before = {m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()}
    shutil.copy2(model_files["single"], data_dir / "models" / "Stable-diffusion" / "dropped.safetensors")
    assert client.post("/sdapi/v1/refresh-checkpoints").json() == {}
    after = {m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()}
    assert after - before == {"dropped"}


def test_skip_ends_the_running_batch_and_keeps_it_via_the_api(client, services):
    body = {"prompt": "x", "seed": 10, "width": 64, "height": 64, "steps": 60, "n_iter": 2}
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(r=client.post("/sdapi/v1/txt2img", json=body)))
    worker.start()
    while services.queue.current is None:
        threading.Event().wait(0.05)
    job, version = services.queue.current, 0
    while job.progress.step < 2:
        version, _ = job.watch(version, timeout=5)
    assert client.post("/sdapi/v1/skip").json() == {}
    worker.join(timeout=120)
    # As A1111: the skipped batch ends early and is returned; the next one runs in full.
    assert json.loads(outcome["r"].json()["info"])["all_seeds"] == [10, 11]


def test_cmd_flags_and_bad_option_values(readonly_client):
    flags = readonly_client.get("/sdapi/v1/cmd-flags").json()
    assert flags["listen"] is False and flags["port"] == 7860
    response = readonly_client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": "two"})
    assert response.status_code == 422 and "CLIP_stop_at_last_layers" in response.json()["error"]
    response = readonly_client.post("/sdapi/v1/options", json=["not", "a", "dict"])
    assert response.status_code == 422


@pytest.mark.parametrize("name, marker", [("toy-ip2p", "Image CFG scale: 2.5"),
                                          ("tiny-inpainting", "Denoising strength: 0.8")])
def test_img2img_api_with_instruct_pix2pix_and_inpainting_checkpoints(client, data_dir, model_files, name, marker):
    install(model_files["ip2p" if "ip2p" in name else "inpaint"], data_dir)
    client.post("/sdapi/v1/refresh-checkpoints")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    body = {"prompt": "make it winter", "init_images": [png_b64(Image.new("RGB", (64, 64), (10, 200, 10)))],
            "image_cfg_scale": 2.5, "denoising_strength": 0.8, "seed": 1,
            "override_settings": {"sd_model_checkpoint": name}, **SMALL}
    if "inpainting" in name:
        body.update(mask=png_b64(mask), mask_blur=0, inpaint_full_res=False)
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    text = decode_png(response.json()["images"][0]).info["parameters"]
    assert marker in text and f"Model: {name}," in text
