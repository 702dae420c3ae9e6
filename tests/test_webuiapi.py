"""Acceptance: the unmodified PyPI ``webuiapi`` client against a real server (uvicorn on a localhost port).

Nothing in the client is patched: if these pass, scripts written for A1111 with ``webuiapi`` work against us.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests
import webuiapi
from PIL import Image

from tests.live_server import LiveServer, live_server

SIZE = {"width": 64, "height": 64}  # the tiny model is slow at larger sizes
LONG_JOB = {"prompt": "a very long job", "steps": 150, "n_iter": 4, **SIZE}  # ~1 min or more on a CPU


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_files, tiny_loader):
    with live_server(tmp_path_factory.mktemp("webuiapi") / "data", model_files, load=tiny_loader) as live:
        yield live


@pytest.fixture(scope="module")
def api(server: LiveServer) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host=server.host, port=server.port, sampler="Euler a", steps=4)


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` (a real client has nothing better than polling) until it returns a truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def gradient(size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size))
    image.putdata([(x * 4 % 256, y * 4 % 256, 128) for y in range(size) for x in range(size)])
    return image


def test_txt2img(api):
    result = api.txt2img(prompt="a lighthouse at dusk", negative_prompt="fog", seed=42, steps=4, **SIZE)
    assert isinstance(result.image, Image.Image) and result.image.size == (64, 64)
    text = result.image.info["parameters"]
    assert text.startswith("a lighthouse at dusk\nNegative prompt: fog\n")
    assert "Seed: 42," in text and "Sampler: Euler a" in text and "Steps: 4," in text
    assert result.info["all_seeds"] == [42]
    assert result.info["infotexts"] == [text]
    assert result.parameters["prompt"] == "a lighthouse at dusk"

    batch = api.txt2img(prompt="two of them", seed=7, batch_size=2, **SIZE)
    assert len(batch.images) == 2 and all(img.size == (64, 64) for img in batch.images)
    assert batch.info["all_seeds"] == [7, 8]
    assert ["Seed: 7," in batch.images[0].info["parameters"], "Seed: 8," in batch.images[1].info["parameters"]] \
        == [True, True]


def test_img2img_and_inpainting(api):
    init = gradient()
    result = api.img2img(images=[init], prompt="a painting", denoising_strength=0.5, seed=1, **SIZE)
    assert result.image.size == (64, 64)
    text = result.image.info["parameters"]
    assert "Denoising strength: 0.5" in text and "Seed: 1," in text
    assert result.info["denoising_strength"] == 0.5
    assert "init_images" not in result.parameters  # the request's images are not echoed back

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inpainted = api.img2img(images=[init], mask_image=mask, prompt="a patch", denoising_strength=0.9, seed=2,
                            mask_blur=0, inpaint_full_res=False, **SIZE)
    out = inpainted.image.convert("RGB")
    assert out.size == (64, 64)
    assert out.getpixel((2, 2)) == init.getpixel((2, 2))  # outside the mask: untouched
    assert "Denoising strength: 0.9" in inpainted.image.info["parameters"]


def test_model_listing_and_switching(api, server):
    titles = [m["title"] for m in requests.get(f"{server.api}/sd-models", timeout=10).json()]
    assert api.util_get_model_names() == sorted(titles)
    assert len(titles) == 2
    for name in ("tiny-sd15", "other-sd15", "tiny-sd15"):
        api.util_set_model(name)  # find_closest: the client picks the most similar title
        assert api.util_get_current_model().startswith(f"{name}.safetensors [")
        result = api.txt2img(prompt="which model", seed=3, **SIZE)
        assert result.info["sd_model_name"] == name
        assert f"Model: {name}," in result.image.info["parameters"]


def test_listings_and_options(api):
    samplers = [s["name"] for s in api.get_samplers()]
    assert "Euler a" in samplers and "DPM++ 2M" in samplers
    assert "Euler a" in api.util_get_sampler_names()
    schedulers = api.get_schedulers()
    assert schedulers and all("name" in s and "label" in s for s in schedulers)
    models = api.get_sd_models()
    assert {m["model_name"] for m in models} == {"tiny-sd15", "other-sd15"}
    flags = api.get_cmd_flags()
    assert flags["device"] == "cpu" and "data_dir" in flags

    options = api.get_options()
    assert options["CLIP_stop_at_last_layers"] == 1
    assert options["sd_model_checkpoint"] in {m["title"] for m in models}
    try:
        assert api.set_options({"CLIP_stop_at_last_layers": 2}) == {}
        assert api.get_options()["CLIP_stop_at_last_layers"] == 2
        result = api.txt2img(prompt="clip skip", seed=5, **SIZE)
        assert "Clip skip: 2" in result.image.info["parameters"] and result.info["clip_skip"] == 2
    finally:
        api.set_options({"CLIP_stop_at_last_layers": 1})
    assert api.get_options()["CLIP_stop_at_last_layers"] == 1


def test_progress_and_interrupt_during_a_running_job(api, server):
    runner = webuiapi.WebUIApi(host=server.host, port=server.port, sampler="Euler a", steps=4)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = runner.txt2img(seed=11, **LONG_JOB)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            outcome["error"] = exc

    started = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    progress = wait_until(lambda: (p := api.get_progress())["state"]["sampling_step"] >= 1 and p,
                          timeout=60, what="sampling to start")
    assert 0 < progress["progress"] < 1
    assert progress["state"]["job_count"] >= 1 and progress["state"]["sampling_steps"] == 150
    assert progress["state"]["job"] == "txt2img"
    assert api.interrupt() == {}
    worker.join(timeout=30)
    assert not worker.is_alive(), "the interrupted request did not come back within 30s"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.info["interrupted"] is True
    assert len(result.images) == 1  # the image in progress is finished early; the other 3 never start
    assert time.monotonic() - started < 45
    api.util_wait_for_ready(check_interval=0.1)
    idle = api.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0


def test_png_info_round_trip(api):
    result = api.txt2img(prompt="a cabin in the woods", negative_prompt="blurry", seed=99, **SIZE)
    text = result.image.info["parameters"]
    info = api.png_info(result.image)
    # Our response is {"info": text, "items": ..., "parameters": ...}; the client keeps "info" as-is when it
    # is not JSON, and "parameters" as the parsed fields.
    assert info.info == text
    assert info.images == []
    assert info.parameters["Prompt"] == "a cabin in the woods"
    assert info.parameters["Negative prompt"] == "blurry"
    assert str(info.parameters["Seed"]) == "99" and str(info.parameters["Steps"]) == "4"
    assert info.parameters["Sampler"] == "Euler a"


def test_client_that_disconnects_mid_job_frees_the_gpu(api, server):
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{server.api}/txt2img", json={**LONG_JOB, "seed": 13}, timeout=(5, 1.5))
    # The job was surely running when we hung up (it takes a minute or more); the server must notice and stop it.
    wait_until(lambda: requests.get(f"{server.api}/progress", timeout=5).json()["state"]["job_count"] == 0,
               timeout=20, what="the queue to become idle after the client hung up")
    assert time.monotonic() - started < 25
    # And the server is free for the next client at once.
    result = api.txt2img(prompt="after the hang-up", seed=4, **SIZE)
    assert result.info["interrupted"] is False and len(result.images) == 1
