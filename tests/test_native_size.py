"""Width and height default to the checkpoint's native size (SD 1.x 512, SD 2.x-v 768, SDXL 1024), known without
loading the model: in the API when the body leaves them out, and in the UI while the user has not set a size."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.conftest import install, make_settings
from tests.tiny_models import write_tiny_sd2_single_file, write_tiny_sdxl_single_file
from webui.config import Limits
from webui.models.native_size import native_size
from webui.server import create_app
from webui.services.container import build_services
from webui.ui.size_defaults import follow


@pytest.fixture(scope="module")
def family_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    return {"sdxl": write_tiny_sdxl_single_file(root / "tiny-xl.safetensors"),
            "sd2": write_tiny_sd2_single_file(root / "tiny-sd2.safetensors")}


def test_native_size_is_read_from_the_file_without_loading_it(services, family_files, data_dir):
    registry = services.registry
    for path in family_files.values():
        install(path, data_dir)
    registry.refresh()
    assert native_size(registry.find("tiny-sd15")) == 512
    assert native_size(registry.find("tiny-xl")) == 1024
    sd2 = registry.find("tiny-sd2")
    assert native_size(sd2) == 512  # an epsilon SD 2.x (the 512-base)
    sd2.path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert native_size(sd2) == 768  # 768-v, by A1111's yaml beside the file
    assert services.manager.loaded_titles() == []  # nothing was loaded to find out


def test_a_diffusers_folder_says_its_size_in_its_configs(model_files, tmp_path):
    import json
    import shutil

    from webui.types import CheckpointInfo

    folder = shutil.copytree(model_files["diffusers"], tmp_path / "folder")
    info = CheckpointInfo(path=folder, name="folder", model_name="folder", kind="diffusers", short_hash=None,
                          sha256=None)
    assert native_size(info) == 512  # the tiny folder's 8 x 2 = 16 is no size a request may have
    config = json.loads((folder / "unet" / "config.json").read_text())
    (folder / "unet" / "config.json").write_text(json.dumps({**config, "sample_size": 384}))
    assert native_size(info) == 768  # UNet sample size x the VAE's factor (2 here; 96 x 8 in a real SD 2.x-v)


def test_api_uses_the_native_size_when_width_and_height_are_left_out(data_dir, model_files, family_files,
                                                                      tiny_loader):
    install(model_files["single"], data_dir)
    install(family_files["sdxl"], data_dir)
    svc = build_services(make_settings(data_dir, limits=Limits(max_width=256, max_height=256, queue_size=8)),
                         load=tiny_loader)
    try:
        client = TestClient(create_app(svc), base_url="http://127.0.0.1:7860")
        # Over this server's 256 limit, the 422 shows the default that was taken (and nothing runs for minutes).
        for name, size in (("tiny-sd15", 512), ("tiny-xl", 1024)):
            response = client.post("/sdapi/v1/txt2img", json={
                "prompt": "x", "steps": 1, "override_settings": {"sd_model_checkpoint": name}})
            assert response.status_code == 422
            assert response.json()["error"] == f"width: {size} is over this server's limit of 256"
        given = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64, "height": 64,
                                                       "override_settings": {"sd_model_checkpoint": "tiny-xl"}})
        assert given.status_code == 200 and '"width": 64, "height": 64' in given.json()["info"]
    finally:
        svc.queue.shutdown()


@pytest.mark.parametrize("size, previous, native, expected", [
    ((512, 512), 512, 1024, (1024, 1024)),    # still the old default: follows the new model
    ((1024, 1024), 1024, 512, (512, 512)),    # and back
    ((640, 512), 512, 1024, None),            # the user's own size stays
    ((512, 512), 1024, 1024, None),           # 512 chosen on purpose under SDXL stays
    ((512.0, 512.0), 512, 768, (768, 768)),   # Gradio sends floats
    ((512, 512), 512, 512, None),             # the same default: nothing sent, a size typed meanwhile stays
])
def test_ui_size_follows_the_checkpoint_only_while_untouched(size, previous, native, expected):
    width, height = follow(*size, previous, native)
    if expected is None:
        assert width == {"__type__": "update"} and height == {"__type__": "update"}
    else:
        assert (width, height) == expected


def test_ui_wires_the_size_to_page_load_and_checkpoint_choice(services):
    from webui.ui.app import build_ui

    demo = build_ui(services)
    handlers = [dep for dep in demo.fns.values() if getattr(dep.fn, "__module__", "") == "webui.ui.size_defaults"]
    assert len(handlers) == 2  # page load and the user's checkpoint choice
    dep = handlers[0]
    widths = [c for c in dep.outputs if getattr(c, "label", None) == "Width"]
    assert len(widths) == 2  # txt2img and img2img
    *updates, applied = dep.fn(services.manager.selected.title, 768, 768, 768, 640, 512)
    assert updates[:2] == [512, 512] and applied == 512  # the tiny SD 1.5's 512 replaces the old default
    assert updates[2:] == [{"__type__": "update"}] * 2  # the user's own 640x512 stays
    assert updates[2] == {"__type__": "update"}
