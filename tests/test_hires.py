"""Hires fix, as A1111 1.10 runs it: the img2img sampling primitive (checked against k-diffusion, the library
A1111 samples with) and the two-pass txt2img job through ``POST /sdapi/v1/txt2img``."""

from __future__ import annotations

import base64
import inspect
import io
import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline

import kdiffusion_ref
from job_helpers import QuietListener
from test_sigmas import BROWNIAN, K_FUNCTIONS, a1111_sigmas
from PIL import Image
from tiny_models import tiny_sd1_components
from webui.hires_fix import LATENT_MODES, PIXEL_UPSCALERS, UPSCALERS
from webui.infotext import parse_infotext
from webui.infotext_paste import paste
from webui.parameters import TXT2IMG, for_task
from webui.k_samplers import ImageStart, img2img_steps
from webui.models.loader import LoadedModel, base_scheduler_config
from webui.pipelines.common import job_pipeline
from webui.samplers import Sampling, effective_schedule, resolve_sampler
from webui.types import Txt2ImgRequest

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Should have:UserWarning"),
]
SEED = 4321


@pytest.fixture(scope="module")
def embeds() -> torch.Tensor:
    return torch.randn((1, 77, 32), generator=torch.Generator().manual_seed(7))


def _reference_img2img(k, model, embeds, sampler: str, steps: int, strength: float, init, noise,
                       fixed_steps: bool) -> torch.Tensor:
    """A1111's KDiffusionSampler.sample_img2img over k-diffusion's own sampler functions."""
    spec, _ = resolve_sampler(sampler, "Automatic")
    unet = model.pipe.unet

    class TinyCompVis(k.external.DiscreteEpsDDPMDenoiser):
        def get_eps(self, x, t, **kwargs):
            return unet(x, t, encoder_hidden_states=embeds).sample

    denoiser = TinyCompVis(None, kdiffusion_ref.ldm_alphas_cumprod(), quantize=False)
    # sd_samplers_common.setup_img2img_steps, written out
    if fixed_steps:
        schedule, t_enc = int(steps / min(strength, 0.999)), steps - 1
    else:
        schedule, t_enc = steps, int(min(strength, 0.999) * steps)
    n = schedule + 1 if spec.discard_penultimate_sigma else schedule
    sigmas = a1111_sigmas(k, denoiser, effective_schedule(spec, "Automatic"), n)
    if spec.discard_penultimate_sigma:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    sigma_sched = sigmas[schedule - t_enc - 1:]
    xi = init + noise * sigma_sched[0]
    name, extra = K_FUNCTIONS[sampler]
    if sampler in BROWNIAN:  # A1111's create_noise_sampler spans the whole schedule
        lo, hi = sigmas[sigmas > 0].min(), sigmas.max()
        extra = {**extra, "noise_sampler": k.sampling.BrownianTreeNoiseSampler(init, lo, hi, seed=[SEED])}
    elif "noise_sampler" in inspect.signature(getattr(k.sampling, name)).parameters:
        generator = torch.Generator().manual_seed(SEED)
        extra = {**extra, "noise_sampler": lambda _s, _n: torch.randn(init.shape, generator=generator)}
    with torch.no_grad():
        return getattr(k.sampling, name)(denoiser, xi, sigma_sched, disable=True, **extra)


def _our_img2img(model, embeds, sampler: str, steps: int, strength: float, init, noise,
                 fixed_steps: bool) -> torch.Tensor:
    runner = job_pipeline(model, StableDiffusionImg2ImgPipeline, Sampling.resolve(sampler), [SEED], exact=True)
    runner.scheduler.start_from_image(ImageStart(init, noise, strength, fixed_steps,
                                                 [torch.Generator().manual_seed(SEED)]))
    with torch.no_grad():
        out = runner(prompt_embeds=embeds, guidance_scale=1.0, num_inference_steps=steps, image=init.clone(),
                     strength=1.0, generator=[torch.Generator().manual_seed(999)], output_type="latent")
    return out.images


@pytest.mark.parametrize("strength", [0.3, 0.75])
@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M", "DPM++ SDE"])
@pytest.mark.parametrize("fixed_steps", [False, True], ids=["a1111-default", "fix-steps"])
def test_img2img_primitive_equals_k_diffusion(k, tiny_model, embeds, sampler, strength, fixed_steps) -> None:
    init = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    expected = _reference_img2img(k, tiny_model, embeds, sampler, 8, strength, init, noise, fixed_steps)
    got = _our_img2img(tiny_model, embeds, sampler, 8, strength, init, noise, fixed_steps)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, init, atol=1e-2)  # it sampled


def test_img2img_runs_a1111s_step_count() -> None:
    """t_enc + 1 steps by default (one more than diffusers runs); exactly ``steps`` with fixed steps."""
    assert img2img_steps(20, 0.75, fixed_steps=False) == (20, 15)  # 16 steps run
    assert img2img_steps(20, 1.0, fixed_steps=False) == (20, 19)  # capped at 0.999: the whole schedule
    assert img2img_steps(10, 0.5, fixed_steps=True) == (20, 9)  # 10 steps of a 20-step schedule
    assert img2img_steps(10, 0.0, fixed_steps=True) == (0, 9)


def test_the_scheduler_runs_only_the_tail_of_the_schedule(tiny_model) -> None:
    runner = job_pipeline(tiny_model, StableDiffusionImg2ImgPipeline, Sampling.resolve("Euler"), [SEED], exact=True)
    zeros = torch.zeros((1, 4, 8, 8))
    runner.scheduler.start_from_image(ImageStart(zeros, zeros, 0.5, fixed_steps=True))
    runner.scheduler.set_timesteps(10)
    assert len(runner.scheduler.timesteps) == 10
    assert len(runner.scheduler.noise_sigmas) == 21 and float(runner.scheduler.sigmas[-1]) == 0.0
    assert float(runner.scheduler.sigmas[0]) < float(runner.scheduler.noise_sigmas[0]) / 2


# ------------------------------------------------------------------------------- the hires job, through the API

@pytest.fixture(scope="module")
def services(tmp_path_factory, model_files, tiny_loader):
    """One app for this module's API tests (building one per test cost about 2 s each)."""
    from tests.conftest import install, make_settings
    from webui.services.container import build_services

    data_dir = tmp_path_factory.mktemp("hires") / "data"
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    svc = build_services(make_settings(data_dir), load=tiny_loader)
    yield svc
    svc.queue.shutdown()


@pytest.fixture(scope="module")
def app_client(services):
    from fastapi.testclient import TestClient

    from webui.server import create_app

    with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as test_client:
        yield test_client


@pytest.fixture
def client(app_client):
    yield app_client
    app_client.post("/sdapi/v1/options", json={"save_images_before_highres_fix": False})  # the one option set here


SMALL = {"prompt": "a red cube", "steps": 2, "width": 64, "height": 64, "seed": 5, "enable_hr": True,
         "denoising_strength": 0.5}


def _post(client, **fields) -> dict:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, **fields})
    assert response.status_code == 200, response.text
    data = response.json()
    data["info"] = json.loads(data["info"])
    return data


def _image(data: dict, index: int = 0) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data["images"][index])))


def _params(data: dict, index: int = 0) -> dict[str, str]:
    return parse_infotext(data["info"]["infotexts"][index]).params


def test_hires_doubles_the_size_and_records_the_first_pass_size(client):
    data = _post(client)
    assert _image(data).size == (128, 128)
    params = _params(data)
    assert params["Size"] == "64x64"  # A1111 writes the first pass's size and the upscale
    assert params["Hires upscale"] == "2" and params["Hires upscaler"] == "Latent"
    assert params["Denoising strength"] == "0.5"
    assert "Hires steps" not in params and "Hires sampler" not in params and "Hires prompt" not in params
    info = data["info"]
    assert (info["width"], info["height"], info["denoising_strength"]) == (64, 64, 0.5)
    assert info["extra_generation_params"] == {"Denoising strength": 0.5, "Hires upscale": 2.0,
                                               "Hires upscaler": "Latent"}


def test_without_hires_nothing_of_it_is_written(client):
    data = _post(client, enable_hr=False)
    assert _image(data).size == (64, 64)
    assert not any(key.startswith("Hires") or key == "Denoising strength" for key in _params(data))
    assert data["info"]["denoising_strength"] is None


def test_a_fixed_seed_reproduces_the_hires_image_and_another_seed_does_not(client):
    first, again, other = _post(client), _post(client), _post(client, seed=6)
    assert np.array_equal(np.asarray(_image(first)), np.asarray(_image(again)))
    assert not np.array_equal(np.asarray(_image(first)), np.asarray(_image(other)))


def test_image_k_of_a_hires_batch_equals_a_single_run_with_its_seed(client):
    batch = _post(client, batch_size=2, sampler_name="Euler a")
    single = _post(client, seed=6, sampler_name="Euler a")
    diff = np.abs(np.asarray(_image(batch, 1), dtype=int) - np.asarray(_image(single), dtype=int))
    assert diff.max() <= 2  # batched convolutions may round differently in the last bit


@pytest.mark.parametrize("fields, size, written", [
    ({"hr_resize_x": 128, "hr_resize_y": 96}, (128, 96), "128x96"),  # both sides: cover the box, crop
    ({"hr_resize_x": 96}, (96, 96), "96x0"),  # one side: keep the aspect ratio
    ({"hr_resize_y": 128, "width": 128}, (256, 128), "0x128"),
])
def test_resize_to_follows_a1111s_rule(client, fields, size, written):
    data = _post(client, **fields)
    assert _image(data).size == size
    assert _params(data)["Hires resize"] == written and "Hires upscale" not in _params(data)


def test_scale_by_a_fraction(client):
    assert _image(_post(client, hr_scale=1.5)).size == (96, 96)


def test_every_upscaler_runs_is_recorded_and_makes_its_own_image(client):
    images = {}
    for upscaler in UPSCALERS:
        data = _post(client, hr_upscaler=upscaler, hr_scale=1.5)  # not a whole scale: nearest-exact differs
        assert _image(data).size == (96, 96)
        assert _params(data)["Hires upscaler"] == upscaler
        images[upscaler] = np.asarray(_image(data))
    # (antialiasing only changes downscaling, so those modes may equal their plain twins, as in A1111)
    for a, b in (("Latent", "Latent (bicubic)"), ("Latent", "Latent (nearest)"),
                 ("Latent (nearest)", "Latent (nearest-exact)"), ("Latent", "Lanczos"), ("Lanczos", "Nearest")):
        assert not np.array_equal(images[a], images[b]), (a, b)


def test_the_listings_offer_what_hires_fix_takes(client):
    modes = [item["name"] for item in client.get("/sdapi/v1/latent-upscale-modes").json()]
    assert modes == list(LATENT_MODES)
    names = {item["name"] for item in client.get("/sdapi/v1/upscalers").json()}
    assert set(PIXEL_UPSCALERS) <= names


def test_hires_steps_sampler_schedule_and_prompts_are_applied_and_recorded(client):
    plain = _post(client)
    for fields, key, value in (({"hr_second_pass_steps": 3}, "Hires steps", "3"),
                               ({"hr_sampler_name": "DPM++ 2M"}, "Hires sampler", "DPM++ 2M"),
                               ({"hr_scheduler": "Karras"}, "Hires schedule type", "Karras"),
                               ({"hr_prompt": "a blue sphere"}, "Hires prompt", "a blue sphere"),
                               ({"hr_negative_prompt": "blurry"}, "Hires negative prompt", "blurry")):
        data = _post(client, **fields)
        assert _params(data)[key] == value, fields
        assert not np.array_equal(np.asarray(_image(data)), np.asarray(_image(plain))), fields


def test_use_same_values_are_the_first_passs(client):
    plain = np.asarray(_image(_post(client)))
    for fields in (
        {"hr_sampler_name": "Use same sampler", "hr_scheduler": "Use same scheduler",
         "hr_checkpoint_name": "Use same checkpoint"},
        {"hr_sampler_name": "", "hr_scheduler": "", "hr_checkpoint_name": "", "hr_prompt": "",
         "hr_negative_prompt": ""},
        {"hr_sampler_name": None, "hr_scheduler": None, "hr_checkpoint_name": None, "hr_upscaler": None},
        {"hr_sampler_name": "Euler", "hr_prompt": "a red cube"},  # the same as the first pass: nothing new written
    ):
        data = _post(client, **fields)
        assert np.array_equal(np.asarray(_image(data)), plain), fields
        assert not {"Hires sampler", "Hires schedule type", "Hires prompt", "Hires checkpoint"} & set(_params(data))


def test_denoising_strength_zero_decodes_the_upscaled_latents(client):
    zero = _post(client, denoising_strength=0)
    assert _image(zero).size == (128, 128)
    assert not np.array_equal(np.asarray(_image(zero)), np.asarray(_image(_post(client))))
    assert float(_params(zero)["Denoising strength"]) == 0


def test_progress_counts_both_passes(services):
    from webui.pipelines import hires

    class Listener:
        def __init__(self):
            self.seen = []

        def on_step(self, step, steps, preview):
            self.seen.append((step, steps))

        def should_stop(self):
            return False

    request = Txt2ImgRequest.parse(**{**SMALL, "steps": 3, "hr_second_pass_steps": 2, "sampler_name": "Heun"})
    listener = Listener()
    with services.manager.lease() as model:
        out = hires.run_batch(model, request, [5], listener, 0, [0])
    assert out.images[0].size == (128, 128)
    # Heun calls the UNet twice a step; progress counts steps, the first pass's then the second's.
    assert sorted(set(listener.seen)) == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


@pytest.mark.parametrize("fields, field", [
    ({"hr_scale": -1}, "hr_scale"),
    ({"hr_scale": 0.5}, "hr_scale"),
    ({"hr_scale": 8}, "hr_scale"),
    ({"hr_upscaler": "ESRGAN_4x"}, "hr_upscaler"),
    ({"hr_resize_x": 100}, "hr_resize_x"),
    ({"hr_resize_y": -8}, "hr_resize_y"),
    ({"denoising_strength": 1.5}, "denoising_strength"),
    ({"hr_sampler_name": "Nope"}, "hr_sampler_name"),
    ({"hr_scheduler": "Sometimes"}, "hr_scheduler"),
    ({"hr_second_pass_steps": -1}, "hr_second_pass_steps"),
    ({"hr_second_pass_steps": 1000}, "hr_second_pass_steps"),
    ({"hr_checkpoint_name": "other-sd15"}, "hr_checkpoint_name"),
    ({"width": 256, "height": 64, "hr_scale": 4}, "hr_scale"),  # 1024 wide: over the test server's max width
    ({"hr_resize_x": 4096}, "hr_resize_x"),
    ({"hr_prompt": "x" * 100_000}, "hr_prompt"),
])
def test_bad_hires_values_get_a_422_naming_the_field(client, fields, field):
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, **fields})
    assert response.status_code == 422, response.text
    data = response.json()
    assert data["error"].startswith(f"{field}: "), data["error"]
    assert any(field in ".".join(map(str, d["loc"])) for d in data["detail"])


def test_an_unknown_upscaler_is_refused_with_the_choices(client):
    error = client.post("/sdapi/v1/txt2img", json={**SMALL, "hr_upscaler": "ESRGAN_4x"}).json()["error"]
    assert all(name in error for name in UPSCALERS)


def test_hires_fields_are_ignored_with_hires_off_as_a1111_does(client):
    data = _post(client, enable_hr=False, hr_upscaler="ESRGAN_4x", hr_sampler_name="Nope")
    assert _image(data).size == (64, 64)


def test_img2img_refuses_hires_fix(client):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(buffer, format="PNG")
    body = {"init_images": [base64.b64encode(buffer.getvalue()).decode()], "steps": 2, "enable_hr": True}
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 422 and response.json()["error"].startswith("enable_hr: ")


def test_pasting_a_hires_infotext_sets_the_hires_fields():
    text = ("a castle\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Denoising strength: 0.45, "
            "Hires upscale: 1.5, Hires steps: 10, Hires upscaler: Latent (nearest-exact), Hires sampler: DPM++ 2M, "
            "Hires prompt: a castle at night, Hires checkpoint: other, Version: v1.10.1")
    result = paste(text, [p.name for p in for_task(TXT2IMG)])
    assert {k: result.values[k] for k in ("enable_hr", "hr_scale", "hr_second_pass_steps", "hr_upscaler",
                                          "hr_sampler_name", "hr_prompt", "denoising_strength")} == {
        "enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 10, "hr_upscaler": "Latent (nearest-exact)",
        "hr_sampler_name": "DPM++ 2M", "hr_prompt": "a castle at night", "denoising_strength": 0.45}
    assert "Hires checkpoint" in result.not_applied
    resized = paste("x\nSteps: 20, Seed: 1, Size: 512x512, Denoising strength: 0.7, Hires resize: 1024x768, "
                    "Hires upscaler: Latent", [p.name for p in for_task(TXT2IMG)])
    assert (resized.values["hr_resize_x"], resized.values["hr_resize_y"], resized.values["enable_hr"]) == \
        (1024, 768, True)


def test_the_infotext_we_write_reads_back_into_the_same_request(client):
    fields = {"hr_second_pass_steps": 2, "hr_upscaler": "Latent (bicubic)", "hr_sampler_name": "DPM++ 2M",
              "hr_prompt": "a blue sphere", "hr_resize_x": 128, "hr_resize_y": 96, "denoising_strength": 0.4}
    data = _post(client, **fields)
    values = paste(data["info"]["infotexts"][0], [p.name for p in for_task(TXT2IMG)]).values
    assert {k: values[k] for k in fields} == fields and values["enable_hr"] is True


def test_sdxl_checkpoints_run_the_hires_pass_through_the_sdxl_img2img_pipeline():
    from diffusers import StableDiffusionXLPipeline

    from tiny_models import tiny_sdxl_components
    from webui.pipelines import hires

    sd1 = tiny_sd1_components(seed=0)
    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(seed=0), tokenizer=sd1["tokenizer"],
                                     tokenizer_2=sd1["tokenizer"], scheduler=sd1["scheduler"])
    model = LoadedModel(info=None, family="sdxl", variant="normal", pipe=pipe,
                        scheduler_config=base_scheduler_config(), default_size=64)
    request = Txt2ImgRequest.parse(**{**SMALL, "hr_sampler_name": "DPM++ 2M SDE"})
    first = hires.run_batch(model, request, [5], QuietListener(), 0, [0])
    again = hires.run_batch(model, request, [5], QuietListener(), 0, [0])
    factor = pipe.vae_scale_factor
    assert first.images[0].size == (64 // factor * 2 * factor,) * 2
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))


def test_the_hires_job_is_a1111s_second_pass_over_k_diffusion(k, tiny_model):
    """The whole job against A1111's recipe: our first pass (itself checked in test_sigmas.py), A1111's latent
    upscale, fresh noise from the same seed at the new size, then k-diffusion's Euler a over the tail of a
    stretched schedule (fixed steps) from ``x + noise * sigma_sched[0]``, continuing the seed's stream."""
    from webui.pipelines import conditioning, decode, hires, noise, txt2img
    from webui.pipelines.common import run_latents

    request = Txt2ImgRequest.parse(prompt="a red cube", steps=3, width=64, height=64, cfg_scale=1.0, seed=5,
                                   sampler_name="Euler a", enable_hr=True, denoising_strength=0.5,
                                   hr_second_pass_steps=4)
    got = hires.run_batch(tiny_model, request, [5], QuietListener(), 0, [0]).images[0]

    runner, kwargs, callback = txt2img.prepare(tiny_model, request, [5], QuietListener(), 0, [0], 7)
    first = run_latents(runner, kwargs, callback)
    x = torch.nn.functional.interpolate(first.float(), scale_factor=2, mode="bilinear", antialias=False)
    streams = noise.ImageNoise(tuple(x.shape[1:]), [5], [0], noise.NoiseSettings(), "cpu")  # A1111's ImageRNG
    start = streams.first()
    embeds = conditioning.encode_scheduled_pair(runner, "a red cube", "", 1, torch.device("cpu"), 3, 4).conds[0].embeds
    unet = tiny_model.pipe.unet

    class TinyCompVis(k.external.DiscreteEpsDDPMDenoiser):
        def get_eps(self, x, t, **kwargs):
            return unet(x, t, encoder_hidden_states=embeds).sample

    denoiser = TinyCompVis(None, kdiffusion_ref.ldm_alphas_cumprod(), quantize=False)
    sigmas = a1111_sigmas(k, denoiser, "Automatic", 8)  # int(4 / 0.5): A1111's fixed steps for the hires pass
    sigma_sched = sigmas[8 - 4:]
    with torch.no_grad():
        expected = k.sampling.sample_euler_ancestral(
            denoiser, x + start * sigma_sched[0], sigma_sched, disable=True,
            noise_sampler=lambda _s, _n: streams.next(x))
        reference = decode.to_pil(decode.decode_latents(tiny_model.pipe.vae, expected))[0]
    diff = np.abs(np.asarray(got, dtype=int) - np.asarray(reference, dtype=int))
    assert got.size == reference.size and diff.max() <= 1


def test_the_first_pass_is_saved_before_hires_fix_when_the_option_is_on(services, client):
    folder = services.settings.data_dir / "outputs" / "txt2img-images"
    _post(client, save_images=True)
    assert not list(folder.rglob("*-before-highres-fix.png"))  # A1111's default: off
    assert client.post("/sdapi/v1/options", json={"save_images_before_highres_fix": True}).status_code == 200
    data = _post(client, save_images=True, seed=77)
    [before] = list(folder.rglob("*-77-before-highres-fix.png"))
    with Image.open(before) as image:
        assert image.size == (64, 64)  # the first pass's size
        assert "Hires upscale: 2" in image.info["parameters"] and "Seed: 77" in image.info["parameters"]
    assert len(data["images"]) == 1 and _image(data).size == (128, 128)  # returned: the final image only
