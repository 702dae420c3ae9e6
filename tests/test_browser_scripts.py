"""The Scripts area in a real browser: the app starts with a small extension in <data dir>/extensions (a script
with a few fields and an always-on panel); choose the script in txt2img, set a field, Generate, and see the grid
and the images in the gallery and the script's infotext."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from tests.browser_support import (  # noqa: F401  (_report_failures: screenshots + app log on failure)
    RunningApp, _report_failures, browser, chromium_binary, expect, launch_app, page, screenshot, set_seed,
    set_slider)
from tests.conftest import install

pytestmark = pytest.mark.browser
GENERATE_TIMEOUT = 120_000

MANIFEST = """\
name = "seedpair"
version = "0.1.0"
api = ">=1.0,<2"
description = "Two runs side by side (a browser test's extension)"
"""

MAIN = '''\
from typing import Literal

from PIL import Image
from pydantic import BaseModel, Field

from webui.extensions.api import Params, Script, ScriptResult, with_infotext_fields


class Pair(BaseModel):
    step: int = Field(1, ge=1, le=10, title="Seed step", description="added to the seed for the second image")
    label: str = Field("pair", title="Label")
    layout: Literal["side by side", "stacked"] = Field("side by side", title="Layout")


class Frame(BaseModel):
    frame: bool = Field(False, title="Draw a frame")


def run(job):
    seeds = [job.request.seed, job.request.seed + job.values.step]
    images, infotexts = [], []
    for k, seed in enumerate(seeds):
        job.context.progress(f"Image {k + 1} of 2", k, 2)
        result = job.context.generate(job.request.model_copy(update={"seed": seed, "n_iter": 1, "batch_size": 1}))
        images += result.images
        infotexts += [with_infotext_fields(t, {"Script": "Seed pair", "Pair label": job.values.label})
                      for t in result.infotexts]
    w, h = images[0].size
    across = job.values.layout == "side by side"
    grid = Image.new("RGB", (2 * w, h) if across else (w, 2 * h), "white")
    for i, image in enumerate(images):
        grid.paste(image, (i * w, 0) if across else (0, i * h))
    return ScriptResult(images=images, infotexts=infotexts, seeds=seeds, grid=grid, grid_infotext=infotexts[0])


def setup(ext):
    ext.add_script(Script("Seed pair", run, params=Pair, a1111_args=("step", "label", "layout")))
    ext.add_params(Params(Frame, title="Seed pair frame"))
'''


@pytest.fixture(scope="module")
def app_server(tmp_path_factory, model_files, chromium_binary) -> Iterator[RunningApp]:
    """The real app over a data dir holding the tiny checkpoint and the extension above."""
    root = tmp_path_factory.mktemp("browser-scripts")
    data_dir = root / "data"
    install(model_files["single"], data_dir)
    folder = data_dir / "extensions" / "seedpair"
    folder.mkdir(parents=True)
    (folder / "extension.toml").write_text(MANIFEST)
    (folder / "main.py").write_text(textwrap.dedent(MAIN))
    with launch_app(data_dir, root / "app.log") as app:
        yield app


def choose(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input")
    box.click()
    page.get_by_role("option", name=value, exact=True).click()
    expect(box).to_have_value(value)


def test_choose_a_script_set_a_field_generate_and_see_grid_images_and_infotext(page, app_server: RunningApp):
    # The panel is hidden until the script is chosen.
    expect(page.locator("#txt2img_script_seed_pair")).to_be_hidden()
    expect(page.locator("#txt2img_ext_seedpair")).to_be_visible()  # the always-on panel (an accordion)
    choose(page, "txt2img_script", "Seed pair")
    expect(page.locator("#txt2img_script_seed_pair")).to_be_visible()
    set_slider(page, "Width", 64)
    set_slider(page, "Height", 64)
    set_slider(page, "Sampling steps", 2)
    set_slider(page, "Seed step", 7)
    label = page.locator("#txt2img_script_seed_pair_label textarea")
    label.fill("browser pair")
    label.blur()
    page.locator("#txt2img_prompt textarea").fill("a small green frog")
    set_seed(page, 100)
    screenshot(page, "scripts-chosen.png")
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_progress")).to_contain_text("3 image(s)", timeout=GENERATE_TIMEOUT)
    gallery = page.locator("#txt2img_gallery img")
    expect(gallery).to_have_count(3)
    info = page.locator("#txt2img_info textarea")
    expect(info).to_have_value(re.compile(r"Seed: 100\b.*Script: Seed pair, Pair label: browser pair"))
    screenshot(page, "scripts-generated.png")
    # On disk: the grid (two 64x64 images side by side) and each image, with the script's infotext.
    grids = list(Path(app_server.data_dir, "outputs", "txt2img-grids").rglob("*.png"))
    images = list(Path(app_server.data_dir, "outputs", "txt2img-images").rglob("*.png"))
    assert len(grids) == 1 and len(images) == 2
    from PIL import Image
    assert Image.open(grids[0]).size == (128, 64)
    assert any(re.search(r"Seed: 107\b", Image.open(p).info.get("parameters", "")) for p in images)


def test_back_to_none_hides_the_panel_and_runs_a_plain_job(page):
    choose(page, "txt2img_script", "Seed pair")
    expect(page.locator("#txt2img_script_seed_pair")).to_be_visible()
    choose(page, "txt2img_script", "None")
    expect(page.locator("#txt2img_script_seed_pair")).to_be_hidden()
    set_slider(page, "Width", 64)
    set_slider(page, "Height", 64)
    set_slider(page, "Sampling steps", 2)
    page.locator("#txt2img_prompt textarea").fill("a plain frog")
    set_seed(page, 55)
    page.locator("#txt2img_generate").click()
    expect(page.locator("#txt2img_progress")).to_contain_text("1 image(s)", timeout=GENERATE_TIMEOUT)
    expect(page.locator("#txt2img_gallery img")).to_have_count(1)
    info = page.locator("#txt2img_info textarea")
    expect(info).to_have_value(re.compile(r"Seed: 55\b"))
    assert "Script:" not in info.input_value()
    screenshot(page, "scripts-none.png")
