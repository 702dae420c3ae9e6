"""Real-browser test of LoRAs in prompts: a job with a LoRA tag records its hash, a missing one is shown as a
warning and the job still runs. One app for the module, over a data dir with the tiny checkpoint and a kohya LoRA
written for its layers; 64x64, 2 steps."""

from __future__ import annotations

import re
from typing import Iterator

import pytest

from tests.browser_support import (GENERATE_TIMEOUT, RunningApp, _report_failures, browser,  # noqa: F401 (fixtures)
                                   chromium_binary, expect, launch_app, page, screenshot, set_seed, set_slider)
from tests.conftest import install
from tests.lora_files import kohya_lora
from tests.tiny_models import tiny_sd1_components
from webui.models.loras import lora_hash

pytestmark = pytest.mark.browser

LORA = "tiny_kohya_style"


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, model_files, chromium_binary) -> Iterator[RunningApp]:
    from diffusers import StableDiffusionPipeline

    root = tmp_path_factory.mktemp("browser-lora")
    data_dir = root / "data"
    install(model_files["single"], data_dir)
    lora_dir = data_dir / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    pipe = StableDiffusionPipeline(**tiny_sd1_components(0), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    kohya_lora(pipe, lora_dir / f"{LORA}.safetensors")
    with launch_app(data_dir, root / "app.log") as app:
        yield app


def generate(page, prompt: str) -> None:
    page.locator("#txt2img_prompt textarea").fill(prompt)
    for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 2)):
        set_slider(page, label, value)
    set_seed(page, 5)
    page.locator("#txt2img_generate").click()


def test_lora_tag_is_applied_and_recorded_and_a_missing_one_is_a_warning(page, app_server: RunningApp):
    short = lora_hash(app_server.data_dir / "models" / "Lora" / f"{LORA}.safetensors")
    info = page.locator("#txt2img_info textarea")
    generate(page, f"a lighthouse <lora:{LORA}:0.8>")
    expect(info).to_have_value(re.compile(rf'^a lighthouse <lora:{LORA}:0.8>\n.*Lora hashes: "{LORA}: {short}"',
                                          re.S), timeout=GENERATE_TIMEOUT)
    expect(page.get_by_text("LoRA not found")).to_have_count(0)
    screenshot(page, "lora-applied.png")

    generate(page, "a lighthouse <lora:no_such_lora:1>")
    expect(page.get_by_text("LoRA not found: no_such_lora")).to_be_visible(timeout=GENERATE_TIMEOUT)
    expect(info).to_have_value(re.compile(r"^a lighthouse <lora:no_such_lora:1>\n"))
    assert "Lora hashes" not in info.input_value()
    screenshot(page, "lora-missing-warning.png")
