"""Extensions' hooks in real jobs on the tiny model: order, composition, isolation of a raising hook, request edits,
per-extension values in infotext, routes under /ext/<name>/ (behind --api-auth), on_model_loaded."""

from __future__ import annotations

import base64
import io
import json
import sys

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import BaseModel, Field

from tests.conftest import install, make_settings
from tests.extension_files import write_extension
from webui.errors import InvalidRequest
from webui.extensions.api import Extension, ExtensionError, Params
from webui.extensions.hooks import Hooks
from webui.extensions.host import ExtensionHost
from webui.infotext import parse_infotext
from webui.server import create_app
from webui.services.container import build_services
from webui.services.generation import GenerationService
from webui.services.storage import ImageStore
from webui.types import Img2ImgRequest, Txt2ImgRequest

SMALL = {"width": 64, "height": 64, "steps": 3, "seed": 11, "sampler_name": "Euler a", "prompt": "a cat"}


@pytest.fixture(scope="module")
def services(tmp_path_factory, model_files, tiny_loader):
    data_dir = tmp_path_factory.mktemp("hooks") / "data"
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    svc = build_services(make_settings(data_dir), load=tiny_loader)
    yield svc
    svc.queue.shutdown()


def generation(services, tmp_path, *extensions: Extension) -> GenerationService:
    """A generation service whose hooks are these extensions (registered on the shared queue for this test)."""
    return GenerationService(services.settings, services.manager, services.queue, ImageStore(tmp_path / "outputs"),
                             hooks=Hooks(ExtensionHost.of(*extensions)))


def ext(name: str) -> Extension:
    return Extension(name, context=None)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_a_raising_hook_is_skipped_and_named_in_the_warnings(services, tmp_path):
    bad, good = ext("bad"), ext("good")
    seen = []
    bad.on_image(lambda result: 1 / 0)
    bad.on_image_saved(lambda saved: sys.exit(2))
    bad.on_step(lambda state: (_ for _ in ()).throw(RuntimeError("step broke")))
    good.on_image(lambda result: seen.append(result.index))
    service = generation(services, tmp_path, bad, good)
    result = service.txt2img(Txt2ImgRequest(batch_size=2, **SMALL))
    assert len(result.images) == 2 and len(result.paths) == 2 and seen == [0, 1]
    assert "Extension hook failed: bad.on_image: ZeroDivisionError: division by zero" in result.warnings
    assert "Extension hook failed: bad.on_step: RuntimeError: step broke" in result.warnings
    assert "Extension hook failed: bad.on_image_saved: SystemExit: 2" in result.warnings
    assert len(result.warnings) == 3  # once per hook, not once per call
    assert len(service.txt2img(Txt2ImgRequest(save_images=False, **SMALL)).images) == 1  # the worker lives on


def test_step_hooks_compose_in_order_and_write_latents_back(services, tmp_path):
    scaler, recorder = ext("a-scale"), ext("b-record")
    scaled, seen, steps = [], [], []

    @scaler.on_step
    def scale(state):
        state.latents = state.latents * 0.5
        scaled.append(state.latents.clone())

    @recorder.on_step
    def record(state):
        seen.append(state.latents.clone())
        steps.append((state.step, state.steps, state.kind))

    # The host orders by name whatever order they are given in: a-scale runs first.
    service = generation(services, tmp_path, recorder, scaler)
    service.txt2img(Txt2ImgRequest(save_images=False, **SMALL))
    assert steps == [(1, 3, "txt2img"), (2, 3, "txt2img"), (3, 3, "txt2img")]
    assert len(seen) == 3 and all(torch.equal(a, b) for a, b in zip(scaled, seen))


def test_second_order_samplers_call_step_hooks_once_a_step(services, tmp_path):
    recorder = ext("record")
    steps = []
    recorder.on_step(lambda state: steps.append(state.step))
    generation(services, tmp_path, recorder).txt2img(
        Txt2ImgRequest(save_images=False, **{**SMALL, "sampler_name": "Heun", "steps": 3}))
    assert steps == [1, 2, 3]


def test_step_hooks_run_on_the_refiner_too(services, tmp_path, model_files):
    recorder = ext("record")
    steps = []
    recorder.on_step(lambda state: steps.append(state.step))
    refiner = services.registry.find(model_files["other"].stem).title
    generation(services, tmp_path, recorder).txt2img(Txt2ImgRequest(
        save_images=False, refiner_checkpoint=refiner, refiner_switch_at=0.5, **{**SMALL, "steps": 4}))
    assert steps == [1, 2, 3, 4]


def test_latents_a_step_hook_leaves_are_what_gets_decoded(services, tmp_path):
    plain = generation(services, tmp_path).txt2img(Txt2ImgRequest(save_images=False, **SMALL)).images[0]
    flattener = ext("flat")
    flattener.on_step(lambda state: setattr(state, "latents", torch.zeros_like(state.latents)))
    service = generation(services, tmp_path, flattener)
    one = service.txt2img(Txt2ImgRequest(save_images=False, **SMALL)).images[0]
    other = service.txt2img(Txt2ImgRequest(save_images=False, **{**SMALL, "seed": 12})).images[0]
    assert np.array_equal(pixels(one), pixels(other))  # the seed no longer matters: the hook's zeros were decoded
    assert not np.array_equal(pixels(one), pixels(plain))


def test_step_hooks_run_in_img2img_and_both_hires_passes(services, tmp_path):
    recorder = ext("record")
    calls = []
    recorder.on_step(lambda state: calls.append((state.kind, state.step, state.steps, tuple(state.latents.shape))))
    service = generation(services, tmp_path, recorder)
    service.txt2img(Txt2ImgRequest(save_images=False, enable_hr=True, hr_scale=2, hr_second_pass_steps=2,
                                   denoising_strength=0.5, hr_upscaler="Latent", **SMALL))
    # Both passes, numbered as the job's progress: 3 first-pass steps, then 2 at twice the size.
    assert [c[1:3] for c in calls] == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    assert calls[0][3][-1] * 2 == calls[-1][3][-1]
    calls.clear()
    init = Image.new("RGB", (64, 64), (120, 80, 40))
    service.img2img(Img2ImgRequest(init_images=[init], denoising_strength=0.6, save_images=False, **SMALL))
    assert calls and all(kind == "img2img" for kind, *_ in calls)


def test_guidance_change_and_cancel_from_a_step_hook(services, tmp_path):
    changer = ext("changer")
    guidance = []

    @changer.on_step
    def lower(state):
        guidance.append(state.guidance_scale)
        state.guidance_scale = 3.0
        if state.step == 2:
            state.cancel()

    result = generation(services, tmp_path, changer).txt2img(
        Txt2ImgRequest(save_images=False, n_iter=2, cfg_scale=7.0, **{**SMALL, "steps": 4}))
    assert guidance == [7.0, 3.0]  # the pipeline used (and reports) the new scale on the next step
    assert result.interrupted and len(result.images) == 1  # what the first batch made is kept


def test_on_image_replaces_the_image_and_adds_infotext_to_the_png(services, tmp_path):
    painter = ext("painter")

    @painter.on_image
    def paint(result):
        result.image = Image.new("RGB", result.image.size, (0, 255, 0))
        result.infotext["Painter"] = f"green {result.seed}"

    result = generation(services, tmp_path, painter).txt2img(Txt2ImgRequest(**SMALL))
    assert pixels(result.images[0])[..., 1].min() == 255
    [path] = result.paths
    params = parse_infotext(Image.open(path).info["parameters"]).params
    assert params["Painter"] == "green 11"


def test_on_image_saved_sees_each_file(services, tmp_path):
    watcher = ext("watcher")
    saved = []
    watcher.on_image_saved(lambda s: saved.append((s.kind, s.path, s.infotext)))
    result = generation(services, tmp_path, watcher).txt2img(Txt2ImgRequest(**SMALL))
    assert [(kind, path) for kind, path, _ in saved] == [("txt2img", result.paths[0])]
    assert "Seed: 11" in saved[0][2]


def test_before_job_edits_the_request_and_the_edit_is_checked(services, tmp_path):
    editor = ext("editor")

    @editor.on_before_job
    def edit(start):
        start.request = start.request.model_copy(update={"steps": start.request.steps - 1})

    result = generation(services, tmp_path, editor).txt2img(Txt2ImgRequest(save_images=False, **SMALL))
    assert result.request.steps == 2 and "Steps: 2" in result.infotexts[0]

    greedy = ext("greedy")
    greedy.on_before_job(lambda start: setattr(start, "request", start.request.model_copy(update={"width": 4096})))
    with pytest.raises(InvalidRequest, match="width: 4096 is over this server's limit"):
        generation(services, tmp_path, greedy).txt2img(Txt2ImgRequest(save_images=False, **SMALL))


def test_extension_error_in_before_job_refuses_the_job(services, tmp_path):
    gate = ext("gate")

    @gate.on_before_job
    def refuse(start):
        raise ExtensionError("no cats today")

    with pytest.raises(InvalidRequest) as info:
        generation(services, tmp_path, gate).txt2img(Txt2ImgRequest(save_images=False, **SMALL))
    assert info.value.field == "extensions.gate" and info.value.reason == "no cats today"


class Knob(BaseModel):
    strength: float = Field(0.5, ge=0, le=1)
    label: str = "x"


def test_values_are_checked_passed_to_hooks_and_written_and_read_as_infotext(services, tmp_path):
    knob = ext("knob")
    knob.add_params(Params(model=Knob, infotext={"strength": "Knob strength"}))
    got = []
    knob.on_image(lambda result: got.append(result.values))
    service = generation(services, tmp_path, knob)
    with pytest.raises(InvalidRequest) as info:
        service.submit_txt2img(Txt2ImgRequest(extensions={"knob": {"strength": 5}}, **SMALL))
    assert info.value.field == "extensions.knob.strength"
    with pytest.raises(InvalidRequest, match="no extension named 'nope'"):
        service.submit_txt2img(Txt2ImgRequest(extensions={"nope": {}}, **SMALL))

    plain = service.txt2img(Txt2ImgRequest(save_images=False, **SMALL))
    assert got == [None] and "Knob strength" not in plain.infotexts[0]  # no values sent: nothing written
    result = service.txt2img(Txt2ImgRequest(save_images=False, extensions={"knob": {"strength": 0.25}}, **SMALL))
    assert got[-1] == Knob(strength=0.25)
    params = parse_infotext(result.infotexts[0]).params
    assert params["Knob strength"] == "0.25"
    hooks = Hooks(ExtensionHost.of(knob))
    back = hooks.values_from_infotext(params)
    assert back == {"knob": {"strength": "0.25"}}
    assert hooks.host.validate_values(back, "txt2img")["knob"] == Knob(strength=0.25)


def test_a_hook_weakening_the_pickle_policy_in_a_job_is_undone_and_turned_off(services, tmp_path, monkeypatch):
    import os

    from webui.extensions.policies import PolicyGuard

    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)  # restored after the test, whatever
    sneaky = ext("sneaky")
    ran = []

    @sneaky.on_image
    def weaken(result):
        ran.append(result.index)
        os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"

    host = ExtensionHost.of(sneaky)
    service = GenerationService(services.settings, services.manager, services.queue,
                                ImageStore(tmp_path / "outputs"), hooks=Hooks(host, guard=PolicyGuard.capture()))
    result = service.txt2img(Txt2ImgRequest(save_images=False, batch_size=2, **SMALL))
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    assert ran == [0]  # turned off after its first call
    assert any("Extension sneaky was turned off" in w and "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in w
               for w in result.warnings)
    assert host.record("sneaky").status == "failed" and host.loaded() == []


def test_a_policy_change_made_outside_hooks_is_undone_without_blaming_a_hook(services, tmp_path, monkeypatch):
    import os

    from webui.extensions.policies import PolicyGuard

    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    innocent = ext("innocent")
    innocent.on_image(lambda result: None)
    host = ExtensionHost.of(innocent)
    service = GenerationService(services.settings, services.manager, services.queue,
                                ImageStore(tmp_path / "outputs"), hooks=Hooks(host, guard=PolicyGuard.capture()))
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # as a hung extension's thread could, any time
    result = service.txt2img(Txt2ImgRequest(save_images=False, **SMALL))
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    assert host.record("innocent").status == "loaded" and not result.warnings


# ---- the whole app, extensions loaded from disk

PROBE = """
    from pydantic import BaseModel
    from webui.extensions.api import ExtensionError, Params

    class Values(BaseModel):
        tag: str = "none"

    def setup(ext):
        ext.add_params(Params(model=Values, infotext={"tag": "Probe tag"}))

        @ext.on_before_job
        def gate(start):
            if "forbidden" in start.request.prompt:
                raise ExtensionError("the probe refuses forbidden prompts")

        @ext.on_image
        def mark(result):
            result.infotext["Probe"] = "seen"

        @ext.on_model_loaded
        def loaded(info):
            (ext.context.data_dir / "models.txt").write_text(f"{info.name} {info.family}")

        @ext.on_app_started
        def routes(start):
            @start.router.get("/hello")
            def hello():
                return {"extension": ext.name}
"""

BROKEN_START = """
    def setup(ext):
        @ext.on_app_started
        def routes(start):
            @start.router.get("/half")
            def half():
                return {}
            raise RuntimeError("no routes for you")
"""


SNEAKY_START = """
    import os

    def setup(ext):
        @ext.on_app_started
        def routes(start):
            os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"

            @start.router.get("/hello")
            def hello():
                return {}

        @ext.on_image
        def never(result):
            result.infotext["Sneaky"] = "ran"
"""


@pytest.fixture(scope="module")
def app(tmp_path_factory, model_files, tiny_loader):
    data_dir = tmp_path_factory.mktemp("ext-app") / "data"
    install(model_files["single"], data_dir)
    write_extension(data_dir / "extensions", "probe", PROBE)
    write_extension(data_dir / "extensions", "broken-start", BROKEN_START)
    write_extension(data_dir / "extensions", "sneaky", SNEAKY_START)
    svc = build_services(make_settings(data_dir), load=tiny_loader)
    try:
        with TestClient(create_app(svc), base_url="http://127.0.0.1:7860") as client:
            yield client, svc
    finally:
        svc.queue.shutdown()


def test_extension_route_answers_and_a_failing_app_started_hook_mounts_nothing(app):
    client, _ = app
    assert client.get("/ext/probe/hello").json() == {"extension": "probe"}
    assert client.get("/ext/broken-start/half").status_code == 404


def test_an_app_started_hook_weakening_the_pickle_policy_fails_its_extension(app):
    import os

    client, svc = app
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    record = svc.extensions.record("sneaky")
    assert record.status == "failed" and "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in record.error
    assert client.get("/ext/sneaky/hello").status_code == 404


def test_api_job_runs_hooks_and_model_loaded(app):
    client, svc = app
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "width": 64, "height": 64, "steps": 2,
                                                      "seed": 3})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert "Probe: seen" in info["infotexts"][0]
    assert "Sneaky" not in info["infotexts"][0]  # the failed extension's hooks no longer run
    png = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert parse_infotext(png.info["parameters"]).params["Probe"] == "seen"
    loaded = (svc.settings.extension_data_dir / "probe" / "models.txt").read_text()
    assert loaded == f"{svc.manager.selected.model_name} sd1"


def test_extension_error_is_a_422_on_the_api(app):
    client, _ = app
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "forbidden cat", "width": 64, "height": 64,
                                                      "steps": 2})
    assert response.status_code == 422
    assert response.json()["error"] == "extensions.probe: the probe refuses forbidden prompts"


def test_extension_routes_need_the_api_login(tmp_path):
    data_dir = tmp_path / "data"
    write_extension(data_dir / "extensions", "probe", PROBE)
    svc = build_services(make_settings(data_dir, api_auth=(("alice", "pw"),)))
    try:
        with TestClient(create_app(svc), base_url="http://127.0.0.1:7860") as client:
            assert client.get("/ext/probe/hello").status_code == 401
            assert client.get("/ext/probe/hello", auth=("alice", "pw")).json() == {"extension": "probe"}
    finally:
        svc.queue.shutdown()


def test_a_changed_guidance_scale_changes_the_image(services, tmp_path):
    request = Txt2ImgRequest(save_images=False, cfg_scale=7.0, **{**SMALL, "steps": 4})
    plain = generation(services, tmp_path).txt2img(request).images[0]
    same, lower = ext("same"), ext("lower")
    same.on_step(lambda state: setattr(state, "guidance_scale", 7.0))
    lower.on_step(lambda state: setattr(state, "guidance_scale", 2.0))
    unchanged = generation(services, tmp_path, same).txt2img(request).images[0]
    lowered = generation(services, tmp_path, lower).txt2img(request).images[0]
    assert np.array_equal(pixels(unchanged), pixels(plain))
    assert not np.array_equal(pixels(lowered), pixels(plain))
