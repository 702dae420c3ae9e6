"""End to end in headless Chromium: generate, open History, reopen the job, and find txt2img holding its settings.

Reuses the app, browser and helpers of tests/test_browser.py (the app is started again for this module).
"""

from __future__ import annotations

import re

import pytest

from tests.test_browser import (GENERATE_TIMEOUT, app_server, browser, chromium_binary, expect, page,  # noqa: F401
                                screenshot, seed_box, set_seed, set_slider)

pytestmark = pytest.mark.browser


def test_history_lists_a_job_and_reopen_restores_its_settings(page):  # noqa: F811
    prompt = "a history fox in the snow"
    for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 5), ("Clip skip", 2)):
        set_slider(page, label, value)
    page.locator("#txt2img_prompt textarea").fill(prompt)
    page.locator("#txt2img_negative_prompt textarea").fill("blurry")
    set_seed(page, 4321)
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_info textarea")).to_have_value(re.compile(r"Seed: 4321\b"),
                                                                 timeout=GENERATE_TIMEOUT)

    # Change the form so that Reopen has something to restore.
    page.locator("#txt2img_prompt textarea").fill("something else")
    page.locator("#txt2img_negative_prompt textarea").fill("")
    set_seed(page, 1)
    set_slider(page, "Sampling steps", 3)
    set_slider(page, "Clip skip", 1)

    page.get_by_role("tab", name="History").click()
    table = page.locator("#history_table")
    expect(table).to_contain_text(prompt)
    expect(table).to_contain_text("done")
    expect(page.locator("#history_gallery img").first).to_be_visible()
    table.get_by_text(prompt).filter(visible=True).first.click()  # Gradio keeps a hidden copy too
    details = page.locator("#history_details")
    expect(details).to_contain_text("Seed: 4321")
    expect(details).to_contain_text("Clip skip: 2")
    screenshot(page, "history.png")

    page.locator("#history_reopen").click()

    expect(page.get_by_role("tab", name="txt2img")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#txt2img_prompt textarea")).to_have_value(prompt)
    expect(page.locator("#txt2img_negative_prompt textarea")).to_have_value("blurry")
    expect(seed_box(page)).to_have_value("4321")
    scope = page.locator("#tab_txt2img")
    for label, value in (("Sampling steps", "5"), ("Width", "64"), ("Height", "64"), ("Clip skip", "2")):
        expect(scope.get_by_label(f"number input for {label}", exact=True)).to_have_value(value)
    screenshot(page, "history-reopened.png")
