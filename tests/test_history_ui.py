"""The History tab's handlers, called as Gradio calls them (built Blocks, no browser): listing, details, Reopen."""

from __future__ import annotations

import time

import gradio as gr
import pytest
from PIL import Image

from webui.types import Img2ImgRequest, Txt2ImgRequest
from webui.ui.app import build_ui
from webui.parameters import BY_NAME
from tests.job_helpers import submit_work

SMALL = dict(width=64, height=64, steps=3)


def _handler(demo: gr.Blocks, name: str):
    matches = [fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == name]
    assert matches, f"no handler {name}"
    return matches[0]


def _by_elem(demo: gr.Blocks, elem_id: str):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def _value(update):
    return update.get("value") if isinstance(update, dict) else getattr(update, "value", update)


@pytest.fixture
def history(services):
    """Three jobs in the history: a real txt2img, an img2img with init image and mask (recorded, not run), and a
    failed one."""
    txt = services.generation.submit_txt2img(Txt2ImgRequest(
        prompt="a <b>bold</b> fox", negative_prompt="blur", seed=-1, sampler_name="Euler a", cfg_scale=6.0,
        clip_skip=2, **SMALL))
    txt.wait(120)
    init = Image.new("RGB", (64, 64), (10, 120, 200))
    mask = Image.new("L", (64, 64), 255)
    i2i = Img2ImgRequest(prompt="winter", init_images=[init], mask=mask, denoising_strength=0.35, resize_mode=2,
                         inpainting_fill=3, inpaint_full_res=True, inpainting_mask_invert=True, seed=5, **SMALL)
    services.jobs_store.submitted("img2imgjob", "img2img", i2i, 0, created_at=time.time())
    services.jobs_store.finished("img2imgjob", "done", time.time())
    failing = submit_work(services.queue, "test-fail", lambda ctx: 1 / 0)
    failing.wait_done(30)
    return {"txt2img": txt, "img2img": "img2imgjob", "failed": failing}


def test_history_lists_jobs_newest_first_with_failed_ones(services, history):
    demo = build_ui(services)
    assert _handler(demo, "first_page").api_visibility == "private"
    page, gallery, rows, ids, count = _handler(demo, "first_page").fn()
    assert ids == [history["failed"].id, "img2imgjob", history["txt2img"].id]
    assert [row[2] for row in rows] == ["failed", "done", "done"]
    assert rows[2][3] == "a <b>bold</b> fox" and "3 steps · Euler a · CFG 6.0 · 64x64 · seed" in rows[2][4]
    assert len(gallery) == 3 and gallery[0][1].startswith("failed")
    assert gallery[2][0].size == (64, 64)  # the real thumbnail; the others get a placeholder
    assert "3 most recent" in count


def test_details_escape_and_show_error_and_files(services, history):
    demo = build_ui(services)
    ids = _handler(demo, "first_page").fn()[3]
    pick = _handler(demo, "pick_image").fn
    job_id, details, reopen = pick(ids, gr.SelectData(None, {"index": 2, "value": None}))
    assert job_id == history["txt2img"].id and reopen["interactive"] is True
    assert "a &lt;b&gt;bold&lt;/b&gt; fox" in details and "<b>bold" not in details
    assert "Seed: " in details and ".png" in details
    _, failed_details, failed_reopen = pick(ids, gr.SelectData(None, {"index": 0, "value": None}))
    assert "studio-error" in failed_details and "division by zero" in failed_details
    assert failed_reopen["interactive"] is False


def test_reopen_restores_every_txt2img_setting_and_switches_tab(services, history):
    demo = build_ui(services)
    reopen = _handler(demo, "reopen_job")
    assert reopen.api_visibility == "private"
    outputs = reopen.fn(history["txt2img"].id)
    updates = dict(zip(reopen.outputs, outputs))
    first_by_label: dict = {}  # txt2img's widgets come first; img2img's share their labels
    for component, update in zip(reopen.outputs, outputs):
        first_by_label.setdefault(getattr(component, "label", None), _value(update))
    request = history["txt2img"].request
    expected = {"Prompt": request.prompt, "Negative prompt": request.negative_prompt,
                "Sampling method": request.sampler_name, "Schedule type": request.scheduler,
                "Sampling steps": request.steps, "CFG scale": request.cfg_scale, "Width": request.width,
                "Height": request.height, "Seed (-1 = random)": history["txt2img"].result.seeds[0],
                "Batch count": request.n_iter, "Batch size": request.batch_size, "Clip skip": request.clip_skip}
    assert {label: first_by_label[label] for label in expected} == expected
    assert expected["Clip skip"] == 2 and expected["Seed (-1 = random)"] != -1  # the seed used, not -1
    assert _value(updates[_by_elem(demo, "img2img_prompt")]) is None  # the other tab is left alone
    tabs_update = next(u for c, u in updates.items() if isinstance(c, gr.Tabs))
    assert tabs_update.selected == "txt2img"
    checkpoint = _value(updates[_by_elem(demo, "checkpoint")])
    assert checkpoint == services.registry.find(history["txt2img"].result.model_hash).title


def test_reopen_img2img_restores_its_settings_image_and_mask(services, history):
    demo = build_ui(services)
    reopen = _handler(demo, "reopen_job")
    updates = dict(zip(reopen.outputs, reopen.fn("img2imgjob")))
    assert _value(updates[_by_elem(demo, "img2img_prompt")]) == "winter"
    assert _value(updates[_by_elem(demo, "img2img_denoising")]) == 0.35
    assert _value(updates[_by_elem(demo, "img2img_seed")]) == 5
    assert _value(updates[_by_elem(demo, "img2img_mode")]) == "Inpaint"
    editor = _value(updates[_by_elem(demo, "img2img_editor")])
    assert editor["background"].getpixel((1, 1)) == (10, 120, 200)
    assert _value(updates[_by_elem(demo, "img2img_mask")]).getpixel((1, 1)) == 255
    labels = {c.label: _value(u) for c, u in updates.items() if getattr(c, "label", None)}
    assert labels["Resize mode"] == "Resize and fill" and labels["Masked content"] == "latent nothing"
    assert labels["Inpaint area"] == "Only masked" and labels["Mask mode"] == "Inpaint not masked"
    assert next(u for c, u in updates.items() if isinstance(c, gr.Tabs)).selected == "img2img"


def test_reopen_shows_request_values_as_the_img2img_widgets_show_them():
    request = {"resize_mode": 1, "inpainting_fill": 0, "inpaint_full_res": False, "inpainting_mask_invert": False,
               "steps": 7}
    shown = {name: BY_NAME[name].widget.to_ui(value) for name, value in request.items()}
    assert shown == {"resize_mode": "Crop and resize", "inpainting_fill": "fill",
                     "inpaint_full_res": "Whole picture", "inpainting_mask_invert": "Inpaint masked", "steps": 7}
    assert {name: BY_NAME[name].from_ui(value) for name, value in shown.items()} == request  # what submit reads
