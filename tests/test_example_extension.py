"""The example extension of docs/extensions.md, installed as a user would (copied into <data dir>/extensions/) and
loaded by the app: it must keep working as the docs say."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from tests.conftest import install, make_settings
from webui.errors import InvalidRequest
from webui.extensions.api import API_VERSION, StepState, infotext_fields
from webui.extensions.host import LOADED
from webui.extensions.manifest import read_manifest
from webui.services.container import build_services
from webui.types import Txt2ImgRequest

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "example-extension"


@pytest.fixture(scope="module")
def app_services(tmp_path_factory, model_files, tiny_loader):
    data_dir = tmp_path_factory.mktemp("example-ext") / "data"
    install(model_files["single"], data_dir)
    shutil.copytree(EXAMPLE, data_dir / "extensions" / "example")
    services = build_services(make_settings(data_dir), load=tiny_loader)
    yield services
    services.queue.shutdown()


def test_the_docs_example_declares_this_api():
    manifest = read_manifest(EXAMPLE)
    assert manifest.name == "example" and manifest.entry == "main.py" and manifest.supports(API_VERSION)
    # the docs promise the example imports nothing of ours but the public API
    source = (EXAMPLE / "main.py").read_text()
    imports = [line for line in source.splitlines() if line.strip().startswith(("import webui", "from webui"))]
    assert imports and all(line.strip().startswith("from webui.extensions.api import") for line in imports)


def test_it_loads_with_everything_it_registers(app_services):
    host = app_services.extensions
    record = host.record("example")
    assert record is not None and record.status == LOADED, record and record.traceback
    assert record.load_seconds > 0 and not record.builtin and record.manifest.version == "0.1.0"
    assert [p.owner for p in host.panels("txt2img")] == ["example"]
    assert [p.owner for p in host.panels("img2img")] == ["example"]
    assert host.find_alwayson("Example").owner == "example"
    assert [(name, s.key) for name, s in host.settings()] == [("example", "greeting")]
    assert [(name, title) for name, title, _ in host.tabs()] == [("example", "Example")]
    ext = record.extension
    assert len(ext.hooks["step"]) == 1 and len(ext.hooks["image"]) == 1 and len(ext.hooks["app_started"]) == 1


def test_its_values_are_validated_like_any_field(app_services):
    host = app_services.extensions
    values = host.validate_values({"example": {"enabled": True, "fade": 0.25}}, "txt2img")
    assert values["example"].enabled is True and values["example"].fade == 0.25
    with pytest.raises(InvalidRequest) as err:
        host.validate_values({"example": {"enabled": True, "fade": 2}}, "txt2img")
    assert err.value.field == "extensions.example.fade"


def test_its_tab_and_setting_build(app_services):
    import gradio as gr

    (_, _, build), = app_services.extensions.tabs()
    with gr.Blocks() as blocks:
        build()
    markdown = [c for c in blocks.blocks.values() if isinstance(c, gr.Markdown)]
    assert markdown and markdown[0].value == "Hello from the example extension"


def test_the_step_hook_fades_the_last_step(app_services):
    """Called as the dispatcher calls it: only when enabled, only the last step, composing on what it is given."""
    ext = app_services.extensions.record("example").extension
    hook = ext.hooks["step"][0]
    model = app_services.extensions.panels("txt2img")[0].params.model
    latents = torch.ones(1, 4, 8, 8)
    state = StepState(kind="txt2img", step=1, steps=2, latents=latents, guidance_scale=7.0,
                      values=model(enabled=True, fade=0.5))
    hook(state)
    assert torch.equal(state.latents, latents)  # not the last step
    state.step = 2
    hook(state)
    assert torch.allclose(state.latents, torch.full_like(latents, 0.5))
    off = StepState(kind="txt2img", step=2, steps=2, latents=latents, guidance_scale=7.0, values=None)
    hook(off)
    assert off.latents is latents


def test_the_hooks_run_during_a_tiny_txt2img(app_services):
    request = Txt2ImgRequest(prompt="a fox", width=64, height=64, steps=2, seed=3, save_images=False,
                             extensions={"example": {"enabled": True}})
    first = infotext_fields(app_services.generation.txt2img(request, timeout=120).infotexts[0])
    second = infotext_fields(app_services.generation.txt2img(request, timeout=120).infotexts[0])
    # The count is the extension's since it loaded: each 2-step job adds 2.
    assert int(second["Example steps seen"]) - int(first["Example steps seen"]) == 2
    assert second["Example"] == "True"


def test_its_route_answers_through_the_app(app_services):
    from webui.server import create_app

    with TestClient(create_app(app_services), base_url="http://127.0.0.1:7860") as client:
        response = client.get("/ext/example/stats")
    assert response.status_code == 200
    assert set(response.json()) == {"steps_seen", "images_seen"}
