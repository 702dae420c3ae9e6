"""The Train tab in a real browser: a tiny LoRA run started from the form, the loss plot filling while it runs, the
run finishing with its file, and a bad folder refused in red before anything is queued."""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Iterator

import pytest

from tests.browser_support import (GENERATE_TIMEOUT, RunningApp, _report_failures, browser,  # noqa: F401 (fixtures)
                                   chromium_binary, expect, launch_app, page, screenshot, set_seed, set_slider)
from tests.conftest import install
from tests.training_helpers import colour_set

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, model_files, chromium_binary) -> Iterator[RunningApp]:
    root = tmp_path_factory.mktemp("browser-train")
    data_dir = root / "data"
    install(model_files["single"], data_dir)
    colour_set(data_dir / "colours")  # training folders live in the data dir (or --batch-dirs)
    with launch_app(data_dir, root / "app.log") as app:
        yield app


def _fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(value)
    box.blur()


def _form(page, app: RunningApp, output_name: str, steps: int, data_dir: str | None = None) -> None:
    tab = page.get_by_role("tab", name="Train")
    expect(tab).to_be_visible(timeout=GENERATE_TIMEOUT)  # Gradio lays the tab bar out after the page shows
    tab.click(timeout=GENERATE_TIMEOUT)
    _fill(page, "train_lora_data_dir", data_dir or str(app.data_dir / "colours"))
    _fill(page, "train_lora_output_name", output_name)
    _fill(page, "train_lora_steps", str(steps))
    _fill(page, "train_lora_resolution", "64")
    _fill(page, "train_lora_lr", "0.01")
    _fill(page, "train_lora_rank", "4")


def _runs(app: RunningApp) -> list:
    with urllib.request.urlopen(app.url + "/studio/v1/training", timeout=30) as response:
        return json.loads(response.read())


def test_a_tiny_lora_run_from_the_tab_plots_its_loss_and_finishes(page, app_server: RunningApp):
    _form(page, app_server, "browser-lora", 8)
    page.get_by_text("More settings").click()
    _fill(page, "train_lora_sample_prompts", "colour1 square")
    _fill(page, "train_lora_sample_every", "4")
    _fill(page, "train_lora_sample_steps", "2")
    page.locator("#train_lora_start").click()
    status = page.locator("#train_status_line")
    expect(status).to_contain_text("step", timeout=GENERATE_TIMEOUT)
    expect(status).to_have_attribute("data-state", "running", timeout=GENERATE_TIMEOUT)
    expect(status).to_contain_text("loss", timeout=GENERATE_TIMEOUT)
    # The plot is redrawn as steps arrive: its x axis (vega's aria label) grows past the first step.
    x_axis = page.locator("#train_loss_plot [aria-roledescription=axis]").first
    expect(x_axis).to_have_attribute("aria-label", re.compile(r"X-axis titled 'step' .* from 1 to [2-8]$"),
                                     timeout=GENERATE_TIMEOUT)
    screenshot(page, "train_running.png")
    expect(status).to_have_attribute("data-state", "done", timeout=GENERATE_TIMEOUT * 3)
    expect(status).to_contain_text("step 8/8")
    expect(status).to_contain_text("Wrote browser-lora.safetensors")
    expect(page.locator("#train_output")).to_contain_text("models/Lora/browser-lora.safetensors")
    expect(page.locator("#train_samples img").first).to_be_visible()
    screenshot(page, "train_done.png")
    assert (app_server.data_dir / "models" / "Lora" / "browser-lora.safetensors").is_file()
    run = next(r for r in _runs(app_server) if r["output_name"] == "browser-lora")
    assert run["state"] == "done" and run["step"] == 8


def test_the_trained_lora_is_a_card_that_generates_with_it(page, app_server: RunningApp):
    """The loop's other half: the LoRA trained above appears as a card (no restart, no Refresh), a click puts its
    tag in the prompt, and the image made with it records its hash."""
    lora = app_server.data_dir / "models" / "Lora" / "browser-lora.safetensors"
    if not lora.is_file():
        pytest.skip("needs the LoRA the run above trained")
    prompt = page.locator("#txt2img_prompt textarea")
    expect(prompt).to_be_editable(timeout=GENERATE_TIMEOUT)
    prompt.fill("colour1 square")
    page.locator("#txt2img_extra_networks_toggle").click(timeout=GENERATE_TIMEOUT)
    panel = page.locator("#txt2img_extra_networks")
    panel.get_by_role("tab", name="LoRA").click(timeout=GENERATE_TIMEOUT)
    card = panel.locator(".studio-en-card[data-name='browser-lora']")
    expect(card).to_be_visible(timeout=GENERATE_TIMEOUT)
    card.click(position={"x": 10, "y": 10})
    expect(prompt).to_have_value("colour1 square <lora:browser-lora:1>")
    for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 2)):
        set_slider(page, label, value)
    set_seed(page, 3)
    page.locator("#txt2img_generate").click()
    info = page.locator("#txt2img_info textarea")
    expect(info).to_have_value(re.compile(r'Lora hashes: "browser-lora: [0-9a-f]{12}"'), timeout=GENERATE_TIMEOUT)
    expect(page.get_by_text("LoRA not found")).to_have_count(0)
    screenshot(page, "train_lora_card_generated.png")


def test_a_missing_folder_is_refused_in_red_and_nothing_is_queued(page, app_server: RunningApp):
    before = len(_runs(app_server))
    _form(page, app_server, "never", 5, data_dir="/no/such/folder")
    page.locator("#train_lora_start").click()
    expect(page.locator("#train_status .studio-error")).to_contain_text("data_dir: not an existing folder this server "
                                                                        "may use", timeout=GENERATE_TIMEOUT)
    screenshot(page, "train_refused.png")
    assert len(_runs(app_server)) == before


def test_pause_resume_and_cancel_from_the_monitor(page, app_server: RunningApp):
    _form(page, app_server, "browser-long", 500)
    page.locator("#train_lora_start").click()
    status = page.locator("#train_status_line")
    expect(status).to_have_attribute("data-state", "running", timeout=GENERATE_TIMEOUT)
    expect(page.locator("#train_runs input")).to_have_value(re.compile(r"browser-long · running"))
    page.locator("#train_pause").click()
    expect(status).to_have_attribute("data-state", "paused", timeout=GENERATE_TIMEOUT)
    screenshot(page, "train_paused.png")
    # A reopened page follows the run still going (paused here), and its buttons act on it.
    page.reload()
    tab = page.get_by_role("tab", name="Train")
    expect(tab).to_be_visible(timeout=GENERATE_TIMEOUT)
    tab.click(timeout=GENERATE_TIMEOUT)
    expect(status).to_have_attribute("data-state", "paused", timeout=GENERATE_TIMEOUT)
    expect(page.locator("#train_runs input")).to_have_value(re.compile(r"browser-long · paused"))
    page.locator("#train_resume").click()
    expect(status).to_have_attribute("data-state", "running", timeout=GENERATE_TIMEOUT)
    page.locator("#train_cancel").click()
    expect(status).to_have_attribute("data-state", "cancelled", timeout=GENERATE_TIMEOUT)
    expect(status).to_contain_text(re.compile(r"Training cancelled at step \d+ of 500; resume state kept"))
    screenshot(page, "train_cancelled.png")
    assert not (app_server.data_dir / "models" / "Lora" / "browser-long.safetensors").exists()
    run = next(r for r in _runs(app_server) if r["output_name"] == "browser-long")
    assert run["state"] == "cancelled" and run["resume_states"]
