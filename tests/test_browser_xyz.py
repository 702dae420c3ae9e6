"""Real-browser test of the built-in scripts from txt2img: an X/Y/Z plot picked in the Script dropdown, its panel's
generated widgets filled in, the labelled grid shown first with A1111's grid infotext; a bad axis value is a red
error naming the axis, and no image is made. One app for the module (two tiny checkpoints), 64x64, 2 steps."""

from __future__ import annotations

import re
from typing import Iterator

import pytest

from tests.browser_support import (GENERATE_TIMEOUT, RunningApp, _report_failures, browser,  # noqa: F401 (fixtures)
                                   chromium_binary, expect, launch_app, page, screenshot, set_seed, set_slider)
from tests.conftest import install

pytestmark = pytest.mark.browser
# The Scripts area (Script dropdown, generated panels) is part C's webui/ui/model_widgets.py: until that branch is
# merged there is nothing to click. Checked against ext12-c at aae6c58 (both tests pass there).


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, model_files, chromium_binary) -> Iterator[RunningApp]:
    root = tmp_path_factory.mktemp("browser-xyz")
    data_dir = root / "data"
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    with launch_app(data_dir, root / "app.log") as app:
        yield app


def script_field(page, name: str):
    """A field of the chosen script's panel: ``txt2img_script_<slug>_<field>`` (the slug is the runtime's)."""
    return page.locator(f'#tab_txt2img [id^="txt2img_script_"][id$="_{name}"]').first


def choose(page, locator, option: str) -> None:
    box = locator.locator("input")
    box.click()
    # another dropdown's list can still be open: pick from this one's own list
    listbox = box.get_attribute("aria-controls")
    options = page.locator(f"#{listbox}") if listbox else page
    options.get_by_role("option", name=option, exact=True).click()


def start_plot(page, x_type: str, x_values: str, y_type: str, y_values: str) -> None:
    page.locator("#txt2img_prompt textarea").fill("a lighthouse")
    for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 2)):
        set_slider(page, label, value)
    set_seed(page, 3)
    choose(page, page.locator("#txt2img_script"), "X/Y/Z plot")
    choose(page, script_field(page, "x_type"), x_type)
    script_field(page, "x_values").locator("textarea, input").first.fill(x_values)
    choose(page, script_field(page, "y_type"), y_type)
    script_field(page, "y_values").locator("textarea, input").first.fill(y_values)
    page.locator("#txt2img_generate").click()


def test_xyz_plot_from_txt2img_shows_the_labelled_grid_first(page):
    start_plot(page, "Steps", "2, 3", "Checkpoint name", "tiny-sd15, other-sd15")
    info = page.locator("#txt2img_info textarea")
    expect(info).to_have_value(re.compile(r"Script: X/Y/Z plot, X Type: Steps, X Values: \"2, 3\", "
                                          r"Y Type: Checkpoint name"), timeout=GENERATE_TIMEOUT)
    first = page.locator("#txt2img_gallery img").first
    expect(first).to_be_visible()
    # 2 columns of 64 px plus the row labels' column (3/4 of a cell), 2 rows plus the column labels' band
    size = first.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert size[0] == 48 + 2 * 64 and 2 * 64 < size[1] < 3 * 64
    screenshot(page, "xyz_plot_txt2img.png")


def test_a_bad_axis_value_is_a_red_error_naming_the_axis(page):
    start_plot(page, "Sampler", "Euler a, Bogus", "Nothing", "")
    progress = page.locator("#txt2img_progress")
    expect(progress).to_contain_text("X values (Sampler): 'Bogus' is not accepted", timeout=GENERATE_TIMEOUT)
    screenshot(page, "xyz_plot_bad_value.png")
