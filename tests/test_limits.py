"""Resource limits and clear errors: prompt length in tokens, the per-job pixel budget and time limit, the style
transfer tile cap, options that accept known keys only, UI jobs cancelled when the browser goes away, and inputs
that used to give a 500 (lone surrogates, huge numbers, a full or unwritable outputs folder)."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import resource
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests import gradio_events
from tests.conftest import install, make_settings
from tests.live_server import live_server
from tests.test_style_transfer import TINY_SPECS, gradient_image, save_pth, tiny_generator
from webui.api.a1111_info import a1111_info
from webui.cli import parse_settings
from webui.config import Limits
from webui.errors import Cancelled, InvalidRequest
from webui.models.registry import HashCache
from webui.server import create_app
from webui.services.container import Services, build_services
from webui.services.generation import GenerationService
from webui.services.jobs import JobKind, JobQueue
from webui.services.options import OPTIONS
from webui.services.storage import ImageStore
from webui.services.style import StyleTransferRequest, StyleTransferService
from webui.types import JobState, Txt2ImgRequest
from webui.ui.generation_form import stream_job

SMALL = dict(width=64, height=64, steps=2)
SURROGATE = "\\udcff"  # as a client writes it in JSON: valid JSON, but no UTF-8 encoder accepts the result


def png_b64(size: tuple[int, int] = (32, 32)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, "red").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def post_raw(client: TestClient, path: str, text: str):
    """POST JSON text as written, so NaN literals and \\u escapes reach the server unchanged."""
    return client.post(path, content=text.encode(), headers={"Content-Type": "application/json"})


def error(response) -> str:
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    return response.json()["error"]


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Iterator[tuple[TestClient, Services]]:
    """The whole app with no checkpoint: validation answers fast, and a valid job fails at once with a 409."""
    services = build_services(make_settings(tmp_path_factory.mktemp("bare")))
    try:
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
            yield client, services
    finally:
        services.queue.shutdown()


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, model_files, tiny_loader) -> Iterator[tuple[TestClient, Services]]:
    """The whole app over the tiny checkpoint, for the tests that really generate."""
    data_dir = tmp_path_factory.mktemp("loaded")
    install(model_files["single"], data_dir)
    services = build_services(make_settings(data_dir), load=tiny_loader)
    try:
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
            yield client, services
    finally:
        services.queue.shutdown()


# --- prompt length, in tokens, before queueing ------------------------------------------------------------------

@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_prompt_over_the_token_limit_gets_422_with_the_count(bare, field):
    client, _ = bare
    response = client.post("/sdapi/v1/txt2img", json={field: "a cat, " * 600})  # 3 tokens per repeat
    assert response.status_code == 422
    assert error(response) == (f"{field}: 1800 tokens is over this server's limit of 1500 tokens "
                               "(20 chunks of 75)")


def test_over_long_prompts_are_refused_before_anything_is_queued(loaded):
    _, services = loaded
    cases = [("a cat, " * 600, "1800 tokens"), ("x" * 40_000, "40000 characters"),
             ("a BREAK " * 40, "40 BREAK keywords"), ("(a" * 2000, "2000 emphasis brackets"),
             ("a BREAK " * 26 + "a, " * 400, "splits into 37 chunks of 75 tokens")]
    for prompt, message in cases:
        with pytest.raises(InvalidRequest, match=message) as refused:
            services.generation.submit_txt2img(Txt2ImgRequest(prompt=prompt, **SMALL))
        assert refused.value.field == "prompt"
    assert services.queue.current is None and services.queue.pending_count == 0


def test_a_long_prompt_within_the_limit_still_generates(loaded):
    _, services = loaded
    prompt = ", ".join(["a red fox in the snow"] * 200)  # 1399 tokens: 19 chunks of 75, never truncated
    result = services.generation.txt2img(Txt2ImgRequest(prompt=prompt, save_images=False, **SMALL), timeout=120)
    assert len(result.images) == 1 and result.infotexts[0].startswith(prompt)


def test_a_megabyte_prompt_is_refused_with_bounded_memory(bare):
    client, _ = bare
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a lighthouse at dusk " * 50_000})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert response.status_code == 422 and "characters is over" in error(response)
    assert peak - before < 64 * 1024  # the body itself is 1 MB; nothing was tokenized or queued


def test_prompt_limit_is_a_flag():
    settings = parse_settings(["--max-prompt-tokens", "300", "--max-job-pixels", "1000000", "--max-job-seconds",
                               "90", "--max-style-tile", "512"])
    assert (settings.limits.max_prompt_tokens, settings.limits.max_job_pixels, settings.limits.max_job_seconds,
            settings.limits.max_style_tile) == (300, 1_000_000, 90, 512)
    for bad in (["--max-prompt-tokens", "10"], ["--max-job-seconds", "-1"], ["--max-style-tile", "nan"]):
        with pytest.raises(SystemExit):
            parse_settings(bad)


# --- one pixel budget per job ---------------------------------------------------------------------------------

def test_width_height_batch_and_count_share_one_budget(bare):
    client, _ = bare
    body = {"width": 512, "height": 512, "batch_size": 8, "n_iter": 100}  # each within its own limit
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 422
    assert error(response).startswith("n_iter: width x height x batch_size x n_iter = 512x512x8x100 = 209.7 MP, "
                                      "over this server's per-job budget of 33.6 MP")
    assert error(client.post("/sdapi/v1/txt2img", json={**body, "n_iter": 1, "batch_size": 8})) \
        != error(response)  # 2 MP: within the budget (then 409: no model here), not refused for size


def test_pixel_budget_is_configurable_and_exact(tmp_path, model_files, tiny_loader):
    install(model_files["single"], tmp_path)
    services = build_services(make_settings(tmp_path, limits=Limits(max_width=512, max_height=512,
                                                                    max_job_pixels=64 * 64 * 4)),
                              load=tiny_loader)
    try:
        ok = services.generation.txt2img(Txt2ImgRequest(batch_size=2, n_iter=2, save_images=False, **SMALL), 120)
        assert len(ok.images) == 4
        with pytest.raises(InvalidRequest) as over:
            services.generation.submit_txt2img(Txt2ImgRequest(batch_size=2, n_iter=3, **SMALL))
        assert str(over.value) == ("n_iter: width x height x batch_size x n_iter = 64x64x2x3 = 24576 pixels, over "
                                   "this server's per-job budget of 16384 pixels")
    finally:
        services.queue.shutdown()


# --- per-job time limit -----------------------------------------------------------------------------------------

def test_a_job_past_the_time_limit_is_stopped_like_interrupt():
    clock = iter(range(0, 1000, 10))  # every look at the clock moves it 10 s on
    queue = JobQueue(max_pending=2, max_job_seconds=35, clock=lambda: next(clock))
    try:
        def work(ctx):
            done = 0
            while not ctx.should_stop():
                done += 1
            return done

        queue.register(JobKind("test", lambda ctx, _request: work(ctx)))
        job = queue.submit("test")
        assert job.wait(30) == 3  # checks at 10, 20, 30 s passed; the one at 40 s stopped it
        assert job.progress.state is JobState.DONE and job.interrupted.is_set()
        assert job.progress.textinfo == "stopped after 35 s (the server's per-job limit)"
        untimed = JobQueue(max_pending=2, max_job_seconds=0, clock=lambda: next(clock))
        try:
            untimed.register(JobKind("test", lambda ctx, _request: ctx.interrupted))
            assert untimed.submit("test").wait(30) is False
        finally:
            untimed.shutdown()
    finally:
        queue.shutdown()


def test_generation_past_the_time_limit_keeps_what_was_done(loaded, tmp_path):
    _, services = loaded
    # The clock jumps past the limit once the second batch has begun, wherever the checks happen to fall.
    queue = JobQueue(max_pending=2, max_job_seconds=600, clock=lambda: 1e9 if (
        (job := queue.current) is not None and job.progress.image_index >= 1) else 0.0, devices=[services.manager])
    generation = GenerationService(services.settings, services.manager, queue, ImageStore(tmp_path / "outputs"))
    try:
        result = generation.txt2img(Txt2ImgRequest(prompt="a cat", n_iter=3, seed=5, **SMALL), timeout=120)
    finally:
        queue.shutdown()
    # The first batch whole; the second is stopped inside its first step (webui/pipelines/interrupt.py), before
    # anything of it was finished, so it returns nothing.
    assert result.interrupted and result.seeds == [5]
    assert len(result.paths) == 1
    message = "The job was stopped after 600 s (the server's per-job limit); 1 image(s) done."
    assert result.warnings == [message] and a1111_info(result)["warnings"] == [message]
    assert "per-job limit" not in result.infotexts[0]


@pytest.fixture
def style_models(tmp_path) -> Path:
    models = tmp_path / "models"
    save_pth(tiny_generator(TINY_SPECS["resnet-instance"]), models / "CycleGAN" / "horse2zebra.pth")
    return models


def test_style_transfer_past_the_time_limit_is_stopped(style_models, tmp_path):
    queue = JobQueue(max_pending=2, max_job_seconds=60, clock=lambda: 1e9 if (
        (job := queue.current) is not None and job.progress.step >= 1) else 0.0)
    service = StyleTransferService(style_models, queue, ImageStore(tmp_path / "outputs"),
                                   HashCache(tmp_path / "cache.json"))
    try:
        job = service.submit(StyleTransferRequest(model="horse2zebra", image=gradient_image(200, 200), tile=64,
                                                  overlap=8))
        with pytest.raises(Cancelled, match=r"stopped after 60 s \(the server's per-job limit\)"):
            job.wait(60)
        assert job.progress.step == 1  # one tile of nine ran
    finally:
        queue.shutdown()


# --- style transfer tile cap ------------------------------------------------------------------------------------

def test_style_transfer_tile_is_capped_by_the_server(bare, style_models, tmp_path):
    client, _ = bare
    response = client.post("/studio/v1/style-transfer", json={"model": "any", "image": png_b64(), "tile": 4096})
    assert response.status_code == 422
    assert error(response) == "tile: 4096 is over this server's limit of 1024 pixels"
    queue = JobQueue(max_pending=2)
    service = StyleTransferService(style_models, queue, ImageStore(tmp_path / "outputs"), max_tile=128)
    try:
        with pytest.raises(InvalidRequest, match="tile: 256 is over this server's limit of 128"):
            service.submit(StyleTransferRequest(model="horse2zebra", image=gradient_image(64, 64), tile=256))
        assert service.run(StyleTransferRequest(model="horse2zebra", image=gradient_image(64, 64), tile=128,
                                                save=False), 60).image.size == (64, 64)
    finally:
        queue.shutdown()


# --- options: known keys only, typed and bounded ----------------------------------------------------------------

def test_unknown_option_is_refused_and_nothing_is_stored(bare):
    client, services = bare
    config = services.settings.data_dir / "config.json"
    before = config.read_bytes() if config.exists() else None
    for body in ({"outdir_everything": "/etc"}, {"x" * 1_000_000: 1}, {"jpeg_quality": 80, "my_secret_blob": "y"}):
        response = client.post("/sdapi/v1/options", json=body)
        assert response.status_code == 422
        message = error(response)
        assert "unknown option" in message and "jpeg_quality" in message and len(message) < 4000
    assert (config.read_bytes() if config.exists() else None) == before  # all or nothing
    assert client.get("/sdapi/v1/options").json()["jpeg_quality"] == 80


@pytest.mark.parametrize("body, field", [
    ({"sd_vae": "v" * 1_000_000}, "sd_vae"),
    ({"samples_format": "exe"}, "samples_format"),
    ({"samples_save": "yes"}, "samples_save"),
    ({"CLIP_stop_at_last_layers": True}, "CLIP_stop_at_last_layers"),
    ({"CLIP_stop_at_last_layers": 2.5}, "CLIP_stop_at_last_layers"),
    ({"jpeg_quality": 2**64}, "jpeg_quality"),
    ({"eta_ddim": 1e308}, "eta_ddim"),
    ({"eta_noise_seed_delta": -1}, "eta_noise_seed_delta"),
    ({"provenance_watermark": 0}, "provenance_watermark"),
    ({"sd_vae": {"nested": "object"}}, "sd_vae"),
    ({"sd_model_checkpoint": 12}, "sd_model_checkpoint"),
])
def test_option_values_are_typed_and_bounded(bare, body, field):
    client, _ = bare
    response = client.post("/sdapi/v1/options", json=body)
    assert response.status_code == 422 and error(response).startswith(f"{field}: ")


def test_a1111_options_clients_set_are_accepted_and_stored(bare):
    client, services = bare
    defaults = client.get("/sdapi/v1/options").json()
    assert {k: defaults[k] for k in ("provenance_ai_marker", "provenance_watermark", "provenance_c2pa",
                                     "safety_checker")} == {"provenance_ai_marker": True, "provenance_watermark": True,
                                                            "provenance_c2pa": True, "safety_checker": False}
    # A client that posts back the whole dict it read is fine.
    assert client.post("/sdapi/v1/options", json=defaults).status_code == 200
    changes = {"samples_format": "png", "eta_noise_seed_delta": 0, "CLIP_stop_at_last_layers": 2,
               "s_noise": 1, "provenance_c2pa": False}
    assert client.post("/sdapi/v1/options", json=changes).json() == {}
    options = client.get("/sdapi/v1/options").json()
    assert {k: options[k] for k in changes} == {**changes, "s_noise": 1.0}
    assert services.options.value("provenance_c2pa") is False and services.options.clip_skip == 2
    stored = json.loads((services.settings.data_dir / "config.json").read_text())
    assert stored["CLIP_stop_at_last_layers"] == 2 and set(stored) <= set(OPTIONS)
    client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1, "provenance_c2pa": True})


@pytest.mark.parametrize("key, value", [("upcast_attn", True), ("sd_unet", "other"), ("export_for_4chan", True)])
def test_a1111_options_we_do_not_honour_are_refused_not_stored(bare, key, value):
    client, _ = bare
    response = client.post("/sdapi/v1/options", json={key: value})
    assert response.status_code == 422
    assert error(response).startswith(f"{key}: {value!r} is not supported by this server yet")
    assert client.get("/sdapi/v1/options").json()[key] != value


def test_a_config_file_with_unknown_or_invalid_keys_still_starts(tmp_path, caplog):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "config.json").write_text(json.dumps({
        "sd_unet": "other", "junk": "x" * 1000, "CLIP_stop_at_last_layers": "two", "jpeg_quality": 80,
        "sd_model_checkpoint": "last-used.safetensors"}))
    with caplog.at_level(logging.WARNING):
        services = build_services(make_settings(data_dir))
    try:
        options = services.options.get_all()
        assert options["sd_unet"] == "Automatic" and options["jpeg_quality"] == 80  # not honoured: dropped
        assert options["CLIP_stop_at_last_layers"] == 1 and "junk" not in options
        assert "junk: unknown option" in caplog.text and "CLIP_stop_at_last_layers" in caplog.text
        assert "sd_unet: 'other' is not supported" in caplog.text
        services.options.update({"CLIP_stop_at_last_layers": 2})
        stored = json.loads((data_dir / "config.json").read_text())
        assert "junk" not in stored and stored["CLIP_stop_at_last_layers"] == 2
        assert stored["sd_model_checkpoint"] == "last-used.safetensors"  # kept for whoever restores it
    finally:
        services.queue.shutdown()
    (data_dir / "config.json").write_text("[1, 2")  # not even JSON
    services = build_services(make_settings(data_dir))
    services.queue.shutdown()
    assert services.options.get_all()["samples_format"] == "png"


# --- UI jobs end when the browser goes away ---------------------------------------------------------------------

@pytest.mark.parametrize("cancel", [True, False])
def test_closing_the_ui_stream_interrupts_its_job(loaded, cancel):
    """Gradio closes a streaming handler's generator when its client disconnects (queue reset_iterators)."""
    _, services = loaded
    request = Txt2ImgRequest(prompt="a cat", n_iter=100, save_images=False, **SMALL)
    jobs = []

    def submit():
        jobs.append(services.generation.submit_txt2img(request))
        return jobs[0]

    stream = stream_job(submit, cancel_on_disconnect=cancel)
    next(stream)
    stream.close()  # what Gradio does on disconnect
    [job] = jobs
    if not cancel:
        assert not job.interrupted.is_set()
        job.interrupt()  # do not leave 100 batches running for the next test
    result = job.wait(120)
    assert job.interrupted.is_set() and result.interrupted and len(result.images) < 100


def test_a_gradio_api_client_that_hangs_up_has_its_job_interrupted(tmp_path, model_files, tiny_loader):
    """End to end: the browser's event stream closed mid-job; Gradio closes the handler, which interrupts."""
    with live_server(tmp_path / "data", model_files, load=tiny_loader) as server, httpx.Client(base_url=server.url) as client:
        config = client.get("/config").json()
        by_label = {"Prompt": "a cat", "Negative prompt": "", "Sampling steps": 2, "Width": 64, "Height": 64,
                    "Batch count": 100}
        joined, session = gradio_events.join(client, config, "txt2img",
                                             gradio_events.inputs_by_label(config, "txt2img", by_label))
        assert joined.status_code == 200, joined.text
        with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}, timeout=60) as stream:
            for line in stream.iter_lines():
                if "image batch 1/100" in line:  # the job is running: hang up
                    break
        [job] = [j for j in server.services.queue._jobs.values() if j.kind == "txt2img"]
        assert job.wait_done(120)
        assert job.interrupted.is_set() and job.result.interrupted and len(job.result.images) < 100


# --- inputs that used to give a 500 -----------------------------------------------------------------------------

@pytest.mark.parametrize("path, text, field", [
    ("/sdapi/v1/txt2img", f'{{"prompt": "a {SURROGATE} cat"}}', "prompt"),
    ("/sdapi/v1/txt2img", f'{{"negative_prompt": "{SURROGATE}"}}', "negative_prompt"),
    ("/sdapi/v1/txt2img", f'{{"styles": ["ok", "{SURROGATE}"]}}', "styles.1"),
    ("/sdapi/v1/txt2img", f'{{"sampler_name": "{SURROGATE}"}}', "sampler_name"),
    ("/sdapi/v1/txt2img", f'{{"override_settings": {{"sd_model_checkpoint": "{SURROGATE}"}}}}',
     "override_settings.sd_model_checkpoint"),
    ("/sdapi/v1/txt2img", f'{{"alwayson_scripts": {{"x": {{"args": ["{SURROGATE}"]}}}}}}',
     "alwayson_scripts.x.args.0"),
    ("/sdapi/v1/txt2img", '{"some_extra": NaN}', "some_extra"),
    ("/sdapi/v1/img2img", f'{{"prompt": "{SURROGATE}", "init_images": ["{png_b64()}"]}}', "prompt"),
    ("/sdapi/v1/png-info", f'{{"image": "{SURROGATE}"}}', "image"),
    ("/sdapi/v1/extra-single-image", f'{{"image": "{png_b64()}", "upscaler_1": "{SURROGATE}"}}', "upscaler_1"),
    ("/sdapi/v1/options", f'{{"sd_vae": "{SURROGATE}"}}', "sd_vae"),
    ("/sdapi/v1/options", f'{{"sd_model_checkpoint": "{SURROGATE}"}}', "sd_model_checkpoint"),
])
def test_lone_surrogates_and_nan_get_422_naming_the_field(bare, path, text, field):
    client, _ = bare
    response = post_raw(client, path, text)
    assert response.status_code == 422, response.text
    message = error(response)
    assert message.startswith(f"{field}: ")
    if "NaN" not in text:
        assert message.endswith("contains invalid Unicode (lone surrogate)") or "checkpoint title" in message


@pytest.mark.parametrize("path, text, quoted", [
    ("/sdapi/v1/txt2img", f'{{"prompt": "ok", "{SURROGATE}": 1}}', "\\udcff: key contains invalid Unicode"),
    ("/sdapi/v1/options", f'{{"{SURROGATE}": 1}}', "\\udcff: unknown option"),
    ("/studio/v1/style-transfer", f'{{"model": "{SURROGATE}", "image": "{png_b64()}"}}',
     "model: contains invalid Unicode"),
    ("/studio/v1/style-transfer", f'{{"model": "m", "image": "{png_b64()}", "{SURROGATE}": 1}}', "body: "),
])
def test_surrogates_in_keys_and_echoed_names_never_give_500(bare, path, text, quoted):
    client, _ = bare
    response = post_raw(client, path, text)
    assert response.status_code == 422, response.text
    assert quoted in error(response)  # the offending name, where quoted back, is escaped


def test_lone_surrogate_refused_on_the_ui_path_too():
    with pytest.raises(InvalidRequest, match="prompt: contains invalid Unicode"):
        Txt2ImgRequest.parse(prompt="a \udcff cat")
    with pytest.raises(InvalidRequest, match="model: contains invalid Unicode"):
        StyleTransferRequest(model="\udcff", image=Image.new("RGB", (8, 8)))


HOSTILE_NUMBERS = ["1e308", "-1e308", "-1", "-0", "0", str(2**64), str(-(2**64)), "NaN", "Infinity", "-Infinity",
                   "1" + "0" * 400]
NUMERIC_FIELDS = {
    "/sdapi/v1/txt2img": ({"steps": 1, "width": 64, "height": 64},
                          ["seed", "subseed", "subseed_strength", "batch_size", "n_iter", "steps", "cfg_scale",
                           "width", "height", "denoising_strength"]),
    "/sdapi/v1/img2img": ({"steps": 1, "width": 64, "height": 64, "init_images": [png_b64()]},
                          ["resize_mode", "denoising_strength", "image_cfg_scale", "mask_blur", "inpainting_fill",
                           "inpaint_full_res_padding", "inpainting_mask_invert", "cfg_scale", "seed"]),
    "/sdapi/v1/extra-single-image": ({"image": png_b64((16, 16))},
                                     ["resize_mode", "upscaling_resize", "upscaling_resize_w", "upscaling_resize_h",
                                      "gfpgan_visibility", "codeformer_visibility", "codeformer_weight",
                                      "extras_upscaler_2_visibility"]),
    "/studio/v1/style-transfer": ({"model": "none", "image": png_b64()}, ["tile", "overlap"]),
    "/sdapi/v1/options": ({}, ["CLIP_stop_at_last_layers", "jpeg_quality", "eta_ddim", "eta_noise_seed_delta",
                               "s_noise", "show_progress_every_n_steps"]),
}


@pytest.mark.parametrize("path", list(NUMERIC_FIELDS))
def test_hostile_numbers_never_give_500(bare, path):
    client, _ = bare
    base, fields = NUMERIC_FIELDS[path]
    failures = []
    for field in fields:
        for number in HOSTILE_NUMBERS:
            text = json.dumps({**base, field: "@@"}).replace('"@@"', number)
            response = post_raw(client, path, text)
            if response.status_code >= 500 or (response.status_code != 200 and not response.json().get("error")):
                failures.append((field, number, response.status_code, response.text[:200]))
    assert not failures
    client.post("/sdapi/v1/options", json={k: OPTIONS[k].default for k in NUMERIC_FIELDS["/sdapi/v1/options"][1]})


def test_huge_upscale_factor_is_a_422(bare):
    client, _ = bare
    response = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64(), "upscaling_resize": 1e308})
    assert response.status_code == 422
    assert error(response).startswith("upscaling_resize: ")


# --- a failed save returns the image with a warning -------------------------------------------------------------

def test_unwritable_outputs_return_the_image_with_a_warning(loaded):
    client, services = loaded
    blocker = services.settings.outputs_dir / "txt2img-images"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the folder should be")  # root ignores chmod; this fails for everyone
    try:
        response = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "save_images": True, "seed": 3,
                                                          "n_iter": 2, **SMALL})
        assert response.status_code == 200, response.text
        body = response.json()
        assert len(body["images"]) == 2
        info = json.loads(body["info"])
        assert info["warnings"] == ["Image not saved to the outputs folder (Not a directory); it is only returned "
                                    "here."]
        assert "not saved" not in info["infotexts"][0]
        result = services.generation.txt2img(Txt2ImgRequest(prompt="a cat", **SMALL), timeout=120)
        assert len(result.images) == 1 and result.paths == [] and len(result.warnings) == 1
    finally:
        blocker.unlink()


def test_unwritable_outputs_keep_the_style_transfer_result(style_models, tmp_path):
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "img2img-images").write_text("not a folder")
    queue = JobQueue(max_pending=2)
    service = StyleTransferService(style_models, queue, ImageStore(tmp_path / "outputs"))
    try:
        result = service.run(StyleTransferRequest(model="horse2zebra", image=gradient_image(32, 32)), 60)
    finally:
        queue.shutdown()
    assert result.image.size == (32, 32) and result.path is None
    assert result.warnings and "not saved" in result.warnings[0]


def _tmpfs(tmp_path: Path, options: str) -> Iterator[Path]:
    """A tmpfs, where this machine allows mounting one (root, no container restrictions)."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path]:
    yield from _tmpfs(tmp_path, "size=64k")


@pytest.fixture
def read_only_disk(tmp_path) -> Iterator[Path]:
    yield from _tmpfs(tmp_path, "size=64k,ro")  # read-only for root too, unlike chmod


def test_read_only_outputs_return_the_images_with_a_warning(loaded, read_only_disk):
    _, services = loaded
    generation = GenerationService(services.settings, services.manager, services.queue,
                                   ImageStore(read_only_disk / "outputs"))
    result = generation.txt2img(Txt2ImgRequest(prompt="a cat", n_iter=2, seed=1, **SMALL), timeout=120)
    assert len(result.images) == 2 and result.paths == []
    assert result.warnings == ["Image not saved to the outputs folder (Read-only file system); it is only "
                               "returned here."]


def test_a_full_disk_returns_the_images_and_leaves_no_partial_file(loaded, tiny_disk):
    _, services = loaded
    store = ImageStore(tiny_disk / "outputs")
    generation = GenerationService(services.settings, services.manager, services.queue, store)
    filler = tiny_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk, then free a little: the folders fit, an image does not
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, filler.stat().st_size - 8192)
    result = generation.txt2img(Txt2ImgRequest(prompt="a cat", n_iter=3, seed=1, **SMALL), timeout=120)
    assert len(result.images) == 3 and len(result.paths) < 3
    assert result.warnings == ["Image not saved to the outputs folder (No space left on device); it is only "
                               "returned here."]
    written = list((tiny_disk / "outputs").rglob("*"))
    assert not [p for p in written if p.name.startswith(".")]  # no temp file (".<name>.<random>.tmp") left
    for path in result.paths:
        Image.open(path).load()  # whatever was saved is a whole image


@pytest.mark.parametrize("overrides, field", [
    ({"samples_format": "jpg"}, "override_settings.samples_format"),
    ({"provenance_watermark": False}, "override_settings.provenance_watermark"),
    ({"no_such_option": 1}, "override_settings.no_such_option"),
])
def test_override_settings_are_never_silently_ignored(bare, overrides, field):
    client, _ = bare
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "override_settings": overrides})
    assert response.status_code == 422 and error(response).startswith(f"{field}: ")


def test_override_settings_at_the_current_value_are_accepted(loaded):
    client, _ = loaded
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                       "override_settings": {"samples_format": "png",
                                                                             "provenance_watermark": True}})
    assert response.status_code == 200, response.text
