"""The Gradio Blocks build without launching, and the UI's small pure helpers behave."""

from __future__ import annotations

import gradio as gr

from tests.conftest import make_settings
from webui.services.container import build_services
from webui.parameters import IMG2IMG, TXT2IMG, for_task
from webui.types import JobState, Progress
from webui.ui.app import build_ui
from webui.ui.generation_form import error_html, progress_html


def _labels(demo: gr.Blocks) -> set[str]:
    return {getattr(block, "label", None) for block in demo.blocks.values()} - {None}


def test_ui_builds_with_tabs_and_checkpoint_list(services):
    demo = build_ui(services)
    config = demo.get_config_file()
    tab_names = {c["props"].get("label") for c in config["components"] if c["type"] == "tabitem"}
    assert {"txt2img", "PNG Info"} <= tab_names
    dropdown = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "checkpoint")
    assert [choice[0] for choice in dropdown.choices] == [i.title for i in services.registry.list()]
    assert dropdown.value == services.manager.selected.title
    assert {"Prompt", "Negative prompt", "Sampling method", "Schedule type", "CFG scale", "Clip skip"} \
        <= _labels(demo)
    # The tab handlers are private events (the REST API is the public one): none is a documented endpoint.
    handlers = {"txt2img", "img2img", "style_transfer", "png_info"}
    assert {dep.api_name: dep.api_visibility for dep in demo.fns.values() if dep.api_name in handlers} \
        == dict.fromkeys(handlers, "private")
    assert not handlers & {name.strip("/") for name in demo.get_api_info()["named_endpoints"]}


def test_first_run_without_models_shows_where_to_put_one(data_dir):
    services = build_services(make_settings(data_dir))
    try:
        demo = build_ui(services)
        notice = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "no_model_notice")
        assert "No checkpoint found" in notice.value and str(services.registry.directory) in notice.value
    finally:
        services.queue.shutdown()


def test_progress_and_error_html_are_escaped_and_informative():
    html = progress_html(Progress(job_id="j", state=JobState.RUNNING, step=5, steps=20, image_index=1,
                                  image_count=2, eta_seconds=12.4))
    assert "Step 5/20" in html and "batch 2/2" in html and "ETA 12s" in html and "value='62'" in html
    assert progress_html(Progress(job_id="j", state=JobState.QUEUED)).count("Waiting in queue") == 1
    assert "Waiting in queue (position 3)" in progress_html(Progress(job_id="j", state=JobState.QUEUED), 3)
    assert "Paused" in progress_html(Progress(job_id="j", state=JobState.PAUSED))
    assert "&lt;script&gt;" in error_html("<script>alert(1)</script>")


def test_download_button_says_in_one_line_when_unavailable(data_dir, tmp_path):
    import socket

    from webui.services.downloads import DefaultModelDownloader, DownloadSpec
    from webui.ui.app import _download

    services = build_services(make_settings(data_dir))
    try:
        assert list(_download(services)) == ["Download disabled by --no-download."]
        with socket.socket() as s:  # a port nobody listens on stands in for "no network"
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        target = tmp_path / "downloads"
        target.mkdir()
        offline = DefaultModelDownloader(target, DownloadSpec(f"http://127.0.0.1:{port}/m.safetensors",
                                                                "m.safetensors", "0" * 64, 1), timeout=1)
        messages = list(_download(services.__class__(**{**vars(services), "downloads": offline})))
        assert len(messages) == 1 and "unavailable" in messages[0] and "\n" not in messages[0]
        assert not list(target.iterdir())
    finally:
        services.queue.shutdown()


INFOTEXT = ("a fox\nNegative prompt: blurry\nSteps: 13, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, "
            "Seed: 99, Size: 320x256, Model: tiny, Denoising strength: 0.4, Clip skip: 3, Mask blur: 9, "
            "Masked content: latent nothing, Inpaint area: Only masked, Masked area padding: 48, "
            "Mask mode: Inpaint not masked, Resize mode: Crop and resize")
EXPECTED = {"Prompt": "a fox", "Negative prompt": "blurry", "Sampling steps": 13, "Sampling method": "DPM++ 2M",
            "Schedule type": "Karras", "CFG scale": 6.5, "Seed (-1 = random)": 99, "Width": 320, "Height": 256,
            "Clip skip": 3}
EXPECTED_IMG2IMG = {"Denoising strength": 0.4, "Mask blur": 9, "Masked content": "latent nothing",
                    "Inpaint area": "Only masked", "Only masked padding, pixels": 48, "Mask mode": "Inpaint not masked",
                    "Resize mode": "Crop and resize"}


def _send_handlers(demo: gr.Blocks) -> dict[str, object]:
    """PNG Info's "Send to" handlers by the tab they select."""
    handlers = {}
    for dep in demo.fns.values():
        if getattr(dep.fn, "__name__", None) == "send":
            handlers[dep.fn.__defaults__[0]] = dep  # send(text, tab_id, widgets)
    return handlers


def test_png_info_sends_every_field_the_infotext_has_to_txt2img_and_img2img(services):
    demo = build_ui(services)
    handlers = _send_handlers(demo)
    assert set(handlers) == {"txt2img", "img2img"}
    # txt2img's denoising strength is its hires pass's: an img2img text's value lands there too, as in A1111.
    txt2img = {**EXPECTED, "Denoising strength": EXPECTED_IMG2IMG["Denoising strength"]}
    for tab, expected in (("txt2img", txt2img), ("img2img", {**EXPECTED, **EXPECTED_IMG2IMG})):
        dep = handlers[tab]
        *updates, selected, _notice, _switch, _status = dep.fn(INFOTEXT)
        assert selected.selected == tab
        shown = {c.label: u["value"] for c, u in zip(dep.outputs, updates) if "value" in u}
        assert shown == {**expected, "Styles": []}, tab  # no saved style is in the prompt: none selected
        # Every widget of the tab is a target, one per request field the table gives a widget, and the styles.
        named = {p.widget.label for p in for_task(tab) if p.widget is not None}
        assert {c.label for c in dep.outputs[:-4]} == named | {"Styles"}
    assert set(EXPECTED_IMG2IMG) & {p.widget.label for p in for_task(TXT2IMG) if p.widget} == {"Denoising strength"}
    assert set(EXPECTED_IMG2IMG) <= {p.widget.label for p in for_task(IMG2IMG) if p.widget}
