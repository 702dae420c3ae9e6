"""Real-browser tests of the prompt tools: styles, the token counter, Ctrl+Enter, Ctrl+Up/Down weights, LoRA name
completion, and images pasted or dropped into img2img. One app for the module, over a data dir with a tiny
checkpoint and an (empty-weighted) LoRA file; generation at 64x64 with 2 steps."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image

from tests.browser_support import (GENERATE_TIMEOUT, RunningApp, _report_failures, browser,  # noqa: F401 (fixtures)
                                   chromium_binary, expect, launch_app, page, screenshot, set_seed, set_slider)
from tests.conftest import install
from tests.test_listings import write_safetensors
from webui.services.styles import read_styles_csv

pytestmark = pytest.mark.browser

LORA = "tiny_style_lora"
EMBEDDING = "grumpy_cat_embedding"


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, model_files, chromium_binary) -> Iterator[RunningApp]:
    root = tmp_path_factory.mktemp("browser-prompts")
    data_dir = root / "data"
    install(model_files["single"], data_dir)
    write_safetensors(data_dir / "models" / "Lora" / f"{LORA}.safetensors", {"lora_unet_x.alpha": [1]})
    write_safetensors(data_dir / "embeddings" / f"{EMBEDDING}.safetensors", {"emb_params": [2, 32]})
    (data_dir / "styles-broken.csv").write_bytes(b"name,prompt\nBad,\xff\xfe\n")  # not UTF-8: named, not fatal
    with launch_app(data_dir, root / "app.log") as app:
        yield app


def small_job(page, scope: str = "#tab_txt2img") -> None:
    for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 2)):
        set_slider(page, label, value, scope=scope)


def prompt_box(page, tab: str = "txt2img", negative: bool = False):
    return page.locator(f"#{tab}_{'negative_' if negative else ''}prompt textarea")


def test_save_prompts_as_a_style_pick_it_generate_and_apply(page, app_server: RunningApp):
    prompt, negative = prompt_box(page), prompt_box(page, negative=True)
    prompt.fill("cinematic still of {prompt}, film grain")
    negative.fill("lowres")
    page.locator("#txt2img_style_save_panel").get_by_text("Save prompts as a style").click()
    page.locator("#txt2img_style_name input, #txt2img_style_name textarea").fill("Film")
    page.locator("#txt2img_style_save").click()
    expect(page.locator("#txt2img_styles_status")).to_contain_text("Saved style Film to styles.csv")
    saved = read_styles_csv((app_server.data_dir / "styles.csv").read_bytes(), Path("styles.csv"))
    assert [(s.name, s.prompt, s.negative_prompt) for s in saved] == [
        ("Film", "cinematic still of {prompt}, film grain", "lowres")]

    # Pick it for a job: the job's prompt is the styled one, the boxes keep what was typed.
    prompt.fill("a lighthouse")
    negative.fill("")
    styles = page.locator("#txt2img_styles input")
    styles.click()
    page.get_by_role("option", name="Film").click()
    page.keyboard.press("Escape")
    small_job(page)
    set_seed(page, 77)
    page.locator("#txt2img_generate").click()
    info = page.locator("#txt2img_info textarea")
    expect(info).to_have_value(re.compile(r"^cinematic still of a lighthouse, film grain\nNegative prompt: lowres\n"),
                               timeout=GENERATE_TIMEOUT)
    expect(prompt).to_have_value("a lighthouse")
    screenshot(page, "prompts-style-picked.png")

    # 📋 writes the styles into the boxes and clears the selection, so they do not apply twice.
    page.locator("#txt2img_style_apply").click()
    expect(prompt).to_have_value("cinematic still of a lighthouse, film grain")
    expect(negative).to_have_value("lowres")
    expect(page.locator("#txt2img_styles").get_by_role("button", name=re.compile("Film"))).to_have_count(0)

    # Saving under the same name says it replaced the old one.
    prompt.fill("cinematic still of {prompt}, film grain")
    page.locator("#txt2img_style_name input, #txt2img_style_name textarea").fill("Film")
    page.locator("#txt2img_style_save").click()
    expect(page.locator("#txt2img_styles_status")).to_contain_text("replacing the one saved before")
    screenshot(page, "prompts-style-applied.png")

    # PNG Info's Send to takes the style back out of the saved image's prompts and selects it.
    [saved_png] = sorted((app_server.data_dir / "outputs" / "txt2img-images").rglob("*-77.png"))
    page.get_by_role("tab", name="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(saved_png))
    expect(page.locator("#pnginfo_text textarea")).to_have_value(re.compile("^cinematic still of a lighthouse"))
    page.locator("#pnginfo_send_txt2img").click()
    expect(prompt).to_have_value("a lighthouse")
    expect(negative).to_have_value("")
    expect(page.locator("#txt2img_styles").get_by_text("Film", exact=True)).to_be_visible()
    screenshot(page, "prompts-style-sent-from-pnginfo.png")


def test_a_broken_styles_file_is_named_and_the_others_still_work(page):
    status = page.locator("#txt2img_styles_status")
    expect(status).to_contain_text("styles-broken.csv could not be read (not UTF-8")
    page.locator("#txt2img_styles_refresh").click()  # still named after a re-read, and the page still works
    expect(status).to_contain_text("styles-broken.csv could not be read")
    expect(page.locator("#txt2img_generate")).to_be_enabled()
    screenshot(page, "prompts-broken-styles-file.png")


def test_token_counter_shows_tokens_and_chunks(page):
    counter = page.locator("#txt2img_token_counter")
    expect(counter).to_have_text("0/75")
    prompt_box(page).fill("cat " * 80)  # 80 tokens: two chunks
    expect(counter).to_have_text("80/150")
    prompt_box(page).fill("a (cat:1.3) <lora:tiny_style_lora:0.8> BREAK dog")  # weights and tags are free
    expect(counter).to_have_text("3/75")
    prompt_box(page, negative=True).fill("blurry, lowres")
    expect(page.locator("#txt2img_negative_token_counter")).to_have_text("4/75")
    screenshot(page, "prompts-token-counter.png")


def test_ctrl_up_weights_the_word_and_ctrl_enter_generates_it(page, app_server: RunningApp):
    small_job(page)
    set_seed(page, 5)
    box = prompt_box(page)
    box.fill("a lighthouse at dusk")
    box.evaluate("el => el.setSelectionRange(2, 12)")  # "lighthouse"
    box.press("Control+ArrowUp")
    expect(box).to_have_value("a (lighthouse:1.1) at dusk")
    box.press("Control+ArrowUp")
    expect(box).to_have_value("a (lighthouse:1.2) at dusk")
    # The caret inside "dusk", nothing selected: the word under the caret.
    box.evaluate("el => el.setSelectionRange(24, 24)")
    box.press("Control+ArrowDown")
    expect(box).to_have_value("a (lighthouse:1.2) at (dusk:0.9)")
    box.press("Control+ArrowUp")
    expect(box).to_have_value("a (lighthouse:1.2) at dusk")

    box.press("Control+Enter")
    info = page.locator("#txt2img_info textarea")
    # The job ran with the edited text: Gradio saw the value the keys made.
    expect(info).to_have_value(re.compile(r"^a \(lighthouse:1\.2\) at dusk\n"), timeout=GENERATE_TIMEOUT)
    expect(box).to_have_value("a (lighthouse:1.2) at dusk")  # no newline from the Enter
    screenshot(page, "prompts-ctrl-enter.png")

    # Drag the result to img2img's image box (as from another tab's gallery): it lands there.
    src = page.locator("#txt2img_gallery img").first.get_attribute("src")
    page.get_by_role("tab", name="img2img").click()
    expect(page.locator("#img2img_image input[type=file]")).to_be_attached()
    page.locator("#img2img_image").evaluate(
        """(box, url) => {
            const data = new DataTransfer();
            data.setData('text/uri-list', url);
            const target = box.querySelector('input[type=file]').parentElement;
            target.dispatchEvent(new DragEvent('drop', {dataTransfer: data, bubbles: true, cancelable: true}));
        }""", src)
    expect(page.locator("#img2img_image img")).to_be_visible()
    screenshot(page, "prompts-dropped-into-img2img.png")


def test_lora_names_are_completed_after_lora_colon(page):
    box = prompt_box(page)
    box.click()
    box.press_sequentially("a fox <lora:tin")
    popup = page.locator("#studio_autocomplete")
    expect(popup).to_be_visible()
    expect(popup).to_contain_text(LORA)
    screenshot(page, "prompts-autocomplete.png")
    box.press("Tab")
    expect(popup).to_have_count(0)
    expect(box).to_have_value(f"a fox <lora:{LORA}:1>")
    expect(page.locator("#txt2img_token_counter")).to_have_text("2/75")  # Gradio got the completed text
    # Ctrl+Up with the caret in the tag: its weight, in A1111's smaller steps for extra networks.
    box.evaluate("el => el.setSelectionRange(10, 10)")
    box.press("Control+ArrowUp")
    expect(box).to_have_value(f"a fox <lora:{LORA}:1.05>")
    # Embedding names complete as words; Enter accepts (and inserts no newline).
    box.press("End")
    box.press_sequentially(", grum")
    expect(popup).to_contain_text(EMBEDDING)
    box.press("Enter")
    expect(box).to_have_value(f"a fox <lora:{LORA}:1.05>, {EMBEDDING}")
    expect(popup).to_have_count(0)


def test_an_image_pasted_with_ctrl_v_lands_in_img2img(page, tmp_path):
    page.get_by_role("tab", name="img2img").click()
    expect(page.locator("#img2img_image input[type=file]")).to_be_attached()
    Image.new("RGB", (48, 32), (30, 160, 220)).save(tmp_path / "clip.png")
    data = list((tmp_path / "clip.png").read_bytes())
    # What the browser hands the page for Ctrl+V of an image: a paste event whose clipboardData holds a file.
    paste = """([selector, bytes]) => {
        const file = new File([new Uint8Array(bytes)], 'clip.png', {type: 'image/png'});
        const data = new DataTransfer();
        data.items.add(file);
        document.querySelector(selector).dispatchEvent(
            new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
    }"""
    # Into a prompt box it is not taken as the init image.
    page.evaluate(paste, ["#img2img_prompt textarea", data])
    expect(page.locator("#img2img_image input[type=file]")).to_be_attached()
    expect(page.locator("#img2img_image img")).to_have_count(0)
    # Anywhere else on the tab while the image box is empty: it lands there.
    page.evaluate(paste, ["#tab_img2img", data])
    image = page.locator("#img2img_image img")
    expect(image).to_be_visible()
    size = image.evaluate("img => new Promise(r => img.complete ? r([img.naturalWidth, img.naturalHeight]) :"
                          " img.onload = () => r([img.naturalWidth, img.naturalHeight]))")
    assert size == [48, 32]
    screenshot(page, "prompts-pasted-into-img2img.png")


def test_ctrl_v_from_the_real_clipboard_lands_in_img2img(page, app_server: RunningApp, tmp_path):
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=app_server.url)
    page.get_by_role("tab", name="img2img").click()
    expect(page.locator("#img2img_image input[type=file]")).to_be_attached()
    Image.new("RGB", (40, 24), (220, 120, 30)).save(tmp_path / "copied.png")
    page.evaluate("""async bytes => {
        const blob = new Blob([new Uint8Array(bytes)], {type: 'image/png'});
        await navigator.clipboard.write([new ClipboardItem({'image/png': blob})]);
    }""", list((tmp_path / "copied.png").read_bytes()))
    page.locator("#img2img_prompt textarea").click()
    page.keyboard.press("Control+V")  # in a prompt box: not the init image
    expect(page.locator("#img2img_image img")).to_have_count(0)
    page.locator("#img2img_mode").get_by_text("Mode").click()  # focus out of the text boxes, still on the tab
    page.keyboard.press("Control+V")
    image = page.locator("#img2img_image img")
    expect(image).to_be_visible()
    size = image.evaluate("img => new Promise(r => img.complete ? r([img.naturalWidth, img.naturalHeight]) :"
                          " img.onload = () => r([img.naturalWidth, img.naturalHeight]))")
    assert size == [40, 24]
    screenshot(page, "prompts-ctrl-v-real-clipboard.png")
