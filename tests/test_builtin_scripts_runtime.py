"""X/Y/Z plot and Prompt matrix through the real script runtime (part C's ScriptService and the A1111 API's
script_name/script_args): one job, the grid first, saved as a grid; A1111 clients' positional args and axis
indices; a refused value names the axis."""

from __future__ import annotations

import json

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

# The runtime is part C's (webui/services/scripts.py); checked against ext12-c at aae6c58.

from webui.api.sdapi import build_router, install_error_handlers  # noqa: E402
from webui.extensions.api import infotext_fields  # noqa: E402
from webui.types import Txt2ImgRequest  # noqa: E402

SMALL = {"prompt": "a fox", "width": 64, "height": 64, "steps": 2, "seed": 5}


@pytest.fixture
def client(services):
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_router(services))
    with TestClient(app) as test_client:
        yield test_client


def test_xyz_plot_as_one_job_returns_the_grid_first_then_sub_grids(services, data_dir):
    result = services.scripts.run("txt2img", "X/Y/Z plot", Txt2ImgRequest(**SMALL),
                                  {"x_type": "Seed", "x_values": "1, 2", "z_type": "Steps", "z_values": "2, 3",
                                   "include_sub_grids": True}, timeout=120)
    assert [image.size for image in result.images][1:] == [result.images[1].size] * 2
    assert result.images[0].width == 2 * result.images[1].width  # the two Z grids side by side
    assert len(result.infotexts) == 3
    meta = infotext_fields(result.infotexts[0])
    assert (meta["Script"], meta["X Type"], meta["Z Type"]) == ("X/Y/Z plot", "Seed", "Steps")
    assert result.grid_path is not None and "txt2img-grids" in result.grid_path.parts


def test_a1111_client_script_args_run_the_plot(client):
    # A1111's txt2img axis list: 4 = Steps, 11 = Checkpoint name; dropdown picks as a list; include lone images
    args = [4, "2,3", [], 11, "", ["tiny-sd15", "other-sd15"], 0, "", [], True, True, False, False, 0, False, False]
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "x/y/z plot", "script_args": args})
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 1 + 4
    cells = [infotext_fields(text) for text in info["infotexts"][1:]]
    assert [(c["Steps"], c["Model"]) for c in cells] == [("2", "tiny-sd15"), ("3", "tiny-sd15"),
                                                         ("2", "other-sd15"), ("3", "other-sd15")]
    assert infotext_fields(info["infotexts"][0])["Y Values"] == "tiny-sd15,other-sd15"


def test_prompt_matrix_from_the_api(client):
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a fox|red|hat",
                                                      "script_name": "Prompt matrix",
                                                      "script_args": [False, True, "positive", "comma", 0]})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert len(info["infotexts"]) == 1 + 4
    assert [text.split("\n")[0] for text in info["infotexts"][1:]] == ["a fox", "a fox, red", "a fox, hat",
                                                                       "a fox, red, hat"]


def test_an_unsupported_a1111_axis_is_a_422_naming_the_field(client):
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "x/y/z plot", "script_args": [30]})
    assert response.status_code == 422
    assert response.json()["error"].startswith("script_args.x_type: A1111's axis 30 ('Face restore')")


def test_a_value_the_plot_refuses_is_a_422_with_its_message_and_nothing_is_made(client, data_dir):
    body = {**SMALL, "script_name": "X/Y/Z plot", "script_args": [4, "2,3", [], 0, ""]}
    body["script_args"][0] = "Sampler"
    body["script_args"][1] = "Euler, Bogus"
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 422, response.text
    assert "Bogus" in response.json()["error"]
    assert not list((data_dir / "outputs").rglob("*.png"))  # refused before the first cell
