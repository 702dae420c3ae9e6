"""Watching and stopping jobs in a real browser: the live preview at the output's size, "Interrupting…" at once,
Skip keeping the image it stopped, and the warning before a job estimated to take very long.

One app for the module, with a per-job pixel budget large enough for the 2048x2048 x 8 x 100 job the warning is
about (it is never run: the test only checks that it is not started)."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Iterator

import pytest

from tests.browser_support import (GENERATE_TIMEOUT, RunningApp, _report_failures, browser,  # noqa: F401 (fixtures)
                                   chromium_binary,
                                   expect, launch_app, page, screenshot, set_seed, set_slider)
from tests.conftest import install

pytestmark = pytest.mark.browser
STEP_DONE = re.compile(r"Step [1-9]\d*/150")  # a step has finished: the batch has something to return


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, model_files, chromium_binary) -> Iterator[RunningApp]:
    root = tmp_path_factory.mktemp("browser-jobs")
    data_dir = root / "data"
    install(model_files["single"], data_dir)
    with launch_app(data_dir, root / "app.log", "--max-job-pixels", str(2048 * 2048 * 8 * 100)) as app:
        yield app


def _post(app: RunningApp, path: str, body: dict) -> dict:
    request = urllib.request.Request(app.url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _get(app: RunningApp, path: str):
    with urllib.request.urlopen(app.url + path, timeout=30) as response:
        return json.loads(response.read())


def _txt2img_jobs(app: RunningApp) -> list:
    return _get(app, "/studio/v1/jobs?kind=txt2img")


def _long_running(page, prompt: str, size: int = 128, count: int = 1) -> None:
    set_slider(page, "Width", size)
    set_slider(page, "Height", size)
    set_slider(page, "Sampling steps", 150)
    set_slider(page, "Batch count", count)
    page.locator("#txt2img_prompt textarea").fill(prompt)
    set_seed(page, 11)


def test_the_live_preview_shows_at_the_output_size(page, app_server: RunningApp):
    _post(app_server, "/sdapi/v1/options", {"show_progress_every_n_steps": 2})  # this CPU is slow at 10 steps
    try:
        _long_running(page, "a preview", size=96, count=3)
        page.locator("#txt2img_generate").click()
        preview = page.locator("#txt2img_preview img")
        expect(preview).to_be_visible(timeout=GENERATE_TIMEOUT)
        natural = preview.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        box = preview.bounding_box()
        screenshot(page, "jobs-live-preview.png")
        page.locator("#txt2img_interrupt").click()
        expect(page.locator("#txt2img_progress")).to_contain_text("(interrupted)", timeout=GENERATE_TIMEOUT)
    finally:
        _post(app_server, "/sdapi/v1/options", {"show_progress_every_n_steps": 10})
    assert natural == [96, 96]  # the latent is 48x48 with the tiny model's VAE; the output is 96x96
    assert box and box["height"] >= 96 and box["width"] >= 96, box


def test_interrupt_says_interrupting_at_once_and_keeps_the_finished_image(page, app_server: RunningApp):
    _long_running(page, "interrupt me", size=64, count=3)
    page.locator("#txt2img_generate").click()
    progress = page.locator("#txt2img_progress")
    expect(progress).to_contain_text(STEP_DONE, timeout=GENERATE_TIMEOUT)
    page.locator("#txt2img_interrupt").click()
    expect(progress).to_contain_text("Interrupting…", timeout=5_000)
    screenshot(page, "jobs-interrupting.png")
    expect(progress).to_contain_text("(interrupted)", timeout=GENERATE_TIMEOUT)
    expect(page.locator("#txt2img_gallery img").first).to_be_visible()
    assert _get(app_server, "/sdapi/v1/progress")["state"]["job_count"] == 0


def test_skip_with_batch_count_1_returns_the_image_it_stopped(page, app_server: RunningApp):
    _long_running(page, "skip me", size=64, count=1)
    page.locator("#txt2img_generate").click()
    progress = page.locator("#txt2img_progress")
    expect(progress).to_contain_text(STEP_DONE, timeout=GENERATE_TIMEOUT)
    page.locator("#txt2img_skip").click()
    expect(progress).to_contain_text("1 image(s) in", timeout=GENERATE_TIMEOUT)
    expect(page.locator("#txt2img_gallery img").first).to_be_visible()
    expect(page.locator("#txt2img_info textarea")).to_have_value(re.compile(r"Seed: 11\b"))
    screenshot(page, "jobs-skip.png")


def test_a_very_long_job_warns_with_its_estimate_and_starts_nothing(page, app_server: RunningApp):
    before = len(_txt2img_jobs(app_server))
    set_slider(page, "Width", 2048)
    set_slider(page, "Height", 2048)
    set_slider(page, "Sampling steps", 150)
    set_slider(page, "Batch count", 100)
    set_slider(page, "Batch size", 8)
    page.locator("#txt2img_prompt textarea").fill("an enormous job")
    page.locator("#txt2img_generate").click()
    progress = page.locator("#txt2img_progress")
    expect(progress).to_contain_text("estimated to take about", timeout=GENERATE_TIMEOUT)
    expect(progress).to_contain_text("on cpu (2048x2048, 8 x 100 images, 150 steps)")
    expect(progress).to_contain_text("Press Generate again to start it.")
    screenshot(page, "jobs-long-warning.png")
    assert len(_txt2img_jobs(app_server)) == before  # nothing was queued
    assert _get(app_server, "/sdapi/v1/progress")["state"]["job_count"] == 0


def test_a_second_press_starts_the_long_job(page, app_server: RunningApp):
    # A small job made "long" by the threshold, so that starting it costs nothing on this machine.
    _post(app_server, "/sdapi/v1/options", {"confirm_long_jobs_seconds": 1})
    try:
        _long_running(page, "confirmed", size=64, count=100)
        before = len(_txt2img_jobs(app_server))
        page.locator("#txt2img_generate").click()
        progress = page.locator("#txt2img_progress")
        expect(progress).to_contain_text("Press Generate again", timeout=GENERATE_TIMEOUT)
        assert len(_txt2img_jobs(app_server)) == before
        page.locator("#txt2img_generate").click()
        expect(progress).to_contain_text("Step", timeout=GENERATE_TIMEOUT)
        assert len(_txt2img_jobs(app_server)) == before + 1
        page.locator("#txt2img_interrupt").click()
        expect(progress).to_contain_text("(interrupted)", timeout=GENERATE_TIMEOUT)
        # Changing the job makes it a new one: asked again.
        set_slider(page, "Sampling steps", 149)
        page.locator("#txt2img_generate").click()
        expect(progress).to_contain_text("Press Generate again", timeout=GENERATE_TIMEOUT)
        assert len(_txt2img_jobs(app_server)) == before + 1
    finally:
        _post(app_server, "/sdapi/v1/options", {"confirm_long_jobs_seconds": 600})
