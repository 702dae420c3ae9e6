"""The Train tab's other methods in a real browser: a tiny CycleGAN run from its sub-tab ends with a style model the
Style transfer mode lists, and a tiny textual-inversion run ends with an embedding file. One app for the module."""

from __future__ import annotations

import json
import urllib.request
from typing import Iterator

import pytest
from PIL import Image

from tests.browser_support import (GENERATE_TIMEOUT, RunningApp, _report_failures, browser,  # noqa: F401 (fixtures)
                                   chromium_binary, expect, launch_app, page, screenshot)
from tests.conftest import install

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, model_files, chromium_binary) -> Iterator[RunningApp]:
    root = tmp_path_factory.mktemp("browser-train-methods")
    data_dir = root / "data"
    install(model_files["single"], data_dir)
    for folder, colours in (("a", [(200, 30, 30), (30, 200, 30)]), ("b", [(55, 225, 225), (225, 55, 225)])):
        (data_dir / "train" / folder).mkdir(parents=True)
        for index, colour in enumerate(colours):
            Image.new("RGB", (40, 40), colour).save(data_dir / "train" / folder / f"{index}.png")
    with launch_app(data_dir, root / "app.log") as app:
        yield app


def _fill(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(value)
    box.blur()


def _open(page, sub_tab: str) -> None:
    tab = page.get_by_role("tab", name="Train")
    expect(tab).to_be_visible(timeout=GENERATE_TIMEOUT)
    tab.click(timeout=GENERATE_TIMEOUT)
    page.get_by_role("tab", name=sub_tab).click(timeout=GENERATE_TIMEOUT)


def _style_models(app: RunningApp) -> list[str]:
    with urllib.request.urlopen(app.url + "/studio/v1/style-models", timeout=30) as response:
        return [m["name"] for m in json.loads(response.read())]


def test_a_tiny_cyclegan_run_from_its_sub_tab_becomes_a_style_model(page, app_server: RunningApp):
    _open(page, "CycleGAN / pix2pix")
    _fill(page, "train_gan_name", "tinycycle")
    _fill(page, "train_gan_dataset_a", "train/a")
    _fill(page, "train_gan_dataset_b", "train/b")
    _fill(page, "train_gan_load_size", "36")
    _fill(page, "train_gan_crop_size", "32")
    _fill(page, "train_gan_steps", "3")
    page.get_by_text("Networks and losses").click()
    _fill(page, "train_gan_sample_every", "0")
    _fill(page, "train_gan_ngf", "4")
    _fill(page, "train_gan_ndf", "4")
    page.locator("#train_gan_start").click()
    status = page.locator("#train_status_line")
    expect(status).to_have_attribute("data-state", "done", timeout=GENERATE_TIMEOUT * 3)
    expect(status).to_contain_text("step 3/3")
    expect(page.locator("#train_output")).to_contain_text("models/CycleGAN/tinycycle/latest_net_G_A.safetensors")
    screenshot(page, "train_cyclegan_done.png")
    folder = app_server.data_dir / "models" / "CycleGAN" / "tinycycle"
    assert sorted(p.name for p in folder.iterdir()) == ["latest_net_G_A.safetensors", "latest_net_G_B.safetensors"]
    assert {"CycleGAN/tinycycle_AtoB", "CycleGAN/tinycycle_BtoA"} <= set(_style_models(app_server))


def test_a_tiny_textual_inversion_run_writes_an_embedding(page, app_server: RunningApp):
    _open(page, "Textual inversion")
    _fill(page, "train_ti_name", "swatchword")
    _fill(page, "train_ti_init_text", "red")
    _fill(page, "train_ti_dataset", "train/a")
    _fill(page, "train_ti_width", "32")
    _fill(page, "train_ti_height", "32")
    _fill(page, "train_ti_steps", "3")
    _fill(page, "train_ti_sample_every", "0")
    _fill(page, "train_ti_save_every", "0")
    page.locator("#train_ti_start").click()
    status = page.locator("#train_status_line")
    expect(status).to_have_attribute("data-state", "done", timeout=GENERATE_TIMEOUT * 3)
    expect(page.locator("#train_output")).to_contain_text("embeddings/swatchword.safetensors")
    screenshot(page, "train_ti_done.png")
    assert (app_server.data_dir / "embeddings" / "swatchword.safetensors").is_file()
