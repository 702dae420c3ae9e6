"""The Scripts area in-process: the Script dropdown and panels built from the extension's models, Generate with a
script through the Gradio event (one job, grid first), red errors naming the field, always-on values in the
request."""

from __future__ import annotations

import json
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from tests import gradio_events
from tests.script_fixtures import Recorder, make_extension, ui_extension, services_with
from webui.extensions.state import ExtensionSettings
from webui.ui.extension_tabs import apply_settings
from webui.server import create_app
from webui.services.container import Services


@pytest.fixture(scope="module")
def app(tmp_path_factory, model_files, tiny_loader) -> Iterator[tuple[TestClient, Services, Recorder]]:
    data_dir = tmp_path_factory.mktemp("scripts-ui")
    recorder = Recorder()
    services = services_with(data_dir, model_files, tiny_loader, make_extension(recorder), ui_extension())
    try:
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
            yield client, services, recorder
    finally:
        services.queue.shutdown()


def _by_elem(config: dict) -> dict[str, dict]:
    return {c["props"]["elem_id"]: c for c in config["components"] if c.get("props", {}).get("elem_id")}


def _inputs(config: dict, values: dict[str, object]) -> list:
    """The txt2img event's inputs at their defaults, with ``values`` by elem_id (or ``label:<label>``)."""
    ids = {c["id"]: c for c in config["components"]}
    inputs = gradio_events.event(config, "txt2img")["inputs"]

    def value(component: dict):
        props = component.get("props", {})
        default = props.get("value")
        if default is None and component.get("type") == "textbox":
            default = ""  # what an empty box sends from the browser
        # By elem_id, or by label for the table's widgets that have none (width, height, steps).
        return values.get(props.get("elem_id"), values.get(f"label:{props.get('label')}", default))

    return [value(ids[i]) for i in inputs]


def test_the_dropdown_and_panels_come_from_the_extension(app):
    client, _, _ = app
    config = client.get("/config").json()
    comps = _by_elem(config)
    dropdown = comps["txt2img_script"]["props"]
    builtin_t2i = ["Prompt matrix", "Prompts from file or textbox", "X/Y/Z plot"]  # webui/builtin_extensions
    builtin_i2i = ["Loopback", "Prompt matrix", "Prompts from file or textbox", "SD upscale", "X/Y/Z plot"]
    assert [c[0] if isinstance(c, list) else c for c in dropdown["choices"]] == [
        "None", *builtin_t2i, "Two seeds", "Crashing script", "Plain red", "Custom UI", "Broken panel"]
    assert [c[0] if isinstance(c, list) else c for c in comps["img2img_script"]["props"]["choices"]] == [
        "None", *builtin_i2i, "Two seeds", "Crashing script", "Upscaled"]
    # The script's panel is hidden until chosen; its widgets follow the model's fields.
    assert comps["txt2img_script_two_seeds"]["props"]["visible"] is False
    step = comps["txt2img_script_two_seeds_step"]
    assert step["type"] == "slider" and step["props"]["minimum"] == 1 and step["props"]["maximum"] == 100
    assert step["props"]["label"] == "Seed step" and step["props"]["info"] == "added to the seed for the second run"
    assert comps["txt2img_script_two_seeds_mode"]["type"] == "dropdown"
    assert comps["txt2img_script_two_seeds_fail"]["type"] == "checkbox"
    assert comps["txt2img_script_two_seeds_label"]["type"] == "textbox"
    # The always-on panel: an accordion titled with Params.title, its fields inside.
    assert comps["txt2img_ext_testext"]["props"]["label"] == "Marker panel"
    assert comps["txt2img_ext_testext_strength"]["type"] == "slider"
    assert comps["img2img_ext_testext_note"]["type"] == "textbox"


def test_generate_with_a_script_runs_one_script_job_and_shows_the_grid_first(app):
    client, services, recorder = app
    config = client.get("/config").json()
    data = _inputs(config, {"txt2img_prompt": "a fox", "label:Width": 64, "label:Height": 64,
                            "label:Sampling steps": 2, "txt2img_seed": 21, "txt2img_script": "Two seeds",
                            "txt2img_script_two_seeds_step": 5, "txt2img_script_two_seeds_label": "from the UI",
                            "txt2img_ext_testext_strength": 0.75})
    stream = gradio_events.call(client, "txt2img", data)
    assert "process_completed" in stream and "studio-error" not in stream, stream[-2000:]
    assert "3 image(s)" in stream
    job = [j for j in services.queue.jobs() if j.kind.endswith("-script")][-1]
    assert job.kind == "txt2img-script"
    assert job.request.script_args["step"] == 5 and job.request.script_args["label"] == "from the UI"
    # Always-on values travel in the request, all of them, with the model's values.
    assert job.request.request.extensions == {"testext": {"on": False, "strength": 0.75, "note": ""}}
    result = job.result
    assert result.images[0].size == (128, 64) and result.seeds[1:] == [21, 26]
    assert "Pair label: from the UI" in result.infotexts[1]


@pytest.mark.parametrize("values, message", [
    # Past what the widget itself allows (Gradio checks slider bounds and dropdown choices before us).
    ({"txt2img_script": "Two seeds", "txt2img_script_two_seeds_label": "x" * 30}, "Two seeds: label: "),
    ({"txt2img_script": "None", "txt2img_ext_testext_note": "much too long"}, "Marker panel: note: "),
    ({"txt2img_script": "Crashing script"}, "Script &#x27;Crashing script&#x27; failed: KeyError"),
])
def test_errors_are_red_and_name_the_field(app, values, message):
    client, _, _ = app
    config = client.get("/config").json()
    base = {"txt2img_prompt": "a fox", "label:Width": 64, "label:Height": 64, "label:Sampling steps": 2}
    stream = gradio_events.call(client, "txt2img", _inputs(config, {**base, **values}))
    assert "studio-error" in stream, stream[-2000:]
    assert message in json.dumps(json.loads(stream.splitlines()[-1].removeprefix("data: ")), ensure_ascii=False) \
        or message in stream


def test_without_a_script_the_usual_path_runs_with_the_extension_values(app):
    client, services, _ = app
    config = client.get("/config").json()
    data = _inputs(config, {"txt2img_prompt": "a fox", "label:Width": 64, "label:Height": 64,
                            "label:Sampling steps": 2, "txt2img_script": "None", "txt2img_ext_testext_on": True})
    stream = gradio_events.call(client, "txt2img", data)
    assert "1 image(s)" in stream, stream[-2000:]
    job = [j for j in services.queue.jobs() if j.kind in ("txt2img", "txt2img-script")][-1]
    assert job.kind == "txt2img"
    assert job.request.extensions == {"testext": {"on": True, "strength": 0.5, "note": ""}}


def test_extension_tabs_are_top_level_and_a_failing_one_shows_its_error(app):
    client, _, _ = app
    config = client.get("/config").json()
    comps = _by_elem(config)
    assert comps["tab_ext_uiext"]["props"]["label"] == "UI ext"
    assert "uiext_hello" in comps
    broken = comps["tab_ext_uiext_2"]
    assert broken["props"]["label"] == "Broken"
    text = json.dumps(config)
    assert "this tab could not be built: RuntimeError: no widgets today" in text
    assert "tab_settings" in comps and "tab_txt2img" in comps  # the rest of the page is there


def test_extension_settings_are_checked_and_saved_all_or_none(app):
    client, services, _ = app
    config = client.get("/config").json()
    comps = _by_elem(config)
    assert comps["extension_setting_uiext_count"]["type"] == "slider"
    assert comps["extension_setting_uiext_style"]["type"] == "dropdown"
    assert comps["extension_setting_uiext_loud"]["type"] == "checkbox"
    store = ExtensionSettings(services.settings.data_dir / "extension-settings.json")
    entries = services.extensions.settings()
    html = apply_settings(store, entries, ["hello", 42, "gaudy", False])
    assert "uiext: How many: must be at most 10" in html and "uiext: Style: must be one of plain, fancy" in html
    assert "Nothing was saved" in html and store.values("uiext") == {}
    # Through the Gradio event, as the button sends it (sliders send floats).
    data = gradio_events.inputs_by_label(config, "studio_extension_settings_apply",
                                         {"Greeting": "hello", "How many": 4.0, "Loud": True})
    stream = gradio_events.call(client, "studio_extension_settings_apply", data)
    assert "Saved 3 extension setting(s)" in stream, stream[-1500:]
    assert store.values("uiext") == {"greeting": "hello", "count": 4, "loud": True}
    saved = json.loads((services.settings.data_dir / "extension-settings.json").read_text())
    assert saved["uiext"]["count"] == 4


def test_png_info_send_to_fills_the_always_on_fields_the_infotext_records(app):
    client, services, _ = app
    config = client.get("/config").json()
    comps = _by_elem(config)
    send = comps["pnginfo_send_txt2img"]["id"]
    filled = {out for dep in config["dependencies"] if any(t[0] == send for t in dep["targets"])
              for out in dep["outputs"]}
    assert {comps["txt2img_ext_testext_strength"]["id"], comps["txt2img_ext_testext_note"]["id"]} <= filled
    assert comps["txt2img_ext_testext_on"]["id"] not in filled  # not declared in Params.infotext

    import gradio as gr

    from webui.ui import scripts_area
    with gr.Blocks():
        area = scripts_area.build(services, "txt2img")
    text = "a fox\nSteps: 2, Seed: 1, Size: 64x64, Marker strength: 0.25, Marker note: hi there"
    strength, note = area.paste_updates(text)
    assert strength["value"] == 0.25 and note["value"] == "hi there"
    # A value that does not read as the field's type leaves the widget alone; so does a missing key.
    strength, note = area.paste_updates("a fox\nSteps: 2, Seed: 1, Marker strength: lots")
    assert "value" not in strength and "value" not in note


def test_a_script_with_its_own_widgets_and_one_whose_panel_code_fails(app):
    client, services, _ = app
    config = client.get("/config").json()
    comps = _by_elem(config)
    assert comps["uiext_custom_step"]["type"] == "number"
    assert "txt2img_script_custom_ui_step" not in comps  # the builder's widgets replace the model's
    assert "This panel could not be built: ValueError: panel code is broken" in json.dumps(config)
    data = _inputs(config, {"txt2img_prompt": "a fox", "label:Width": 64, "label:Height": 64,
                            "label:Sampling steps": 2, "txt2img_seed": 30, "txt2img_script": "Custom UI",
                            "uiext_custom_step": 4})
    stream = gradio_events.call(client, "txt2img", data)
    assert "1 image(s)" in stream, stream[-2000:]
    job = [j for j in services.queue.jobs() if j.kind == "txt2img-script"][-1]
    assert job.request.script_args["step"] == 4 and job.result.seeds == [34]
