"""The Settings tab in-process: widgets from the options table, Apply all-or-none with every problem named, values
shown fresh on each page load (webui/ui/settings.py)."""

from __future__ import annotations

import json
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from tests import gradio_events
from tests.conftest import make_settings
from webui.server import create_app
from webui.services.container import Services, build_services
from webui.services.options import DEFAULTS, OPTIONS
from webui.ui.settings import HEADING, apply_settings, settings_rows


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[tuple[TestClient, Services]]:
    services = build_services(make_settings(tmp_path_factory.mktemp("settings-tab")))
    try:
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
            yield client, services
    finally:
        services.queue.shutdown()


@pytest.fixture(autouse=True)
def reset(app):
    yield
    app[1].options.update(dict(DEFAULTS), allow_paths=True)


def _components(client: TestClient) -> dict[str, dict]:
    config = client.get("/config").json()
    return {c["props"].get("elem_id"): c["props"] for c in config["components"] if c.get("props", {}).get("elem_id")}


def test_the_tab_is_ours_and_has_a_widget_per_labelled_option(app):
    client, _ = app
    config = client.get("/config").json()
    text = json.dumps(config)
    assert HEADING in text and "tab_settings" in text
    components = _components(client)
    shown = [key for rows in settings_rows().values() for key, _ in rows]
    assert {"samples_format", "samples_filename_pattern", "outdir_txt2img_samples", "save_txt", "grid_save",
            "CLIP_stop_at_last_layers", "randn_source", "eta_ancestral"} <= set(shown)
    for key in shown:
        assert f"setting_{key}" in components, key


def test_apply_saves_all_or_none_and_names_every_bad_key(app):
    client, services = app
    keys = ["samples_format", "outdir_txt2img_samples", "jpeg_quality", "samples_filename_pattern"]
    html = apply_settings(services, keys, ["webp", "/etc", 500.0, "[seed]"])
    assert "outdir_txt2img_samples: " in html and "jpeg_quality: " in html and "Nothing was saved" in html
    assert "studio-error" in html and services.options.value("samples_format") == "png"
    html = apply_settings(services, keys, ["webp", "outputs/mine", 90.0, "[seed]-[model_name]"])
    assert "Saved 4 setting(s)" in html
    assert {k: services.options.value(k) for k in keys} == {
        "samples_format": "webp", "outdir_txt2img_samples": "outputs/mine", "jpeg_quality": 90,
        "samples_filename_pattern": "[seed]-[model_name]"}
    stored = json.loads((services.settings.data_dir / "config.json").read_text())
    assert stored["outdir_txt2img_samples"] == "outputs/mine" and stored["jpeg_quality"] == 90
    assert "Nothing changed" in apply_settings(services, keys, ["webp", "outputs/mine", 90, "[seed]-[model_name]"])


def test_apply_through_the_gradio_event_and_fresh_values_on_page_load(app):
    client, services = app
    config = client.get("/config").json()
    data = gradio_events.inputs_by_label(config, "studio_settings_apply", {})
    inputs = gradio_events.event(config, "studio_settings_apply")["inputs"]
    ids = {c["id"]: c["props"].get("elem_id") for c in config["components"]}
    keys = [ids[i].removeprefix("setting_") for i in inputs]
    data[keys.index("save_txt")] = True
    data[keys.index("samples_filename_pattern")] = "[date]-[seed]"
    stream = gradio_events.call(client, "studio_settings_apply", data)
    assert "Saved 2 setting(s)" in stream, stream
    assert services.options.value("save_txt") is True
    # Each widget's value is computed again on every page load (a load event outputs to it), not fixed at
    # start-up; the browser test checks what a reload then shows.
    config = client.get("/config").json()
    loaded = {out for dep in config["dependencies"] if any(t[1] == "load" for t in dep["targets"])
              for out in dep["outputs"]}
    by_elem = {c["props"].get("elem_id"): c["id"] for c in config["components"]}
    assert by_elem["setting_save_txt"] in loaded and by_elem["setting_samples_filename_pattern"] in loaded


def test_every_shown_option_has_a_valid_default_and_a_label(app):
    for rows in settings_rows().values():
        for key, option in rows:
            assert option.label and option.check(key, option.default) == DEFAULTS[key]
    assert all(o.honoured for rows in settings_rows().values() for _, o in rows), \
        "the tab must not offer a setting this server would refuse to change"
    assert set(DEFAULTS) == set(OPTIONS)


def test_memory_profile_chosen_in_settings_is_the_next_start_default(tmp_path):
    from webui.cli import parse_settings

    (tmp_path / "config.json").write_text(json.dumps({"studio_memory_profile": "4gb"}))
    assert parse_settings(["--data-dir", str(tmp_path)]).memory_profile == "4gb"
    assert parse_settings(["--data-dir", str(tmp_path), "--memory-profile", "cpu"]).memory_profile == "cpu"
    (tmp_path / "config.json").write_text(json.dumps({"studio_memory_profile": "lots"}))
    assert parse_settings(["--data-dir", str(tmp_path)]).memory_profile == "auto"
    (tmp_path / "config.json").write_text("{broken")
    assert parse_settings(["--data-dir", str(tmp_path)]).memory_profile == "auto"


def test_memory_profile_apply_says_it_needs_a_restart(app):
    html = apply_settings(app[1], ["studio_memory_profile"], ["8gb"])
    assert "Saved 1 setting(s)" in html and "after a restart" in html


def test_form_defaults_follow_the_settings(app):
    from webui.ui.form_defaults import values

    services = app[1]
    services.options.update({"studio_default_sampler": "Euler a", "studio_default_scheduler": "Karras",
                             "studio_default_steps": 12, "studio_default_cfg_scale": 4.5})
    built = ("DPM++ 2M", "Automatic", 20, 7.0)  # what the page shows before its load event
    sampler, scheduler, steps, cfg = values(services.options, *built)
    assert (sampler, scheduler["value"], steps, cfg) == ("Euler a", "Karras", 12, 4.5)
    # A value typed before the load event ran is kept (no value sent), the others still follow the settings.
    sampler, scheduler, steps, cfg = values(services.options, "DPM++ 2M", "Automatic", 150, 7.0)
    assert steps == {"__type__": "update"} and (sampler, cfg) == ("Euler a", 4.5)
    services.options.update({"studio_default_sampler": "LCM"})  # a sampler without Karras: Automatic
    assert values(services.options, *built)[1]["value"] == "Automatic"
