"""Part E's built-in scripts in a real browser: Prompts from file or textbox chosen in txt2img's Script dropdown."""

from __future__ import annotations

import datetime as dt
import re

import pytest
from PIL import Image

from tests.browser_support import (GENERATE_TIMEOUT, RunningApp, _report_failures, app_server,  # noqa: F401
                                   browser, chromium_binary, expect, page, screenshot, set_seed, set_slider)

pytestmark = pytest.mark.browser


def test_prompts_from_textbox_runs_one_job_per_line(page, app_server: RunningApp):
    set_slider(page, "Width", 64)
    set_slider(page, "Height", 64)
    set_slider(page, "Sampling steps", 2)
    set_seed(page, 77)
    page.locator("#txt2img_script input").click()
    page.get_by_role("option", name="Prompts from file or textbox").click()
    panel = page.locator("#txt2img_script_prompts_from_file_or_textbox")
    expect(panel).to_be_visible()
    panel.get_by_label("List of prompt inputs").fill('a red lighthouse\n--prompt "a blue boat" --seed 5')
    screenshot(page, "scripts-e-prompts-from-file-form.png")

    page.locator("#txt2img_generate").click()

    expect(page.locator("#txt2img_gallery img")).to_have_count(2, timeout=GENERATE_TIMEOUT)
    info = page.locator("#txt2img_info textarea")
    expect(info).to_have_value(re.compile(r"a red lighthouse[\s\S]*Seed: 77\b"), timeout=GENERATE_TIMEOUT)
    screenshot(page, "scripts-e-prompts-from-file.png")
    folder = app_server.data_dir / "outputs" / "txt2img-images" / dt.date.today().isoformat()
    seeds = sorted(p.name.rsplit("-", 1)[-1] for p in folder.glob("*.png"))
    assert "5.png" in seeds and "77.png" in seeds
    with Image.open(next(folder.glob("*-5.png"))) as image:
        assert "a blue boat" in image.info["parameters"]
