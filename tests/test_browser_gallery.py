"""Real-browser tests of the result galleries and of what a page shows when it loads.

Every page load lists the current checkpoints and style models; the Style transfer mode generates from its own
upload; selecting an image of a batch shows that image's own seed, infotext and saved path; the actions under a
gallery (send to img2img / inpaint, save, zip, open folder) act on the selected image.
"""

from __future__ import annotations

import datetime as dt
import re
import zipfile

import pytest
import torch
from PIL import Image

from tests.browser_support import (GENERATE_TIMEOUT, RunningApp, _report_failures, app_server,  # noqa: F401 (fixtures)
                                   browser, chromium_binary, expect, launch_app, page, screenshot, seed_box,
                                   set_seed, set_slider)
from tests.conftest import install
from webui.models.gan import ResnetGenerator

pytestmark = pytest.mark.browser

BATCH_SEED = 1000


def generate_2x2(page, tab: str = "txt2img") -> None:
    """Batch size 2, batch count 2, seed 1000: four images with seeds 1000..1003."""
    scope = f"#tab_{tab}"
    for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 2), ("Batch count", 2),
                         ("Batch size", 2)):
        set_slider(page, label, value, scope)
    page.locator(f"#{tab}_prompt textarea").fill("four small boats")
    set_seed(page, BATCH_SEED)
    page.locator(f"#{tab}_generate").click()
    expect(page.locator(f"#{tab}_progress")).to_contain_text("4 image(s) in", timeout=GENERATE_TIMEOUT)
    expect(page.locator(f"#{tab}_gallery .thumbnail-item")).to_have_count(5)  # A1111's grid first, then 4


def select_image(page, index: int, tab: str = "txt2img", grid: bool = True) -> None:
    """Click the batch's image ``index`` (0-based), after the grid shown first when there is one."""
    page.locator(f"#{tab}_gallery .thumbnail-item").nth(index + grid).click()


def test_a_new_page_after_refresh_shows_the_checkpoint_and_style_model_dropped_in(browser, tmp_path, model_files):
    """Start empty, drop in a checkpoint and a CycleGAN, press Refresh: a second tab shows both, no notice."""
    data_dir = tmp_path / "data"
    with launch_app(data_dir, tmp_path / "app.log", "--no-download") as app:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        try:
            first = context.new_page()
            first.goto(app.url)
            expect(first.locator("#no_model_notice")).to_contain_text("No checkpoint found")

            install(model_files["single"], data_dir)
            (data_dir / "models" / "CycleGAN").mkdir(parents=True, exist_ok=True)
            torch.manual_seed(0)
            torch.save(ResnetGenerator(3, 3, ngf=8, norm="instance", n_blocks=2).state_dict(),
                       data_dir / "models" / "CycleGAN" / "monet.pth")
            first.locator("#refresh_checkpoints").click()
            expect(first.locator("#checkpoint input")).to_have_value(re.compile(r"^tiny-sd15\.safetensors \["))
            first.get_by_role("tab", name="img2img").click()
            first.locator("#img2img_mode").get_by_label("Style transfer").check()
            first.locator("#style_model_refresh").click()
            expect(first.locator("#style_model input")).to_have_value(re.compile(r"CycleGAN/monet \["))

            second = context.new_page()
            second.goto(app.url)
            expect(second.locator("#checkpoint input")).to_have_value(re.compile(r"^tiny-sd15\.safetensors \["),
                                                                      timeout=30_000)
            expect(second.locator("#no_model_notice")).to_be_hidden()
            second.get_by_role("tab", name="img2img").click()
            second.locator("#img2img_mode").get_by_label("Style transfer").check()
            expect(second.locator("#style_model input")).to_have_value(re.compile(r"CycleGAN/monet \["))
            screenshot(second, "gallery-page-load-lists.png")
            # A reload of the first tab too.
            first.reload()
            expect(first.locator("#checkpoint input")).to_have_value(re.compile(r"^tiny-sd15\.safetensors \["),
                                                                     timeout=30_000)
        finally:
            context.close()


def test_style_transfer_mode_generates_from_its_own_upload(page, app_server: RunningApp, tmp_path):
    Image.new("RGB", (72, 48), (120, 200, 60)).save(tmp_path / "horse.png")
    page.get_by_role("tab", name="img2img").click()
    page.locator("#img2img_mode").get_by_label("Style transfer").check()
    expect(page.locator("#style_model input")).to_have_value(re.compile(r"CycleGAN/horse2zebra \["))
    page.locator("#style_image input[type=file]").set_input_files(str(tmp_path / "horse.png"))
    expect(page.locator("#style_image img")).to_be_visible()

    page.locator("#img2img_generate").click()

    progress = page.locator("#img2img_progress")
    expect(progress).to_contain_text("1 image(s) in", timeout=GENERATE_TIMEOUT)
    expect(progress).not_to_contain_text("upload an image first")
    expect(page.locator("#img2img_gallery img").first).to_be_visible()
    expect(page.locator("#img2img_info textarea")).to_have_value(re.compile(r"Style transfer: CycleGAN"))
    screenshot(page, "gallery-style-transfer-generate.png")


def test_selected_image_of_a_batch_shows_its_own_seed_infotext_and_saved_path(page, app_server: RunningApp):
    generate_2x2(page)
    info = page.locator("#txt2img_info textarea")
    saved = page.locator("#txt2img_saved")
    expect(info).to_have_value(re.compile(rf"Seed: {BATCH_SEED}\b"))

    select_image(page, 2)

    expect(info).to_have_value(re.compile(rf"Seed: {BATCH_SEED + 2}\b"))
    folder = f"outputs/txt2img-images/{dt.date.today().isoformat()}"
    expect(saved).to_contain_text(folder)
    expect(saved).to_contain_text(re.compile(rf"\d{{5}}-{BATCH_SEED + 2}\.png"))
    name = re.search(rf"\d{{5}}-{BATCH_SEED + 2}\.png", saved.inner_text()).group(0)
    assert (app_server.data_dir / folder / name).is_file()
    screenshot(page, "gallery-selected-image.png")
    set_seed(page, -1)
    page.locator("#txt2img_reuse_seed").click()
    expect(seed_box(page)).to_have_value(str(BATCH_SEED + 2))


def test_send_the_selected_image_to_img2img_and_to_inpaint(page, app_server: RunningApp):
    generate_2x2(page)
    select_image(page, 3)
    page.locator("#txt2img_send_img2img").click()

    expect(page.locator("#img2img_mode input[value='img2img']")).to_be_checked()
    expect(page.locator("#img2img_image img")).to_be_visible()
    expect(page.locator("#img2img_prompt textarea")).to_have_value("four small boats")
    expect(page.locator("#img2img_seed input[type=number]")).to_have_value(str(BATCH_SEED + 3))
    screenshot(page, "gallery-send-img2img.png")
    # img2img's own gallery: a batch of two from the sent image, the second selected shows its own seed.
    set_slider(page, "Batch size", 2, "#tab_img2img")
    page.locator("#img2img_generate").click()
    expect(page.locator("#img2img_progress")).to_contain_text("2 image(s) in", timeout=GENERATE_TIMEOUT)
    select_image(page, 1, "img2img")
    expect(page.locator("#img2img_info textarea")).to_have_value(re.compile(rf"Seed: {BATCH_SEED + 4}\b"))
    expect(page.locator("#img2img_saved")).to_contain_text(f"-{BATCH_SEED + 4}.png")

    page.get_by_role("tab", name="txt2img").click()
    select_image(page, 1)
    page.locator("#txt2img_send_inpaint").click()
    expect(page.locator("#img2img_mode input[value='Inpaint']")).to_be_checked()
    expect(page.locator("#img2img_editor canvas").first).to_be_visible(timeout=15_000)
    expect(page.locator("#img2img_seed input[type=number]")).to_have_value(str(BATCH_SEED + 1))
    screenshot(page, "gallery-send-inpaint.png")


def test_save_and_zip_offer_downloads(page, app_server: RunningApp, tmp_path):
    generate_2x2(page)
    select_image(page, 1)
    page.locator("#txt2img_save").click()
    download = page.locator("#txt2img_download")
    expect(download).to_contain_text(re.compile(rf"\d{{5}}-{BATCH_SEED + 1}\b"), timeout=GENERATE_TIMEOUT)
    save_dir = app_server.data_dir / "outputs" / "save"
    [png] = [p for p in save_dir.glob("*.png") if p.name.endswith(f"-{BATCH_SEED + 1}.png")]
    with Image.open(png) as img:
        assert f"Seed: {BATCH_SEED + 1}" in img.info["parameters"]
    log = (save_dir / "log.csv").read_text()
    assert png.name in log and "four small boats" in log

    page.locator("#txt2img_zip").click()
    expect(download).to_contain_text(f"images-{BATCH_SEED}-{BATCH_SEED + 3}", timeout=GENERATE_TIMEOUT)
    with page.expect_download() as event:
        download.get_by_role("link").click()
    target = tmp_path / "batch.zip"
    event.value.save_as(target)
    with zipfile.ZipFile(target) as archive:
        names = archive.namelist()
    assert len(names) == 4 and all(re.search(rf"-{BATCH_SEED + i}\.png$", names[i]) for i in range(4)), names
    expect(page.locator("#txt2img_open_folder")).to_be_visible()  # localhost only
    screenshot(page, "gallery-save-zip.png")
