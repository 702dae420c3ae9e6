"""The Settings tab in a real browser: change the file-name pattern and format, apply, generate, find the file named
as asked; restart on the same data dir and see the settings kept; a bad folder is refused in red, naming its key."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from tests.browser_support import (  # noqa: F401  (_report_failures: screenshots + app log on failure)
    RunningApp, _report_failures, app_server, browser, chromium_binary, expect, launch_app, page, screenshot,
    set_seed, set_slider)
from webui.infotext import read_png_infotext

pytestmark = pytest.mark.browser
GENERATE_TIMEOUT = 120_000


def open_settings(page) -> None:
    """Click OUR tab (a tab role named Settings), never the footer's "Settings" link (Gradio's theme panel)."""
    page.get_by_role("tab", name="Settings", exact=True).click()
    expect(page.get_by_text("Stable Studio settings", exact=True)).to_be_visible()


def choose(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.click()
    page.get_by_role("option", name=value, exact=True).click()
    expect(box).to_have_value(value)


def test_file_name_pattern_and_format_apply_to_the_next_image_and_survive_a_restart(page, app_server: RunningApp,
                                                                                      browser, tmp_path):
    open_settings(page)
    choose(page, "setting_samples_format", "jpg")
    pattern = page.locator("#setting_samples_filename_pattern textarea")
    pattern.fill("[seed]-[prompt_words]")
    pattern.blur()
    page.locator("#settings_apply").click()
    expect(page.locator("#settings_result")).to_contain_text("Saved 2 setting(s)")
    screenshot(page, "settings-applied.png")

    page.get_by_role("tab", name="txt2img", exact=True).click()
    set_slider(page, "Width", 64)
    set_slider(page, "Height", 64)
    set_slider(page, "Sampling steps", 2)
    page.locator("#txt2img_prompt textarea").fill("a tiny red boat")
    set_seed(page, 4321)
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=GENERATE_TIMEOUT)
    expect(page.locator("#txt2img_info textarea")).to_have_value(re.compile(r"Seed: 4321\b"),
                                                                 timeout=GENERATE_TIMEOUT)
    screenshot(page, "settings-generated.png")

    folder = app_server.data_dir / "outputs" / "txt2img-images" / dt.date.today().isoformat()
    saved = sorted(folder.glob("*-4321-a tiny red boat.jpg"))
    assert saved, f"no file named as asked in {folder}: {sorted(p.name for p in folder.glob('*'))}"
    assert re.fullmatch(r"\d{5}-4321-a tiny red boat\.jpg", saved[-1].name)
    assert saved[-1].read_bytes()[:3] == b"\xff\xd8\xff"  # a JPEG
    assert "Seed: 4321" in read_png_infotext(saved[-1])

    # Restart: a second app on the same data dir starts with the settings kept.
    with launch_app(app_server.data_dir, tmp_path / "again.log") as again:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            second = context.new_page()
            second.goto(again.url + "/")
            expect(second.locator("#txt2img_generate")).to_be_visible(timeout=30_000)
            open_settings(second)
            expect(second.locator("#setting_samples_format input")).to_have_value("jpg")
            expect(second.locator("#setting_samples_filename_pattern textarea")).to_have_value(
                "[seed]-[prompt_words]")
            screenshot(second, "settings-after-restart.png")
        finally:
            context.close()


def test_a_folder_outside_outputs_is_refused_in_red_and_nothing_is_saved(page, app_server: RunningApp):
    open_settings(page)
    folder = page.locator("#setting_outdir_txt2img_samples textarea")
    folder.fill("/etc")
    folder.blur()
    quality = page.locator("#setting_jpeg_quality input[type=number]")
    quality.fill("55")
    quality.press("Enter")
    page.locator("#settings_apply").click()
    result = page.locator("#settings_result")
    expect(result.locator(".studio-error")).to_contain_text("outdir_txt2img_samples: must be a folder inside outputs/")
    expect(result).to_contain_text("Nothing was saved")
    screenshot(page, "settings-refused.png")
    config = (app_server.data_dir / "config.json").read_text()
    assert "/etc" not in config and '"jpeg_quality": 55' not in config


def test_form_defaults_apply_at_the_next_page_load_and_a_batch_shows_its_grid_first(page, app_server: RunningApp):
    open_settings(page)
    steps = page.locator("#setting_studio_default_steps input[type=number]")
    steps.fill("3")
    steps.press("Enter")
    choose(page, "setting_studio_default_sampler", "Euler a")
    page.locator("#settings_apply").click()
    expect(page.locator("#settings_result")).to_contain_text("applies at the next page load")

    page.reload()
    form = page.locator("#tab_txt2img")
    # Page-load events run after the page shows; on a busy machine that takes a while.
    expect(form.get_by_label("number input for Sampling steps", exact=True)).to_have_value("3", timeout=30_000)
    expect(page.locator("#txt2img_sampler input")).to_have_value("Euler a", timeout=30_000)

    set_slider(page, "Width", 64)
    set_slider(page, "Height", 64)
    set_slider(page, "Batch size", 2)
    page.locator("#txt2img_prompt textarea").fill("two boats")
    set_seed(page, 77)
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_progress")).to_contain_text("image(s) in", timeout=GENERATE_TIMEOUT)
    thumbnails = page.locator("#txt2img_gallery img")
    expect(thumbnails).to_have_count(3)  # the grid, then the two images
    screenshot(page, "settings-defaults-grid.png")
    grids = list((app_server.data_dir / "outputs" / "txt2img-grids").rglob("grid-*.png"))  # grid_format: png
    assert grids, "the grid was not saved (grid_save is on by default)"
