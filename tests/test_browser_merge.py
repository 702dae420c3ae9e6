"""The checkpoint merger's tab in a real browser: merge the two tiny checkpoints, see where it was saved, and find
the result in the page's checkpoint selector without a restart."""

from __future__ import annotations

import re
from typing import Iterator

import pytest
from safetensors.torch import load_file

from tests.browser_support import (GENERATE_TIMEOUT, RunningApp, _report_failures, browser,  # noqa: F401 (fixtures)
                                   chromium_binary, expect, launch_app, page, screenshot, set_slider)
from tests.conftest import install

pytestmark = pytest.mark.browser

KEY = "model.diffusion_model.input_blocks.0.0.weight"


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, model_files, chromium_binary) -> Iterator[RunningApp]:
    root = tmp_path_factory.mktemp("browser-merge")
    data_dir = root / "data"
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    with launch_app(data_dir, root / "app.log") as app:
        yield app


def _open_tab(page) -> None:
    # The first click after page load waits for the page's own load events, slow on a busy 2-core machine.
    page.get_by_role("tab", name="Train").click(timeout=60_000)
    page.get_by_role("tab", name="Merge checkpoints").click()
    expect(page.locator("#merge_run")).to_be_visible()


def _choose(page, selector: str, name: str) -> None:
    page.locator(f"{selector} input").click()
    page.locator(selector).get_by_role("option", name=re.compile(re.escape(name))).click()
    expect(page.locator(f"{selector} input")).to_have_value(re.compile(re.escape(name)))


def test_merge_two_models_from_the_tab(page, app_server: RunningApp, model_files):
    _open_tab(page)
    _choose(page, "#merge_primary", "tiny-sd15")
    _choose(page, "#merge_secondary", "other-sd15")
    set_slider(page, "Multiplier (M) - set to 0 to get model A", 0.5, scope="#train_merge")
    page.locator("#merge_name textarea").fill("browser-merge")
    page.locator("#merge_run").click()

    result = page.locator("#merge_result")
    expect(result).to_contain_text(re.compile(r"Checkpoint saved: browser-merge\.safetensors \[[0-9a-f]{10}\]"),
                                   timeout=GENERATE_TIMEOUT)
    expect(result).to_contain_text("models/Stable-diffusion/browser-merge.safetensors")
    saved = app_server.data_dir / "models" / "Stable-diffusion" / "browser-merge.safetensors"
    out, a, b = load_file(str(saved)), load_file(str(model_files["single"])), load_file(str(model_files["other"]))
    assert out[KEY].equal((0.5 * a[KEY].float() + 0.5 * b[KEY].float()).half())
    screenshot(page, "merge_saved.png")

    # the page's checkpoint selector lists it now, and so do the merger's own selectors
    page.locator("#checkpoint input").click()
    expect(page.locator("#checkpoint").get_by_role("option", name=re.compile(r"browser-merge\.safetensors"))
           ).to_be_visible()
    screenshot(page, "merge_in_checkpoint_dropdown.png")
    page.keyboard.press("Escape")
    page.locator("#merge_tertiary input").click()
    expect(page.locator("#merge_tertiary").get_by_role("option", name=re.compile(r"browser-merge\.safetensors"))
           ).to_be_visible()
    page.keyboard.press("Escape")


def test_merge_errors_are_red_and_name_the_field(page, app_server: RunningApp):
    _open_tab(page)
    page.locator("#merge_run").click()
    expect(page.locator("#merge_result .studio-error")).to_contain_text("primary_model: choose the primary model (A)")

    _choose(page, "#merge_primary", "tiny-sd15")
    _choose(page, "#merge_secondary", "tiny-sd15")
    page.locator("#merge_run").click()
    expect(page.locator("#merge_result .studio-error")).to_contain_text("secondary_model:")
    expect(page.locator("#merge_result .studio-error")).to_contain_text("also the primary model")
    screenshot(page, "merge_error.png")
