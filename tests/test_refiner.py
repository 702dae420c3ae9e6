"""The refiner (A1111 1.6+): the same sampler continues on a second checkpoint once ``refiner_switch_at`` of the
sampling is done, checked against k-diffusion's DPM++ 2M run with a denoiser that switches model at that point."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from fastapi.testclient import TestClient

import kdiffusion_ref
from tiny_models import tiny_sd1_components
from webui.infotext import parse_infotext
from webui.models.loader import LoadedModel, base_scheduler_config
from webui.parameters import parse_params
from webui.pipelines.noise import ImageNoise, NoiseSettings
from webui.pipelines import conditioning, decode, refiner
from webui.samplers import build_scheduler
from webui.schedules import alphas_cumprod_from_config
from webui.server import create_app
from webui.types import CheckpointInfo, Txt2ImgRequest

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SMALL = dict(width=64, height=64, steps=6, save_images=False, prompt="a red fox", negative_prompt="blurry",
             cfg_scale=5.0)
SEED = 1234


@contextmanager
def unet_calls(model: LoadedModel, seen: list):
    """Record (model title, UNet input) for every UNet call of ``model`` while the block runs."""
    def hook(_module, args, kwargs):
        seen.append((model.info.title, args[0].detach().clone()))

    handle = model.pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _lease(services, title: str) -> LoadedModel:
    with services.manager.lease(title) as model:
        return model


def _pixels(result) -> np.ndarray:
    return np.asarray(result.images[0].convert("RGB"), dtype=np.int16)


# ------------------------------------------------------------------------------------ through the service


def test_switch_at_1_or_no_refiner_gives_the_base_image_byte_for_byte(services):
    other = services.registry.find("other-sd15").title
    plain = services.generation.txt2img(Txt2ImgRequest(seed=3, sampler_name="DPM++ 2M", **SMALL), timeout=120)
    never = services.generation.txt2img(Txt2ImgRequest(seed=3, sampler_name="DPM++ 2M", refiner_checkpoint=other,
                                                       refiner_switch_at=1.0, **SMALL), timeout=120)
    assert np.array_equal(_pixels(plain), _pixels(never))
    # A1111 writes the refiner only once sampling switched to it.
    assert never.infotexts == plain.infotexts and "Refiner" not in never.infotexts[0]


def test_switch_at_half_continues_on_the_refiner_unet(services):
    base, other = (services.registry.find(name).title for name in ("tiny-sd15", "other-sd15"))
    base_model, refiner_model = _lease(services, base), _lease(services, other)
    seen_plain: list = []
    with unet_calls(base_model, seen_plain), unet_calls(refiner_model, seen_plain):
        plain = services.generation.txt2img(Txt2ImgRequest(seed=3, sampler_name="Euler a", checkpoint=base, **SMALL),
                                            timeout=120)
    seen: list = []
    with unet_calls(base_model, seen), unet_calls(refiner_model, seen):
        refined = services.generation.txt2img(
            Txt2ImgRequest(seed=3, sampler_name="Euler a", checkpoint=base, refiner_checkpoint=other,
                           refiner_switch_at=0.5, **SMALL), timeout=120)
    assert [title for title, _ in seen_plain] == [base] * 6
    titles = [title for title, _ in seen]
    switch = titles.index(other)
    assert 0 < switch < 6 and titles == [base] * switch + [other] * (6 - switch)
    # Up to and including the switch the latents are exactly the base-only run's; after it they differ.
    for (_, got), (_, want) in zip(seen[:switch + 1], seen_plain[:switch + 1]):
        assert torch.equal(got, want)
    assert not torch.equal(seen[switch + 1][1], seen_plain[switch + 1][1])
    assert not np.array_equal(_pixels(plain), _pixels(refined))
    params = parse_infotext(refined.infotexts[0]).params
    assert params["Refiner"] == f"other-sd15 [{services.registry.find(other).short_hash}]"
    assert params["Refiner switch at"] == "0.5"


def test_progress_counts_every_step_across_the_switch(services):
    other = services.registry.find("other-sd15").title
    job = services.generation.submit_txt2img(Txt2ImgRequest(seed=1, sampler_name="Heun", refiner_checkpoint=other,
                                                            refiner_switch_at=0.4, **SMALL))
    job.wait(120)
    assert job.progress.step == 6 and job.progress.steps == 6


def test_image_k_of_a_refined_batch_equals_a_single_run_with_its_seed(services):
    other = services.registry.find("other-sd15").title
    common = dict(sampler_name="Euler a", refiner_checkpoint=other, refiner_switch_at=0.5, **SMALL)
    batch = services.generation.txt2img(Txt2ImgRequest(seed=20, batch_size=2, **common), timeout=120)
    single = services.generation.txt2img(Txt2ImgRequest(seed=21, **common), timeout=120)
    assert batch.seeds == [20, 21]
    got, want = (np.asarray(r.convert("RGB"), dtype=np.int16) for r in (batch.images[1], single.images[0]))
    assert np.abs(got - want).max() <= 1


def test_infotext_round_trip_names_the_refiner(services):
    other = services.registry.find("other-sd15")
    result = services.generation.txt2img(Txt2ImgRequest(seed=2, sampler_name="Euler", refiner_checkpoint=other.name,
                                                        refiner_switch_at=0.3, **SMALL), timeout=120)
    parsed = parse_infotext(result.infotexts[0])
    fields = parse_params(parsed.prompt, parsed.negative_prompt, parsed.params)
    assert fields["refiner_checkpoint"] == f"other-sd15 [{other.short_hash}]"
    assert fields["refiner_switch_at"] == 0.3
    # What the infotext names resolves to the same file, so pasting it back runs the same refiner.
    assert services.registry.find(fields["refiner_checkpoint"]) == other
    again = services.generation.txt2img(Txt2ImgRequest(seed=2, sampler_name="Euler", save_images=False,
                                                       **{k: v for k, v in fields.items() if k in (
                                                           "refiner_checkpoint", "refiner_switch_at", "prompt",
                                                           "negative_prompt", "steps", "cfg_scale", "width",
                                                           "height")}), timeout=120)
    assert np.array_equal(_pixels(result), _pixels(again))


# ------------------------------------------------------------------------------------------------ the API


@pytest.fixture
def client(services) -> TestClient:
    return TestClient(create_app(services), base_url="http://127.0.0.1:7860")


def test_api_runs_the_refiner_and_reports_it(client, services):
    other = services.registry.find("other-sd15")
    body = {"prompt": "fox", "steps": 4, "width": 64, "height": 64, "seed": 9, "sampler_name": "Euler a",
            "refiner_checkpoint": other.short_hash, "refiner_switch_at": 0.5}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    assert f"Refiner: other-sd15 [{other.short_hash}], Refiner switch at: 0.5" in response.json()["info"]
    none = client.post("/sdapi/v1/txt2img", json={**body, "refiner_checkpoint": "None"})
    assert none.status_code == 200 and "Refiner" not in none.json()["info"]


@pytest.mark.parametrize("extra, problem", [
    ({"refiner_checkpoint": "no-such-model"}, "not found"),
    ({"refiner_checkpoint": "other-sd15", "refiner_switch_at": 1.5}, "less than or equal to 1"),
    ({"refiner_checkpoint": "other-sd15", "refiner_switch_at": "soon"}, ""),
    ({"refiner_checkpoint": "other-sd15", "sampler_name": "DDIM"}, "k-diffusion"),
    ({"refiner_checkpoint": "other-sd15", "enable_hr": True}, "hires fix"),
    ({"refiner_checkpoint": ["other-sd15"]}, ""),
])
def test_api_refuses_bad_refiner_fields_with_422(client, extra, problem):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                      **extra})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error.startswith("refiner_"), error
    assert problem in error


def test_api_refuses_a_refiner_of_another_latent_space(client, services, model_files, tmp_path):
    """An SDXL base cannot be refined by an SD 1.x checkpoint: 422 naming refiner_checkpoint, server still up."""
    from tests.conftest import install
    from tests.tiny_models import write_tiny_sdxl_single_file

    xl = write_tiny_sdxl_single_file(tmp_path / "tiny-xl.safetensors", dtype=torch.float32)
    install(xl, services.settings.data_dir)
    services.registry.refresh()
    response = client.post("/sdapi/v1/txt2img", json={
        "prompt": "x", "steps": 2, "width": 64, "height": 64, "refiner_checkpoint": "other-sd15",
        "refiner_switch_at": 0.5, "override_settings": {"sd_model_checkpoint": "tiny-xl"}})
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("refiner_checkpoint: ") and "latent" in response.json()["error"]
    assert client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "width": 64,
                                                  "height": 64}).status_code == 200


def test_img2img_still_refuses_the_refiner(client):
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, format="PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    response = client.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": [image],
                                                      "refiner_checkpoint": "other-sd15"})
    assert response.status_code == 422 and response.json()["error"].startswith("refiner_checkpoint: ")


# -------------------------------------------------------------------- against k-diffusion (A1111's sampler)


def _tiny(seed: int, name: str, prediction: str = "epsilon") -> LoadedModel:
    pipe = StableDiffusionPipeline(**tiny_sd1_components(seed=seed), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    info = CheckpointInfo(path=Path(name), name=f"{name}.safetensors", model_name=name, kind="safetensors",
                          short_hash=f"{seed:010d}", sha256=None)
    return LoadedModel(info=info, family="sd1", variant="normal", pipe=pipe,
                       scheduler_config=base_scheduler_config(prediction), default_size=64)


class _Listener:
    def __init__(self):
        self.steps: list[int] = []

    def on_step(self, step, steps, preview) -> None:
        self.steps.append(step)

    def should_stop(self) -> bool:
        return False


@pytest.mark.parametrize("sampler, switch_at, prediction", [
    ("DPM++ 2M", 0.5, "epsilon"), ("LMS", 0.7, "epsilon"), ("DPM++ 2M", 0.0, "epsilon"),
    ("DPM++ 2M", 0.5, "v_prediction"),  # e.g. an SD 2.x-v refiner of an SD 1.5 image
])
def test_the_sampler_continues_as_k_diffusion_with_a_model_switching_denoiser(sampler, switch_at, prediction):
    k = kdiffusion_ref.load()
    base, other = _tiny(0, "base"), _tiny(1, "ref", prediction)
    request = Txt2ImgRequest(seed=SEED, sampler_name=sampler, refiner_checkpoint="ref", refiner_switch_at=switch_at,
                             **SMALL)
    image_noise = ImageNoise((4, 8, 8), [SEED], [], NoiseSettings(), "cpu")  # A1111's noise for the seed
    noise = image_noise.first()

    @contextmanager
    def lease():
        yield other

    listener = _Listener()
    out = refiner.run_batch(base, request, [SEED], listener, 0,
                            lambda _runner: (noise.clone(), image_noise), lease)
    assert out.refiner == "ref [0000000001]"
    assert listener.steps == [1, 2, 3, 4, 5, 6]

    # The reference: k-diffusion's sampler, with A1111's CFG denoiser that switches model as apply_refiner does.
    scheduler = build_scheduler(base_scheduler_config(), sampler)
    scheduler.set_timesteps(request.steps)
    sigmas = scheduler.sigmas
    conds = {id(m): conditioning.encode_pair(m.pipe, request.prompt, request.negative_prompt, 1, torch.device("cpu"))
             for m in (base, other)}
    used: list[str] = []

    alphas = alphas_cumprod_from_config(base_scheduler_config())

    class Eps(k.external.DiscreteEpsDDPMDenoiser):
        def get_eps(self, x, t, context):
            return self.inner_model(x, t, encoder_hidden_states=context).sample

    class V(k.external.DiscreteVDDPMDenoiser):
        def get_v(self, x, t, context):
            return self.inner_model(x, t, encoder_hidden_states=context).sample

    wrappers = {"base": Eps(base.pipe.unet, alphas, quantize=False),
                "ref": (V if prediction == "v_prediction" else Eps)(other.pipe.unet, alphas, quantize=False)}

    class Switching(k.external.DiscreteEpsDDPMDenoiser):
        def forward(self, x, sigma, **kwargs):
            t = torch.argmin((self.sigmas - sigma.max()).abs())
            model = other if used and used[-1] == "ref" or not (999 - t) / 1000 < switch_at else base
            used.append(model.info.model_name)
            cond, uncond = conds[id(model)]
            wrapper = wrappers[model.info.model_name]
            c = wrapper(x, sigma, context=cond.embeds)
            u = wrapper(x, sigma, context=uncond.embeds)
            return u + (c - u) * request.cfg_scale

    denoiser = Switching(None, alphas, quantize=False)
    name = {"DPM++ 2M": "sample_dpmpp_2m", "LMS": "sample_lms"}[sampler]
    with torch.no_grad():
        expected = getattr(k.sampling, name)(denoiser, noise * sigmas[0], sigmas, disable=True)
        pixels = decode.to_pil(decode.decode_latents(other.pipe.vae, expected))[0]
    assert "base" in used or switch_at == 0.0
    assert "ref" in used
    got, want = np.asarray(out.images[0], dtype=np.int16), np.asarray(pixels, dtype=np.int16)
    assert np.abs(got - want).max() <= 1


# ---------------------------------------------------------------------------------------------------- the UI


def test_txt2img_has_a1111s_refiner_accordion_and_png_info_fills_it(services):
    from tests.test_ui import _send_handlers
    from webui.ui.app import build_ui

    demo = build_ui(services)
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    dropdown, slider = by_id["txt2img_refiner_checkpoint"], by_id["txt2img_refiner_switch_at"]
    assert [c[0] for c in dropdown.choices] == ["None"] + [i.title for i in services.registry.list()]
    assert dropdown.value == "None" and slider.value == 0.8
    assert by_id["txt2img_refiner"].label == "Refiner"
    other = services.registry.find("other-sd15")
    text = (f"a fox\nSteps: 6, Sampler: Euler a, CFG scale: 5, Seed: 3, Size: 64x64, Model: tiny-sd15, "
            f"Refiner: other-sd15 [{other.short_hash}], Refiner switch at: 0.5")
    dep = _send_handlers(demo)["txt2img"]
    *updates, _selected, notice, _switch, _status = dep.fn(text)
    shown = {c.elem_id: u["value"] for c, u in zip(dep.outputs, updates) if "value" in u}
    assert shown["txt2img_refiner_checkpoint"] == f"other-sd15 [{other.short_hash}]"
    assert shown["txt2img_refiner_switch_at"] == 0.5
    assert "Refiner" not in str(notice)
    # img2img has no refiner: the keys are named as not applied there.
    *_updates, _selected, notice, _switch, _status = _send_handlers(demo)["img2img"].fn(text)
    assert "Refiner" in str(notice)


# ------------------------------------------------------------------------------- a real SDXL refiner's layout


@pytest.fixture(scope="module")
def xl_files(tmp_path_factory) -> dict[str, Path]:
    from tests.tiny_models import write_tiny_sdxl_refiner_single_file, write_tiny_sdxl_single_file

    root = tmp_path_factory.mktemp("xl")
    return {"base": write_tiny_sdxl_single_file(root / "tiny-xl-base.safetensors", seed=0),
            "refiner": write_tiny_sdxl_refiner_single_file(root / "tiny-xl-refiner.safetensors", seed=1)}


@pytest.fixture
def xl_services(data_dir, xl_files, tiny_loader):
    from tests.conftest import install, make_settings
    from webui.services.container import build_services

    for path in xl_files.values():
        install(path, data_dir)
    svc = build_services(make_settings(data_dir), load=tiny_loader)
    yield svc
    svc.queue.shutdown()


def test_an_sdxl_refiner_file_is_detected_and_loads_offline(xl_files):
    from webui.models import detect, loader

    spec = detect.detect(detect.read_safetensors_header(xl_files["refiner"]), "tiny-xl-refiner")
    assert (spec.family, spec.variant, spec.label) == ("sdxl", "refiner", "SDXL refiner")
    info = CheckpointInfo(path=xl_files["refiner"], name="tiny-xl-refiner.safetensors", model_name="tiny-xl-refiner",
                          kind="safetensors", short_hash="0", sha256=None)
    model = loader.load(info, torch.float32)
    assert model.pipe.text_encoder is None and model.pipe.tokenizer is None
    assert model.pipe.text_encoder_2 is not None and model.pipe.unet.config.cross_attention_dim == 64


def test_an_sdxl_refiner_continues_an_sdxl_base_with_aesthetic_time_ids(xl_services):
    base = xl_services.registry.find("tiny-xl-base").title
    refiner_title = xl_services.registry.find("tiny-xl-refiner").title
    refiner_model = _lease(xl_services, refiner_title)
    seen: list = []

    def hook(_module, _args, kwargs):
        seen.append((kwargs["encoder_hidden_states"].shape, kwargs["added_cond_kwargs"]["time_ids"].clone()))

    handle = refiner_model.pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        result = xl_services.generation.txt2img(Txt2ImgRequest(
            seed=4, sampler_name="DPM++ 2M", checkpoint=base, refiner_checkpoint="tiny-xl-refiner",
            refiner_switch_at=0.6, **SMALL), timeout=120)
    finally:
        handle.remove()
    assert 0 < len(seen) < 6
    shape, time_ids = seen[0]
    assert shape[-1] == 64  # OpenCLIP-G's width alone, no CLIP-L
    # [negative, prompt]: original size, crop, A1111's low / high aesthetic score
    assert time_ids.tolist() == [[64, 64, 0, 0, 2.5], [64, 64, 0, 0, 6.0]]
    assert "Refiner: tiny-xl-refiner [" in result.infotexts[0]


def test_an_sdxl_refiner_is_not_a_txt2img_checkpoint_and_sd_cannot_refine_sdxl(xl_services, model_files):
    from webui.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="^checkpoint: .*SDXL refiner"):
        xl_services.generation.txt2img(Txt2ImgRequest(checkpoint="tiny-xl-refiner", **SMALL), timeout=120)
    from tests.conftest import install

    install(model_files["single"], xl_services.settings.data_dir)
    xl_services.registry.refresh()
    base = _lease(xl_services, "tiny-sd15")
    calls: list = []
    with unet_calls(base, calls), pytest.raises(InvalidRequest, match="^refiner_checkpoint: .*latent spaces differ"):
        xl_services.generation.txt2img(Txt2ImgRequest(checkpoint="tiny-sd15", refiner_checkpoint="tiny-xl-refiner",
                                                      refiner_switch_at=0.5, **SMALL), timeout=120)
    assert calls == []  # refused before any sampling


def test_interrupt_on_the_refiner_stops_there_and_keeps_the_image():
    base, other = _tiny(0, "base"), _tiny(1, "ref")
    request = Txt2ImgRequest(seed=SEED, sampler_name="Euler", refiner_checkpoint="ref", refiner_switch_at=0.3,
                             **SMALL)

    class StopAt4(_Listener):
        def should_stop(self) -> bool:
            return bool(self.steps) and self.steps[-1] >= 4

    @contextmanager
    def lease():
        yield other

    listener = StopAt4()
    image_noise = ImageNoise((4, 32, 32), [SEED], [], NoiseSettings(), "cpu")
    out = refiner.run_batch(base, request, [SEED], listener, 0,
                            lambda _runner: (image_noise.first(), image_noise), lease)
    assert listener.steps == [1, 2, 3, 4] and out.stopped_early
    assert out.refiner == "ref [0000000001]" and out.images[0].size == (64, 64)

