"""A1111's saving options made real: formats with their infotext, .txt files, file-name patterns, samples_save,
grids; and every option's validation through POST /sdapi/v1/options (table-driven over OPTIONS)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Iterator

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import install, make_settings
from webui.infotext import parse_infotext, read_png_infotext
from webui.provenance.marker import read_source_type
from webui.server import create_app
from webui.services.container import Services, build_services
from webui.services.options import DEFAULTS, OPTIONS

SMALL = dict(prompt="a red cat", width=64, height=64, steps=2, seed=11)


@pytest.fixture(scope="module")
def app(tmp_path_factory, model_files, tiny_loader) -> Iterator[tuple[TestClient, Services]]:
    data_dir = tmp_path_factory.mktemp("saving")
    install(model_files["single"], data_dir)
    services = build_services(make_settings(data_dir), load=tiny_loader)
    try:
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
            yield client, services
    finally:
        services.queue.shutdown()


@pytest.fixture
def client(app) -> Iterator[TestClient]:
    """The app's client; every option is back at its default after each test."""
    client, services = app
    yield client
    services.options.update({k: v for k, v in DEFAULTS.items()}, allow_paths=True)


def generate(client: TestClient, **body) -> dict:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "save_images": True, **body})
    assert response.status_code == 200, response.text
    return response.json()


def saved_paths(app) -> list[Path]:
    services = app[1]
    job = services.jobs_store.list(limit=1, kinds=("txt2img",))[0]
    return [Path(p) for p in job.result["paths"]]


def error(response) -> str:
    assert response.status_code == 422, (response.status_code, response.text)
    return response.json()["error"]


# --- validation of every key ----------------------------------------------------------------------------------

def _wrong_type(option) -> object:
    return "text" if option.type in (bool, int, float) else 12


@pytest.mark.parametrize("key", sorted(OPTIONS))
def test_every_option_refuses_a_wrong_type_naming_the_key(app, key):
    client = app[0]
    assert error(client.post("/sdapi/v1/options", json={key: _wrong_type(OPTIONS[key])})).startswith(f"{key}: ")


@pytest.mark.parametrize("key", sorted(k for k, o in OPTIONS.items() if o.maximum is not None or o.choices))
def test_every_bounded_option_refuses_out_of_range_or_unknown_choice(app, key):
    option = OPTIONS[key]
    value = "no-such-choice" if option.choices else option.maximum + (1 if option.type is int else 0.5)
    assert error(app[0].post("/sdapi/v1/options", json={key: value})).startswith(f"{key}: ")


def test_get_options_returns_every_key_clients_read_with_a1111_defaults(app):
    options = app[0].get("/sdapi/v1/options").json()
    assert set(OPTIONS) <= set(options)
    expected = {"send_seed": True, "samples_format": "png", "outdir_txt2img_samples": "outputs/txt2img-images",
                "outdir_img2img_grids": "outputs/img2img-grids", "CLIP_stop_at_last_layers": 1,
                "show_progress_every_n_steps": 10, "live_previews_image_format": "png", "jpeg_quality": 80,
                "samples_filename_pattern": "", "directories_filename_pattern": "[date]", "n_rows": -1,
                "save_txt": False, "grid_save": True, "return_grid": True}
    assert {k: options[k] for k in expected} == expected


@pytest.mark.parametrize("key", sorted(k for k, o in OPTIONS.items() if o.path))
def test_folder_options_cannot_be_changed_over_the_api(app, key):
    client, services = app
    message = error(client.post("/sdapi/v1/options", json={key: "outputs/elsewhere"}))
    assert message.startswith(f"{key}: ") and "Settings tab" in message
    assert client.post("/sdapi/v1/options", json={key: DEFAULTS[key]}).status_code == 200  # posting back is fine
    assert services.options.value(key) == DEFAULTS[key]


def test_folder_options_in_the_settings_tab_must_stay_inside_outputs(app, tmp_path):
    services = app[1]
    for value in ("/etc", "../x", "outputs/../../x"):
        with pytest.raises(Exception, match="outdir_txt2img_samples: "):
            services.options.update({"outdir_txt2img_samples": value}, allow_paths=True)
    (services.settings.outputs_dir / "out").symlink_to(tmp_path)
    with pytest.raises(Exception, match="outdir_txt2img_samples: leads outside outputs/"):
        services.options.update({"outdir_txt2img_samples": "outputs/out"}, allow_paths=True)
    assert services.options.value("outdir_txt2img_samples") == "outputs/txt2img-images"


# --- saving as the options say --------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt, pil_format", [("jpg", "JPEG"), ("webp", "WEBP")])
def test_jpeg_and_webp_files_carry_infotext_png_info_reads(app, client, fmt, pil_format):
    assert client.post("/sdapi/v1/options", json={"samples_format": fmt, "jpeg_quality": 90}).status_code == 200
    result = generate(client)
    (path,) = saved_paths(app)
    assert path.suffix == f".{fmt}"
    image = Image.open(path)
    assert image.format == pil_format
    text = read_png_infotext(image)
    assert parse_infotext(text).params["Seed"] == "11" and text.startswith("a red cat")
    assert read_source_type(image.info) is not None  # the AI-generated marker travels in XMP
    assert "only PNG files carry a C2PA manifest" in text  # it never claims a manifest it does not carry
    # PNG Info reads it back through the API too.
    b64 = base64.b64encode(path.read_bytes()).decode()
    info = client.post("/sdapi/v1/png-info", json={"image": b64}).json()
    assert info["parameters"]["Seed"] == "11"
    assert base64.b64decode(result["images"][0])[:8] == b"\x89PNG\r\n\x1a\n"  # the API still answers PNG


def test_txt_file_beside_each_image_and_file_name_pattern(app, client):
    client.post("/sdapi/v1/options", json={"save_txt": True, "samples_filename_pattern": "[seed]-[prompt_words]",
                                           "directories_filename_pattern": "[model_name]"})
    result = generate(client, batch_size=2)
    paths = saved_paths(app)
    assert [p.name[6:] for p in paths] == ["11-a red cat.png", "12-a red cat.png"]
    assert paths[0].parent.name == "tiny-sd15"
    infotexts = json.loads(result["info"])["infotexts"]
    for path, text in zip(paths, infotexts):
        assert path.with_suffix(".txt").read_text(encoding="utf-8") == text


def test_samples_save_off_writes_nothing_but_returns_images(app, client):
    client.post("/sdapi/v1/options", json={"samples_save": False, "grid_save": False})
    before = sorted(app[1].settings.outputs_dir.rglob("*"))
    result = generate(client)
    assert len(result["images"]) == 1 and saved_paths(app) == []
    assert sorted(app[1].settings.outputs_dir.rglob("*")) == before


def test_a_batch_grid_is_saved_and_returned_first(app, client):
    client.post("/sdapi/v1/options", json={"n_rows": 1})
    job = app[1].generation.submit_txt2img(_request(batch_size=2, n_iter=2))
    result = job.wait(300)
    assert result.grid is not None and result.grid.size == (4 * 64, 64)  # one row of four
    assert result.grid_path is not None and result.grid_path.parent.parent.name == "txt2img-grids"
    assert result.grid_path.name == "grid-0000.png"
    grid = Image.open(result.grid_path)
    assert parse_infotext(read_png_infotext(grid)).params["Seed"] == "11"
    assert grid.size == (256, 64) and len(result.paths) == 4  # the grid is not one of the images


def test_grid_options_off_or_single_image_make_no_grid(app, client):
    assert app[1].generation.submit_txt2img(_request()).wait(300).grid is None  # one picture: no grid
    client.post("/sdapi/v1/options", json={"grid_save": False, "return_grid": False})
    result = app[1].generation.submit_txt2img(_request(batch_size=2)).wait(300)
    assert result.grid is None and result.grid_path is None


def _request(**overrides):
    from webui.types import Txt2ImgRequest

    return Txt2ImgRequest(**{**SMALL, **overrides})


def test_options_survive_a_restart(app, client, tiny_loader):
    client.post("/sdapi/v1/options", json={"samples_format": "webp", "samples_filename_pattern": "[seed]"})
    again = build_services(make_settings(app[1].settings.data_dir), load=tiny_loader)
    try:
        assert again.options.value("samples_format") == "webp"
        assert again.options.value("samples_filename_pattern") == "[seed]"
    finally:
        again.queue.shutdown()


def test_decoded_images_are_real(app, client):
    client.post("/sdapi/v1/options", json={"samples_format": "webp", "webp_lossless": True})
    generate(client)
    (path,) = saved_paths(app)
    pixels = Image.open(path).convert("RGB")
    assert pixels.size == (64, 64)
    assert Image.open(io.BytesIO(path.read_bytes())).format == "WEBP"


def test_before_highres_fix_copies_follow_the_name_pattern_and_format(app, client):
    client.post("/sdapi/v1/options", json={"save_images_before_highres_fix": True, "samples_format": "webp",
                                           "samples_filename_pattern": "[seed]-[steps]"})
    generate(client, enable_hr=True, hr_scale=1.5, hr_upscaler="Latent", denoising_strength=0.5)
    names = sorted(p.name[6:] for p in saved_paths(app))
    assert names == ["11-2-before-highres-fix.webp", "11-2.webp"]
