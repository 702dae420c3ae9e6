"""Real-browser test of CPU precision: the app started with --precision bf16 says so under the checkpoint bar and
in its log, and a txt2img job in bf16 gives a real picture in the gallery. One app for the module; 64x64, 2 steps."""

from __future__ import annotations

import re
from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from tests.browser_support import (GENERATE_TIMEOUT, RunningApp, _report_failures, browser,  # noqa: F401 (fixtures)
                                   chromium_binary, expect, launch_app, page, screenshot, set_seed, set_slider)
from tests.conftest import install

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, model_files, chromium_binary) -> Iterator[RunningApp]:
    root = tmp_path_factory.mktemp("browser-precision")
    data_dir = root / "data"
    install(model_files["single"], data_dir)
    with launch_app(data_dir, root / "app.log", "--precision", "bf16") as app:
        yield app


def test_the_page_says_bf16_and_a_bf16_image_reaches_the_gallery(page, app_server: RunningApp):
    line = page.locator("#runtime_info")
    expect(line).to_have_text(re.compile(r"^\s*Running on CPU.* · bf16 \(.+\) · profile cpu · attention sdpa\s*$"))
    assert re.search(r"Running on CPU.* · bf16 \(", app_server.log())  # and the start-up log says the same

    page.locator("#txt2img_prompt textarea").fill("a lighthouse at dusk")
    for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 2)):
        set_slider(page, label, value)
    set_seed(page, 5)
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_info textarea")).to_have_value(re.compile(r"^a lighthouse at dusk\n.*Seed: 5,", re.S),
                                                                 timeout=GENERATE_TIMEOUT)
    gallery_image = page.locator("#txt2img_gallery img").first
    expect(gallery_image).to_be_visible()
    assert gallery_image.evaluate("img => img.naturalWidth") == 64
    expect(line).to_contain_text("bf16")  # still there after the job
    screenshot(page, "precision-bf16-generated.png")

    [saved] = (app_server.data_dir / "outputs" / "txt2img-images").glob("*/*.png")
    pixels = np.asarray(Image.open(saved).convert("RGB")).astype(np.float64)
    assert pixels.shape == (64, 64, 3) and pixels.std() > 20  # a picture, not a black or flat frame
