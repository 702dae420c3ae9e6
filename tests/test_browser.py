"""End-to-end tests: the real app (``app.py`` in a subprocess) driven through headless Chromium by Playwright.

These exercise what unit tests cannot: the Gradio front end talking to our handlers over the wire, files landing in
the data dir, and the interrupt path racing a running job. Generation always uses 64x64 and few steps: the tiny
test model's VAE downsamples by only 2, so the UI's 512x512 default would be extremely slow on a CPU.

Run just these with ``pytest -m browser``; they skip when no Chromium binary is installed.
"""

from __future__ import annotations

import json
import datetime as dt
import re
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image, PngImagePlugin

from tests.conftest import install

from tests.browser_support import (ARTIFACTS, GENERATE_TIMEOUT, RunningApp, _report_failures, app_server,  # noqa: F401 (fixtures)
                                   browser, chromium_binary, expect, http_status, launch_app, page, screenshot,
                                   seed_box, set_seed, set_slider)

pytestmark = pytest.mark.browser


# --- tests ------------------------------------------------------------------------------------------------------------

def test_txt2img_generates_saves_and_shows_infotext(page, app_server: RunningApp):
    prompt = "a tiny lighthouse on a rocky shore"
    set_slider(page, "Width", 64)
    set_slider(page, "Height", 64)
    set_slider(page, "Sampling steps", 4)
    page.locator("#txt2img_prompt textarea").fill(prompt)
    set_seed(page, 1234)

    page.locator("#txt2img_generate").click()

    expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=GENERATE_TIMEOUT)
    info = page.locator("#txt2img_info textarea")
    expect(info).to_have_value(re.compile(r"Seed: 1234\b"), timeout=GENERATE_TIMEOUT)
    expect(info).to_have_value(re.compile(r"Size: 64x64\b"))
    expect(info).to_have_value(re.compile(re.escape(prompt)))
    expect(page.locator("#txt2img_progress")).to_contain_text("image(s) in")

    folder = app_server.data_dir / "outputs" / "txt2img-images" / dt.date.today().isoformat()
    saved = sorted(folder.glob("*-1234.png"))
    assert saved, f"no PNG for seed 1234 in {folder}: {sorted(p.name for p in folder.glob('*'))}"
    with Image.open(saved[-1]) as img:
        assert img.size == (64, 64)
        parameters = img.info["parameters"]
    assert prompt in parameters
    assert "Seed: 1234" in parameters
    assert "Steps: 4" in parameters
    screenshot(page, "txt2img.png")


PNGINFO_PARAMETERS = ("a cozy cabin\nNegative prompt: blurry\n"
                      "Steps: 7, Sampler: Euler a, CFG scale: 5.5, Seed: 99, Size: 64x64, Model: x")


def test_pnginfo_reads_parameters_and_sends_them_to_txt2img(page, tmp_path):
    source = tmp_path / "a1111.png"
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", PNGINFO_PARAMETERS)
    Image.new("RGB", (64, 64), (200, 120, 40)).save(source, pnginfo=meta)

    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(source))

    expect(page.locator("#pnginfo_text textarea")).to_have_value(PNGINFO_PARAMETERS)
    expect(page.locator("#pnginfo_table")).to_contain_text("Euler a")
    screenshot(page, "pnginfo.png")

    page.locator("#pnginfo_send_txt2img").click()

    expect(page.get_by_role("tab", name="txt2img")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#txt2img_prompt textarea")).to_have_value("a cozy cabin")
    expect(page.locator("#txt2img_negative_prompt textarea")).to_have_value("blurry")
    expect(seed_box(page)).to_have_value("99")
    expect(page.get_by_label("number input for Sampling steps", exact=True)).to_have_value("7")
    expect(page.get_by_label("number input for Width", exact=True)).to_have_value("64")
    expect(page.get_by_label("number input for CFG scale", exact=True)).to_have_value("5.5")
    expect(page.get_by_label("Sampling method", exact=True)).to_have_value("Euler a")


def test_interrupt_stops_a_long_job_and_server_stays_up(page, app_server: RunningApp):
    set_slider(page, "Width", 64)
    set_slider(page, "Height", 64)
    set_slider(page, "Sampling steps", 150)
    set_slider(page, "Batch count", 3)
    page.locator("#txt2img_prompt textarea").fill("interrupt me")
    set_seed(page, 7)

    page.locator("#txt2img_generate").click()
    progress = page.locator("#txt2img_progress")
    expect(progress).to_contain_text("Step", timeout=GENERATE_TIMEOUT)
    started = time.monotonic()
    page.locator("#txt2img_interrupt").click()

    # 3 x 150 steps would take minutes on a CPU; an honoured interrupt ends the job within a few steps.
    expect(progress).to_contain_text("(interrupted)", timeout=30_000)
    assert time.monotonic() - started < 30
    done = re.search(r"(\d+) image\(s\)", progress.inner_text())
    assert done and int(done.group(1)) < 3, progress.inner_text()
    assert http_status(f"{app_server.url}/sdapi/v1/sd-models") == 200


def test_img2img_inpaints_an_uploaded_image_with_an_uploaded_mask(page, app_server: RunningApp, tmp_path):
    init = Image.new("RGB", (64, 64), (30, 140, 200))
    init.save(tmp_path / "init.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")

    page.get_by_role("tab", name="img2img").click()
    page.locator("#img2img_mode").get_by_label("Inpaint").check()
    editor = page.locator("#img2img_editor")
    expect(editor).to_be_visible()
    with page.expect_file_chooser() as chooser:  # as a person does it: click the upload area, pick the file
        editor.get_by_text("Upload an image").click()
    chooser.value.set_files(str(tmp_path / "init.png"))
    expect(editor).not_to_contain_text("Upload an image")  # the editor has taken the picture
    page.locator("#img2img_mask input[type=file]").set_input_files(str(tmp_path / "mask.png"))
    expect(page.locator("#img2img_mask img")).to_be_visible()
    for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 4), ("Mask blur", 0)):
        set_slider(page, label, value, scope="#tab_img2img")
    page.locator("#img2img_prompt textarea").fill("a red door")
    page.locator("#img2img_generate").click()

    expect(page.locator("#img2img_gallery img").first).to_be_visible(timeout=GENERATE_TIMEOUT)
    info = page.locator("#img2img_info textarea")
    expect(info).to_have_value(re.compile(r"Denoising strength: 0.75"), timeout=GENERATE_TIMEOUT)
    expect(info).to_have_value(re.compile(r"Mask blur: 0"))
    folder = app_server.data_dir / "outputs" / "img2img-images" / dt.date.today().isoformat()
    [saved] = sorted(folder.glob("*.png"))
    with Image.open(saved) as img:
        assert img.size == (64, 64)
        assert img.convert("RGB").getpixel((2, 2)) == (30, 140, 200)  # outside the mask: untouched
        assert "a red door" in img.info["parameters"]
    screenshot(page, "img2img.png")


def test_img2img_without_an_image_says_so(page):
    page.get_by_role("tab", name="img2img").click()
    page.locator("#img2img_generate").click()
    expect(page.locator("#img2img_progress")).to_contain_text("image: upload an image first", timeout=20_000)


def test_style_transfer_then_send_to_img2img(page, app_server: RunningApp, tmp_path):
    Image.new("RGB", (72, 48), (120, 200, 60)).save(tmp_path / "horse.png")
    page.get_by_role("tab", name="img2img").click()
    page.locator("#img2img_mode").get_by_label("Style transfer").check()
    expect(page.locator("#style_model input")).to_have_value(re.compile(r"CycleGAN/horse2zebra \["))
    page.locator("#style_image input[type=file]").set_input_files(str(tmp_path / "horse.png"))
    expect(page.locator("#style_image img")).to_be_visible()
    page.locator("#style_transfer").click()
    expect(page.locator("#style_output img")).to_be_visible(timeout=GENERATE_TIMEOUT)
    expect(page.locator("#style_info")).to_contain_text("Saved to")
    folder = app_server.data_dir / "outputs" / "img2img-images" / dt.date.today().isoformat()
    [saved] = folder.glob("*-horse2zebra.png")
    with Image.open(saved) as img:
        assert img.size == (72, 48)
        assert "Style transfer: CycleGAN" in img.info["parameters"]
    screenshot(page, "style-transfer.png")

    page.locator("#style_send_img2img").click()
    expect(page.locator("#img2img_mode input[value='img2img']")).to_be_checked()
    expect(page.locator("#img2img_image img")).to_be_visible()


def test_first_run_without_a_checkpoint_then_drop_one_in(browser, tmp_path, model_files):
    """A new user: the UI says where to put a model, generating explains itself, Refresh finds a dropped file.

    The download offer's offline message is covered in test_ui.py against a closed local port.
    """
    data_dir = tmp_path / "data"
    with launch_app(data_dir, tmp_path / "app.log", "--no-download") as app:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        try:
            page.goto(app.url)
            notice = page.locator("#no_model_notice")
            expect(notice).to_contain_text("No checkpoint found")
            expect(notice).to_contain_text(str(data_dir / "models" / "Stable-diffusion"))
            expect(page.locator("#download_default")).to_be_hidden()  # --no-download: no offer (no network here)
            page.locator("#txt2img_generate").click()
            expect(page.locator("#txt2img_progress")).to_contain_text("No checkpoint found", timeout=20_000)
            screenshot(page, "first-run.png")

            install(model_files["single"], data_dir)
            page.locator("#refresh_checkpoints").click()
            expect(page.locator("#checkpoint input")).to_have_value(re.compile(r"^tiny-sd15\.safetensors \["))
            expect(notice).to_be_hidden()
        finally:
            context.close()


def test_img2img_and_batch_modes(page, app_server: RunningApp, tmp_path):
    Image.new("RGB", (64, 64), (200, 60, 60)).save(tmp_path / "photo.png")
    page.get_by_role("tab", name="img2img").click()
    for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 4)):
        set_slider(page, label, value, scope="#tab_img2img")
    page.locator("#img2img_image input[type=file]").set_input_files(str(tmp_path / "photo.png"))
    expect(page.locator("#img2img_image img")).to_be_visible()
    page.locator("#img2img_prompt textarea").fill("a painting")
    page.locator("#img2img_generate").click()
    info = page.locator("#img2img_info textarea")
    expect(info).to_have_value(re.compile(r"Denoising strength: 0.75"), timeout=GENERATE_TIMEOUT)
    expect(info).not_to_have_value(re.compile(r"Mask blur"))

    # Batch folders live inside the data dir (or --batch-dirs); a relative name starts there.
    source, target = app_server.data_dir / "batch-in", app_server.data_dir / "batch-out"
    source.mkdir()
    for name in ("one", "two"):
        Image.new("RGB", (64, 64), (20, 120, 90)).save(source / f"{name}.png")
    page.locator("#img2img_mode").get_by_label("Batch").check()
    page.locator("#img2img_batch_input textarea").fill(str(tmp_path))  # outside: refused, nothing revealed
    page.locator("#img2img_generate").click()
    expect(page.locator("#img2img_progress")).to_contain_text("input_dir: not an existing folder this server may use")
    page.locator("#img2img_batch_input textarea").fill("batch-in")
    page.locator("#img2img_batch_output textarea").fill(str(target))
    page.locator("#img2img_generate").click()
    expect(page.locator("#img2img_progress")).to_contain_text("2 image(s) in", timeout=GENERATE_TIMEOUT)
    assert sorted(p.name for p in target.iterdir()) == ["one.png", "two.png"]
    with Image.open(target / "two.png") as img:
        assert "a painting" in img.info["parameters"]


def test_instruct_pix2pix_checkpoint_from_the_browser(page, app_server: RunningApp, tmp_path):
    Image.new("RGB", (64, 64), (90, 90, 200)).save(tmp_path / "street.png")
    page.locator("#checkpoint input").click()
    page.get_by_role("option", name=re.compile(r"^toy-ip2p\.safetensors")).click()
    expect(page.locator("#model_status")).to_contain_text("Loaded toy-ip2p.safetensors", timeout=GENERATE_TIMEOUT)
    page.get_by_role("tab", name="img2img").click()
    for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 3)):
        set_slider(page, label, value, scope="#tab_img2img")
    page.locator("#img2img_image input[type=file]").set_input_files(str(tmp_path / "street.png"))
    expect(page.locator("#img2img_image img")).to_be_visible()
    page.locator("#img2img_prompt textarea").fill("make it winter")
    page.locator("#img2img_generate").click()
    info = page.locator("#img2img_info textarea")
    expect(info).to_have_value(re.compile(r"Image CFG scale: 1.5"), timeout=GENERATE_TIMEOUT)
    expect(info).to_have_value(re.compile(r"Model: toy-ip2p"))
    screenshot(page, "instruct-pix2pix.png")
    # Leave the server's default checkpoint as the other tests expect it.
    page.locator("#checkpoint input").click()
    page.get_by_role("option", name=re.compile(r"^tiny-sd15\.safetensors")).click()
    expect(page.locator("#model_status")).to_contain_text("Loaded tiny-sd15.safetensors", timeout=GENERATE_TIMEOUT)


def test_a_checkpoint_that_fails_to_load_leaves_the_working_one_selected(page, app_server: RunningApp):
    """The switch is a queued job; a broken file is reported and the dropdown goes back to the active model."""
    broken = app_server.data_dir / "models" / "Stable-diffusion" / "zz-broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00" + b"{not json at all" + b"\x00" * 64)
    try:
        page.locator("#refresh_checkpoints").click()
        page.locator("#checkpoint input").click()
        page.get_by_role("option", name=re.compile(r"^zz-broken\.safetensors")).click()
        status = page.locator("#model_status")
        expect(status).to_contain_text("zz-broken", timeout=GENERATE_TIMEOUT)
        expect(status).to_contain_text("Still using tiny-sd15.safetensors", timeout=GENERATE_TIMEOUT)
        expect(page.locator("#checkpoint input")).to_have_value(re.compile(r"^tiny-sd15\.safetensors \["))
        screenshot(page, "checkpoint-switch-failed.png")
        # The working model still generates.
        for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 3)):
            set_slider(page, label, value)
        page.locator("#txt2img_generate").click()
        expect(page.locator("#txt2img_info textarea")).to_have_value(re.compile(r"Model: tiny-sd15"),
                                                                     timeout=GENERATE_TIMEOUT)
    finally:
        broken.unlink()
        page.locator("#refresh_checkpoints").click()


def test_hostile_uploads_get_a_clear_message_and_pages_carry_security_headers(page, app_server: RunningApp,
                                                                               tmp_path):
    # An EPS would make Pillow run Ghostscript; it is refused by name, in the page, and the server stays up.
    eps = tmp_path / "poster.png"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n")
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(eps))
    expect(page.locator(".studio-error").first).to_contain_text("image: EPS images are not accepted",
                                                                timeout=20_000)
    screenshot(page, "pnginfo-eps-refused.png")
    response = page.request.get(app_server.url + "/")
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    # A file outside Gradio's uploads cannot be named by an event, even from the page's own origin.
    refused = page.request.post(app_server.url + "/gradio_api/call/png_info", data={
        "data": [{"path": str(app_server.data_dir / "config.json"), "meta": {"_type": "gradio.FileData"}}]},
        headers={"Origin": app_server.url})
    assert refused.status == 403


def test_exposed_server_asks_for_a_login_and_says_who_can_reach_it(browser, tmp_path, model_files):
    data_dir = tmp_path / "data"
    install(model_files["single"], data_dir)
    with launch_app(data_dir, tmp_path / "app.log", "--listen", "--gradio-auth", "ann:pw-ann",
                    "--api-auth", "bot:pw-bot") as app:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        try:
            page.goto(app.url)
            page.get_by_label("username").fill("ann")
            page.get_by_label("password").fill("pw-ann")
            page.get_by_role("button", name="Login").click()
            banner = page.locator("#exposure_banner")
            expect(banner).to_contain_text("reachable by every machine", timeout=30_000)
            expect(banner).to_contain_text("img2img Batch) are off")
            page.get_by_role("tab", name="img2img").click()
            expect(page.locator("#img2img_mode").get_by_label("Inpaint")).to_be_visible()
            expect(page.locator("#img2img_mode").get_by_label("Batch")).to_have_count(0)
            screenshot(page, "exposed-banner.png")
            # The UI login does not open the API, nor its docs.
            assert page.request.get(app.url + "/sdapi/v1/options").status == 401
            assert page.request.get(app.url + "/docs").status == 401
        finally:
            context.close()


def test_history_lists_a_job_and_reopen_restores_its_settings(page):
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


def test_a_long_batch_is_paused_resumed_and_cancelled_from_history(page, app_server: RunningApp):
    """A batch folder is a long job: History pauses it at a safe point (between images), resumes and cancels it."""
    source = app_server.data_dir / "long-batch"
    source.mkdir()
    for index in range(40):
        Image.new("RGB", (64, 64), (index * 6, 120, 90)).save(source / f"{index:02d}.png")
    page.get_by_role("tab", name="img2img").click()
    for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 40)):
        set_slider(page, label, value, scope="#tab_img2img")
    page.locator("#img2img_mode").get_by_label("Batch").check()
    page.locator("#img2img_batch_input textarea").fill("long-batch")
    page.locator("#img2img_batch_output textarea").fill("")
    page.locator("#img2img_prompt textarea").fill("a long batch")
    page.locator("#img2img_generate").click()
    expect(page.locator("#img2img_progress")).to_contain_text("Step", timeout=GENERATE_TIMEOUT)

    page.get_by_role("tab", name="History").click()
    table = page.locator("#history_table")
    expect(table).to_contain_text("running")  # the listing made when the tab opened, not an older one
    table.get_by_text("running").filter(visible=True).first.click()
    expect(page.locator("#history_details")).to_contain_text("img2img-batch")
    page.locator("#history_pause").click()
    expect(page.locator("#history_control")).to_contain_text("pauses at its next safe point")

    def job_status() -> str:
        with urllib.request.urlopen(f"{app_server.url}/studio/v1/jobs?kind=img2img-batch", timeout=10) as response:
            return json.load(response)[0]["status"]

    deadline = time.monotonic() + GENERATE_TIMEOUT / 1000
    while job_status() != "paused":
        assert time.monotonic() < deadline, "the batch never paused"
        time.sleep(0.2)
    page.locator("#history_refresh").click()
    expect(table).to_contain_text("paused")
    screenshot(page, "history-paused.png")
    page.locator("#history_resume").click()
    expect(page.locator("#history_control")).to_contain_text("resumes")
    page.locator("#history_cancel").click()
    expect(page.locator("#history_control")).to_contain_text("stops at its next step")
    page.get_by_role("tab", name="img2img").click()
    expect(page.locator("#img2img_progress")).to_contain_text("(interrupted)", timeout=GENERATE_TIMEOUT)
    page.locator("#img2img_mode").get_by_label("img2img", exact=True).check()


def test_variation_seed_from_the_extra_row_and_reuse_seed_buttons(page):
    """A random seed with a variation seed: the infotext records both, and ♻ puts them back into the form."""
    for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 3)):
        set_slider(page, label, value)
    page.locator("#txt2img_prompt textarea").fill("a variation of a fox")
    set_seed(page, -1)
    page.locator("#txt2img_seed_extra").get_by_text("Extra: variation seed and noise").click()
    subseed = page.locator("#txt2img_subseed input[type=number]")
    strength = page.locator("#tab_txt2img").get_by_label("number input for Variation strength", exact=True)
    # The accordion's first opening can re-mount its widgets a moment later (seen on a cold start), putting the
    # defaults back: type both values until they hold.
    for _attempt in range(5):
        for box, value in ((strength, "0.5"), (subseed, "777")):
            box.fill(value)
            box.press("Enter")
            box.blur()
        page.wait_for_timeout(500)
        if subseed.input_value() == "777" and strength.input_value() == "0.5":
            break
    expect(strength).to_have_value("0.5")
    expect(subseed).to_have_value("777")

    page.locator("#txt2img_generate").click()

    info = page.locator("#txt2img_info textarea")
    expect(info).to_have_value(re.compile(r"Variation seed: 777, Variation seed strength: 0\.5\b"),
                               timeout=GENERATE_TIMEOUT)
    seed = re.search(r"\bSeed: (\d+)", info.input_value()).group(1)
    expect(seed_box(page)).to_have_value("-1")
    page.locator("#txt2img_reuse_seed").click()
    expect(seed_box(page)).to_have_value(seed)
    subseed.fill("-1")
    subseed.press("Tab")
    page.locator("#txt2img_reuse_subseed").click()
    expect(subseed).to_have_value("777")
    screenshot(page, "variation-seed.png")


def test_sd_vae_selector_picks_a_vae_file_for_the_next_image(page, app_server: RunningApp):
    from tests.test_vae import write_vae_file

    write_vae_file(app_server.data_dir / "models" / "VAE" / "browser-vae.safetensors")
    page.locator("#refresh_checkpoints").click()
    try:
        page.locator("#sd_vae input").click()
        page.get_by_role("option", name="browser-vae.safetensors").click()
        expect(page.locator("#model_status")).to_contain_text("SD VAE: browser-vae.safetensors")
        for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 2)):
            set_slider(page, label, value)
        page.locator("#txt2img_generate").click()
        info = page.locator("#txt2img_info textarea")
        expect(info).to_have_value(re.compile(r"VAE hash: [0-9a-f]{10}, VAE: browser-vae\.safetensors"),
                                   timeout=GENERATE_TIMEOUT)
        screenshot(page, "sd-vae.png")
    finally:
        # Leave the server's default (Automatic) for the other tests.
        page.locator("#sd_vae input").click()
        page.get_by_role("option", name="Automatic").click()
        expect(page.locator("#model_status")).to_contain_text("SD VAE: Automatic")


def test_pnginfo_send_sets_sampler_with_schedule_resets_clip_skip_and_says_what_it_could_not_apply(page, tmp_path):
    text = ("a lighthouse at dusk\nSteps: 9, Sampler: DPM++ 2M Karras, CFG scale: 6, Seed: 5, Size: 64x64, "
            "Model hash: 0123456789, Model: dreamshaper_8, Hires checkpoint: juggernaut, ADetailer model: face_yolov8n.pt")
    source = tmp_path / "civitai.png"
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", text)
    Image.new("RGB", (64, 64), (20, 40, 200)).save(source, pnginfo=meta)
    set_slider(page, "Clip skip", 3)  # the text has none: A1111 sets it back to 1

    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(source))
    expect(page.locator("#pnginfo_text textarea")).to_have_value(text)
    page.locator("#pnginfo_send_txt2img").click()

    expect(page.get_by_role("tab", name="txt2img")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_label("Sampling method", exact=True)).to_have_value("DPM++ 2M")
    expect(page.get_by_label("Schedule type", exact=True)).to_have_value("Karras")
    expect(page.get_by_label("number input for Clip skip", exact=True)).to_have_value("1")
    status = page.locator("#model_status")
    expect(status).to_contain_text("Checkpoint dreamshaper_8 [0123456789] is not on disk")
    expect(status).to_contain_text("Not applied: Hires checkpoint, ADetailer model")
    expect(page.locator("#checkpoint input")).to_have_value(re.compile(r"^tiny-sd15\.safetensors \["))
    screenshot(page, "pnginfo-send-notice.png")


def test_hires_fix_from_the_accordion_doubles_the_image_and_records_it(page, app_server: RunningApp):
    for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 3)):
        set_slider(page, label, value)
    page.locator("#txt2img_prompt textarea").fill("a hires lighthouse")
    set_seed(page, 4242)
    page.locator("#txt2img_hires_fix").get_by_text("Hires. fix").first.click()
    enable = page.locator("#txt2img_enable_hr input[type=checkbox]")
    # The accordion's first opening can re-mount its widgets (as the seed row's): check until it holds.
    for _attempt in range(5):
        if not enable.is_checked():
            enable.check()
        page.wait_for_timeout(500)
        if enable.is_checked():
            break
    expect(enable).to_be_checked()
    page.locator("#txt2img_hr_upscaler input").click()
    page.get_by_role("option", name="Latent (nearest-exact)").click()
    set_slider(page, "Hires steps", 2)
    set_slider(page, "Denoising strength", 0.6)

    page.locator("#txt2img_generate").click()

    info = page.locator("#txt2img_info textarea")
    expect(info).to_have_value(re.compile(r"Seed: 4242\b"), timeout=GENERATE_TIMEOUT)
    text = info.input_value()
    for part in ("Size: 64x64", "Denoising strength: 0.6", "Hires upscale: 2", "Hires steps: 2",
                 "Hires upscaler: Latent (nearest-exact)"):
        assert part in text, (part, text)
    folder = app_server.data_dir / "outputs" / "txt2img-images" / dt.date.today().isoformat()
    saved = sorted(folder.glob("*-4242.png"))
    assert saved, sorted(p.name for p in folder.glob("*"))
    with Image.open(saved[-1]) as img:
        assert img.size == (128, 128)  # the hires size; the infotext keeps the first pass's
    screenshot(page, "hires-fix.png")


def test_refiner_from_the_accordion_switches_checkpoint_and_records_it(page, app_server: RunningApp):
    """Any checkpoint of the same latent space can refine: here the tiny SD 1.5 refines its own first half."""
    for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 4)):
        set_slider(page, label, value)
    page.locator("#txt2img_prompt textarea").fill("a refined lighthouse")
    set_seed(page, 5151)
    page.locator("#txt2img_refiner").get_by_text("Refiner").first.click()
    dropdown = page.locator("#txt2img_refiner_checkpoint input")
    for _attempt in range(5):  # the accordion's first opening can re-mount its widgets: pick until it holds
        dropdown.click()
        page.get_by_role("option", name=re.compile(r"^tiny-sd15")).click()
        page.wait_for_timeout(500)
        if dropdown.input_value().startswith("tiny-sd15"):
            break
    expect(dropdown).to_have_value(re.compile(r"^tiny-sd15"))
    set_slider(page, "Switch at", 0.5)

    page.locator("#txt2img_generate").click()

    info = page.locator("#txt2img_info textarea")
    expect(info).to_have_value(re.compile(r"Seed: 5151\b"), timeout=GENERATE_TIMEOUT)
    text = info.input_value()
    assert re.search(r"Refiner: tiny-sd15 \[[0-9a-f]{10}\], Refiner switch at: 0\.5", text), text
    screenshot(page, "refiner.png")


def test_api_docs_render_without_a_network(page, app_server: RunningApp):
    """Swagger UI's files come from this server: any request elsewhere is blocked, and the docs still render."""
    outside = []

    def block_outside(route):
        if route.request.url.startswith(app_server.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", block_outside)
    page.goto(app_server.url + "/docs")
    expect(page.get_by_text("/sdapi/v1/txt2img").first).to_be_visible(timeout=30_000)
    assert outside == []
    screenshot(page, "api-docs.png")
