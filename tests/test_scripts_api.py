"""A1111's script fields on /sdapi/v1: script_name/script_args, alwayson_scripts, /scripts and /script-info."""

from __future__ import annotations

import base64
import io
import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from tests.script_fixtures import Recorder, make_extension, services_with
from webui.api.listings import build_listings_router
from webui.api.sdapi import build_router, install_error_handlers
from webui.extensions.api import Extension
from webui.infotext import parse_infotext

SMALL = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2, "seed": 5, "sampler_name": "Euler"}


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def ext(recorder) -> Extension:
    return make_extension(recorder)


@pytest.fixture
def svc(data_dir, model_files, tiny_loader, ext):
    services = services_with(data_dir, model_files, tiny_loader, ext)
    yield services
    services.queue.shutdown()


@pytest.fixture
def client(svc):
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_router(svc))
    app.include_router(build_listings_router(svc))
    with TestClient(app) as test_client:
        yield test_client


def _field(response) -> str:
    assert response.status_code == 422, response.text
    body = response.json()
    assert "Traceback" not in response.text
    return body["error"].split(":")[0]


def test_script_name_and_positional_script_args_run_the_script(client, recorder):
    # As webuiapi sends it: the title in any case, args as a list in the script's declared order.
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "two SEEDS",
                                                      "script_args": [4, "from the API", "stacked"]})
    assert response.status_code == 200, response.text
    data = response.json()
    assert len(data["images"]) == 3  # the grid first, then the two images
    grid = Image.open(io.BytesIO(base64.b64decode(data["images"][0])))
    assert grid.size == (64, 128)  # "stacked"
    info = json.loads(data["info"])
    assert info["index_of_first_image"] == 1  # A1111's: images[0] is the grid
    assert info["all_seeds"][1:] == [5, 9]
    assert parse_infotext(info["infotexts"][2]).params["Pair label"] == "from the API"
    assert recorder.values[-1].step == 4 and recorder.values[-1].fail is False  # the rest: defaults


@pytest.mark.parametrize("body, field", [
    ({"script_name": "Nope"}, "script_name"),
    ({"script_name": "Two seeds", "script_args": [1, "x", "side", False, "extra"]}, "script_args"),
    ({"script_name": "Two seeds", "script_args": [0]}, "script_args.step"),
    ({"script_name": "Two seeds", "script_args": {"step": 2}}, "script_args"),
    ({"script_args": [1]}, "script_args"),
    ({"alwayson_scripts": {"ADetailer": {"args": [True]}}}, "alwayson_scripts.ADetailer"),
    ({"alwayson_scripts": {"marker": {"args": [True, 7]}}}, "alwayson_scripts.marker.args.strength"),
    ({"alwayson_scripts": {"marker": {"args": {"on": True}}}}, "alwayson_scripts.marker.args"),
    ({"alwayson_scripts": {"marker": [True]}}, "alwayson_scripts.marker"),
    ({"extensions": {"testext": {"strength": "lots"}}}, "extensions.testext.strength"),
    ({"extensions": {"nobody": {}}}, "extensions.nobody"),
])
def test_bad_script_fields_get_422_naming_the_field(client, body, field):
    assert _field(client.post("/sdapi/v1/txt2img", json={**SMALL, **body})) == field


def test_a_refusing_script_is_a_422_and_a_crashing_one_says_so_and_the_server_goes_on(client):
    refused = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "Two seeds",
                                                     "script_args": [1, "x", "side", True]})
    assert refused.status_code == 422 and refused.json()["error"] == "the second run was refused on purpose"
    crashed = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "Crashing script"})
    assert crashed.status_code == 500
    assert crashed.json()["error"] == "Script 'Crashing script' failed: KeyError: 'missing'"
    assert "Traceback" not in crashed.text
    assert client.post("/sdapi/v1/txt2img", json=SMALL).status_code == 200


def test_an_img2img_script_runs_on_the_init_image(client):
    image = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(image, format="PNG")
    body = {**SMALL, "init_images": [base64.b64encode(image.getvalue()).decode()], "denoising_strength": 0.5,
            "script_name": "two seeds", "script_args": [2]}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert len(response.json()["images"]) == 3 and info["all_seeds"][1:] == [5, 7]
    assert "Denoising strength: 0.5" in info["infotexts"][1]


def test_a_txt2img_only_script_is_not_found_in_img2img(client):
    image = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(image, format="PNG")
    body = {**SMALL, "init_images": [base64.b64encode(image.getvalue()).decode()], "script_name": "Plain red"}
    assert _field(client.post("/sdapi/v1/img2img", json=body)) == "script_name"


def test_alwayson_scripts_map_onto_the_extension_values(svc, client):
    def last_request():
        return [j for j in svc.queue.jobs() if j.kind == "txt2img"][-1].request

    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {
        "Marker": {"args": [True, 0.25]}}})
    assert response.status_code == 200, response.text
    assert last_request().extensions == {"testext": {"on": True, "strength": 0.25, "note": ""}}
    # No args: the model's defaults, as A1111 uses the script's defaults.
    assert client.post("/sdapi/v1/txt2img", json={**SMALL, "alwayson_scripts": {"marker": {}}}).status_code == 200
    assert last_request().extensions == {"testext": {"on": False, "strength": 0.5, "note": ""}}
    # Our own field, by extension name.
    assert client.post("/sdapi/v1/txt2img", json={**SMALL, "extensions": {"testext": {"note": "hi"}}}
                       ).status_code == 200
    assert last_request().extensions == {"testext": {"note": "hi"}}


# The scripts shipped in webui/builtin_extensions, listed first (built-ins load first).
BUILTIN = {"txt2img": ["prompt matrix", "prompts from file or textbox", "x/y/z plot"],
           "img2img": ["loopback", "prompt matrix", "prompts from file or textbox", "sd upscale", "x/y/z plot"]}


def test_scripts_lists_selectable_and_alwayson_names_per_tab(client):
    data = client.get("/sdapi/v1/scripts").json()
    assert data == {"txt2img": BUILTIN["txt2img"] + ["two seeds", "crashing script", "plain red", "marker"],
                    "img2img": BUILTIN["img2img"] + ["two seeds", "crashing script", "upscaled", "marker"]}


def test_script_info_describes_the_args_in_script_args_order(client):
    info = client.get("/sdapi/v1/script-info").json()
    by_key = {(i["name"], i["is_img2img"]): i for i in info}
    builtin = {(name, tab == "img2img") for tab, names in BUILTIN.items() for name in names}
    assert set(by_key) - builtin == {("two seeds", False), ("two seeds", True), ("crashing script", False),
                           ("crashing script", True), ("plain red", False), ("upscaled", True), ("marker", False),
                           ("marker", True)}
    two = by_key[("two seeds", False)]
    assert two["is_alwayson"] is False
    assert [a["label"] for a in two["args"]] == ["Seed step", "label", "mode", "fail"]
    assert two["args"][0] == {"label": "Seed step", "value": 1, "minimum": 1, "maximum": 100, "step": 1,
                              "choices": None}
    assert two["args"][2]["choices"] == ["side", "stacked"] and two["args"][2]["value"] == "side"
    marker = by_key[("marker", True)]
    assert marker["is_alwayson"] is True
    assert [(a["label"], a["value"], a["minimum"], a["maximum"]) for a in marker["args"]] == [
        ("on", False, None, None), ("strength", 0.5, 0, 1), ("note", "", None, None)]


def test_with_only_the_builtins_the_lists_hold_them_and_other_names_are_refused(services):
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_router(services))
    app.include_router(build_listings_router(services))
    with TestClient(app) as plain:
        assert plain.get("/sdapi/v1/scripts").json() == BUILTIN
        assert {i["name"] for i in plain.get("/sdapi/v1/script-info").json()} == set(BUILTIN["img2img"])
        response = plain.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "No such script"})
        assert _field(response) == "script_name"
