"""The Extras tab in a real browser: upscale an upload with a tiny ESRGAN model in the data dir."""

from __future__ import annotations

import datetime as dt
import re
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from tests.browser_support import (GENERATE_TIMEOUT, RunningApp, _report_failures, browser,  # noqa: F401 (fixtures)
                                   chromium_binary, expect, launch_app, page, screenshot)
from tests.conftest import install
from tests.upscaler_models import write_upscalers

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, model_files, chromium_binary) -> Iterator[RunningApp]:
    """The real app over a data dir holding the tiny checkpoint and tiny ESRGAN / Real-ESRGAN / SwinIR files."""
    root = tmp_path_factory.mktemp("browser-extras")
    data_dir = root / "data"
    install(model_files["single"], data_dir)
    write_upscalers(data_dir / "models")
    with launch_app(data_dir, root / "app.log") as app:
        yield app


def test_extras_upscales_an_upload_2x_with_an_esrgan_model(page, app_server: RunningApp, tmp_path):
    source = tmp_path / "photo.png"
    Image.fromarray((np.random.RandomState(3).rand(24, 32, 3) * 255).astype(np.uint8)).save(source)

    page.get_by_role("tab", name="Extras").click()
    page.locator("#extras_image input[type=file]").set_input_files(str(source))
    page.locator("#extras_upscaler_1 input").click()
    page.get_by_role("option", name="ESRGAN_2x_tiny").click()
    expect(page.locator("#extras_upscaler_1 input")).to_have_value("ESRGAN_2x_tiny")
    page.locator("#extras_generate").click()

    info = page.locator("#extras_info")
    expect(info).to_contain_text("Postprocess upscale by: 2, Postprocess upscaler: ESRGAN_2x_tiny",
                                 timeout=GENERATE_TIMEOUT)
    expect(info).to_contain_text(re.compile(r"Saved 1 image to .*extras-images"))
    expect(page.locator("#extras_gallery img").first).to_be_visible()
    folder = app_server.data_dir / "outputs" / "extras-images" / dt.date.today().isoformat()
    saved = sorted(folder.glob("*.png"))
    assert len(saved) == 1, saved
    with Image.open(saved[0]) as img:
        assert img.size == (64, 48)
        assert img.info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: ESRGAN_2x_tiny"
    screenshot(page, "extras_esrgan_2x.png")


def test_extras_without_an_image_gives_a_red_message(page, app_server: RunningApp):
    page.get_by_role("tab", name="Extras").click()
    page.locator("#extras_generate").click()
    expect(page.locator("#extras_info .studio-error")).to_contain_text("image: upload an image first")


def test_extras_batch_of_uploads_with_a_model_added_after_start(page, app_server: RunningApp, tmp_path):
    from tests.upscaler_models import esrgan_old_state, save_safetensors

    save_safetensors(app_server.data_dir / "models" / "ESRGAN" / "added_later.safetensors", esrgan_old_state(seed=9))
    paths = []
    for index, size in enumerate(((16, 16), (24, 8))):
        path = tmp_path / f"batch{index}.png"
        Image.fromarray((np.random.RandomState(index).rand(size[1], size[0], 3) * 255).astype(np.uint8)).save(path)
        paths.append(str(path))

    page.get_by_role("tab", name="Extras").click()
    page.locator("#extras_refresh_upscalers").click()
    page.locator("#extras_upscaler_1 input").click()
    page.get_by_role("option", name="added_later").click()
    expect(page.locator("#extras_upscaler_1 input")).to_have_value("added_later")
    page.get_by_role("tab", name="Batch Process").click()
    page.locator("#extras_batch_files input[type=file]").set_input_files(paths)
    expect(page.locator("#extras_batch_files")).to_contain_text(re.compile(r"batch1\s*\.png"))  # both uploaded
    page.locator("#extras_generate").click()

    info = page.locator("#extras_info")
    expect(info).to_contain_text("Saved 2 images to", timeout=GENERATE_TIMEOUT)
    expect(info).to_contain_text("Postprocess upscaler: added_later")
    expect(page.locator("#extras_gallery img")).to_have_count(2)
    folder = app_server.data_dir / "outputs" / "extras-images" / dt.date.today().isoformat()
    sizes = {p.name.split("-", 1)[1]: Image.open(p).size for p in folder.glob("*-batch*.png")}
    assert sizes == {"batch0.png": (32, 32), "batch1.png": (48, 16)}
    screenshot(page, "extras_batch.png")
