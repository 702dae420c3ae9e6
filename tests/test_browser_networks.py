"""Real-browser tests of the Extra Networks panel: open it, search, click cards (LoRA tag, embedding name,
checkpoint), drop a new file and Refresh, and generate with an embedding. One app for the module; 64x64, 2 steps."""

from __future__ import annotations

import io
import re
from typing import Iterator

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.browser_support import (GENERATE_TIMEOUT, RunningApp, _report_failures, browser,  # noqa: F401 (fixtures)
                                   chromium_binary, expect, launch_app, page, screenshot, set_seed, set_slider)
from tests.conftest import install
from tests.test_listings import write_safetensors

pytestmark = pytest.mark.browser
SLOW = 60_000  # ms: server round trips on a busy machine (no timing is asserted)

LORA = "tiny_style_lora"
EMBEDDING = "grumpy_cat_embedding"


def _png(color: str) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, model_files, chromium_binary) -> Iterator[RunningApp]:
    root = tmp_path_factory.mktemp("browser-networks")
    data_dir = root / "data"
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    lora_dir = data_dir / "models" / "Lora"
    write_safetensors(lora_dir / f"{LORA}.safetensors", {"lora_unet_x.alpha": [1]},
                      {"ss_sd_model_name": "tiny-sd15", "ss_network_dim": "4",
                       "ss_tag_frequency": '{"1_ink": {"ink wash": 9, "mountains": 2}}'})
    (lora_dir / f"{LORA}.preview.png").write_bytes(_png("orange"))
    write_safetensors(lora_dir / "portrait_helper.safetensors", {"lora_unet_x.alpha": [1]})
    (data_dir / "embeddings").mkdir(parents=True)
    torch.manual_seed(0)
    save_file({"emb_params": torch.randn(2, 32)}, str(data_dir / "embeddings" / f"{EMBEDDING}.safetensors"))
    (data_dir / "embeddings" / f"{EMBEDDING}.txt").write_text("A grumpy cat, two vectors")
    with launch_app(data_dir, root / "app.log") as app:
        yield app


def open_panel(page, tab: str = "txt2img") -> None:
    # A cold app on a busy machine can keep the page's main thread busy for a while: patience, not failure.
    expect(page.locator(f"#{tab}_prompt textarea")).to_be_editable(timeout=SLOW)
    page.locator(f"#{tab}_extra_networks_toggle").click(timeout=SLOW)
    expect(page.locator(f"#{tab}_extra_networks")).to_be_visible(timeout=SLOW)


def show(page, kind_label: str, tab: str = "txt2img"):
    page.locator(f"#{tab}_extra_networks").get_by_role("tab", name=kind_label).click()


def card(page, name: str, tab: str = "txt2img"):
    return page.locator(f"#{tab}_extra_networks .studio-en-card[data-name='{name}']")


def test_lora_cards_search_and_click_toggles_the_tag(page, app_server: RunningApp):
    prompt = page.locator("#txt2img_prompt textarea")
    open_panel(page)
    prompt.fill("a lighthouse")
    show(page, "LoRA")
    lora = card(page, LORA)
    expect(lora).to_be_visible(timeout=SLOW)
    expect(card(page, "portrait_helper")).to_be_visible(timeout=SLOW)
    expect(lora.locator("img.studio-en-thumb")).to_have_js_property("naturalWidth", 64)  # the preview loaded
    lora.locator("summary").click()  # the details open, and do not insert anything
    expect(lora.locator(".studio-en-details")).to_contain_text("ink wash")
    expect(prompt).to_have_value("a lighthouse")
    screenshot(page, "networks-lora-cards.png")

    page.locator("#txt2img_extra_networks_search textarea, #txt2img_extra_networks_search input").fill("ink wash")
    expect(card(page, "portrait_helper")).to_have_count(0, timeout=SLOW)
    expect(card(page, LORA)).to_be_visible(timeout=SLOW)

    card(page, LORA).locator(".studio-en-name").click()
    expect(prompt).to_have_value(f"a lighthouse <lora:{LORA}:1>")
    prompt.fill(f"a lighthouse <lora:{LORA}:0.6>, at night")  # the user changed the weight since
    card(page, LORA).locator(".studio-en-name").click()  # a second click removes it, whatever the weight
    expect(prompt).to_have_value("a lighthouse, at night")
    screenshot(page, "networks-lora-searched.png")


def test_embedding_card_inserts_its_name_and_the_job_uses_it(page, app_server: RunningApp):
    prompt = page.locator("#txt2img_prompt textarea")
    open_panel(page)
    prompt.fill("")
    show(page, "Textual Inversion")
    emb = card(page, EMBEDDING)
    expect(emb).to_contain_text("A grumpy cat, two vectors", timeout=SLOW)
    emb.click()
    expect(prompt).to_have_value(EMBEDDING)
    for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 2)):
        set_slider(page, label, value)
    set_seed(page, 11)
    page.locator("#txt2img_generate").click()
    info = page.locator("#txt2img_info textarea")
    expect(info).to_have_value(re.compile(rf'TI hashes: "{EMBEDDING}: [0-9a-f]{{12}}"'), timeout=GENERATE_TIMEOUT)
    expect(prompt).to_have_value(EMBEDDING)
    screenshot(page, "networks-embedding-generated.png")


def test_a_new_file_appears_after_refresh(page, app_server: RunningApp):
    open_panel(page)
    show(page, "LoRA")
    expect(card(page, "fresh_lora")).to_have_count(0)
    write_safetensors(app_server.data_dir / "models" / "Lora" / "fresh_lora.safetensors", {"lora_unet_x.alpha": [1]})
    page.locator("#txt2img_extra_networks_refresh").click()
    expect(card(page, "fresh_lora")).to_be_visible(timeout=SLOW)
    screenshot(page, "networks-refreshed.png")


def test_checkpoint_card_switches_the_checkpoint(page, app_server: RunningApp):
    open_panel(page)
    show(page, "Checkpoints")
    expect(page.locator("#checkpoint input")).to_have_value(re.compile(r"^other-sd15\.safetensors"))
    card(page, "tiny-sd15").click()
    expect(page.locator("#txt2img_extra_networks_status")).to_contain_text("Loaded", timeout=GENERATE_TIMEOUT)
    expect(page.locator("#checkpoint input")).to_have_value(re.compile(r"^tiny-sd15\.safetensors"))
    screenshot(page, "networks-checkpoint.png")
