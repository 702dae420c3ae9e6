"""Live previews in a real browser: TAESD chosen in the Settings tab, its tiny decoder in models/VAE-approx, and
the txt2img page showing the preview while the job runs (the page is watching, so the job draws it).

One app for the module; its models/VAE-approx/taesd holds a small random-weight AutoencoderTiny."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Iterator

import pytest
import torch

from tests.browser_support import (GENERATE_TIMEOUT, RunningApp, _report_failures, browser,  # noqa: F401 (fixtures)
                                   chromium_binary, expect, launch_app, page, screenshot, set_seed, set_slider)
from tests.conftest import install

pytestmark = pytest.mark.browser
STEP_DONE = re.compile(r"Step [1-9]\d*/150")


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, model_files, chromium_binary) -> Iterator[RunningApp]:
    from diffusers import AutoencoderTiny

    root = tmp_path_factory.mktemp("browser-previews")
    data_dir = root / "data"
    install(model_files["single"], data_dir)
    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(16, 16), decoder_block_out_channels=(16, 16),
                    num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)).save_pretrained(
        data_dir / "models" / "VAE-approx" / "taesd", safe_serialization=True)
    with launch_app(data_dir, root / "app.log") as app:
        yield app


def _get(app: RunningApp, path: str):
    with urllib.request.urlopen(app.url + path, timeout=30) as response:
        return json.loads(response.read())


def _post(app: RunningApp, path: str, body: dict) -> dict:
    request = urllib.request.Request(app.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_the_txt2img_page_shows_a_taesd_preview_while_the_job_runs(page, app_server: RunningApp):
    page.get_by_role("tab", name="Settings", exact=True).click()
    every = page.locator("#setting_show_progress_every_n_steps input[type=number]")
    every.fill("1")
    every.blur()
    setting = page.locator("#setting_show_progress_type")
    expect(setting).to_contain_text("VAE-approx")  # the help says where TAESD's files go
    box = setting.locator("input")
    box.click()
    page.get_by_role("option", name="TAESD", exact=True).click()
    expect(box).to_have_value("TAESD")
    page.locator("#settings_apply").click()
    expect(page.locator("#settings_result")).to_contain_text("Saved 2 setting(s)")
    setting.scroll_into_view_if_needed()
    screenshot(page, "previews-settings.png")
    options = _get(app_server, "/sdapi/v1/options")
    assert (options["show_progress_type"], options["show_progress_every_n_steps"]) == ("TAESD", 1)

    page.get_by_role("tab", name="txt2img", exact=True).click()
    set_slider(page, "Width", 64)
    set_slider(page, "Height", 64)
    set_slider(page, "Sampling steps", 150)
    set_slider(page, "Batch count", 3)
    page.locator("#txt2img_prompt textarea").fill("a lighthouse at dusk")
    set_seed(page, 5)
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_progress")).to_contain_text(STEP_DONE, timeout=GENERATE_TIMEOUT)
    preview = page.locator("#txt2img_preview img")
    expect(preview).to_be_visible(timeout=GENERATE_TIMEOUT)
    natural = preview.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    running = [job for job in _get(app_server, "/studio/v1/jobs?kind=txt2img") if job["status"] == "running"]
    screenshot(page, "previews-taesd-running.png")
    page.locator("#txt2img_interrupt").click()
    expect(page.locator("#txt2img_progress")).to_contain_text("(interrupted)", timeout=GENERATE_TIMEOUT)
    assert natural == [64, 64]  # the output's size
    assert len(running) == 1 and running[0]["preview_renders"] >= 1
    assert "TAESD live preview unavailable" not in app_server.log()  # the tiny decoder was found and used
