"""A1111's "Sampler parameters" options: eta, sigma churn/tmin/tmax/noise, schedule sigma min/max and rho, the Beta
schedule's alpha and beta, "always discard next-to-last sigma" and the SGM noise multiplier.

Sampling is compared with k-diffusion's functions (the code A1111 runs) given the same extra arguments; the noise
k-diffusion draws with ``torch.randn_like`` is fed from the images' Philox streams, as A1111's ``TorchHijack`` does.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from scipy import stats

import kdiffusion_ref
from job_helpers import QuietListener
from webui import k_samplers
from webui.infotext import format_infotext, parse_infotext
from webui.models.loader import LoadedModel, base_scheduler_config
from webui.parameters import (SAMPLER_OPTION_PARAMS, CHURN_ALGORITHMS, ETA_ALGORITHMS, S_NOISE_ALGORITHMS, InfotextContext,
                              infotext_params, parse_params)
from webui.pipelines import conditioning, decode, txt2img
from webui.pipelines.noise import Philox
from webui.samplers import SAMPLERS
from webui.schedules import DiscreteSigmas, ScheduleOptions, alphas_cumprod_from_config, schedule_sigmas
from webui.server import create_app
from webui.types import Txt2ImgRequest

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Should have:UserWarning")]

STEPS = 4
SEED = 4321
SHAPE = (4, 32, 32)  # one 64 px image's latent with the tiny VAE (it halves)


def _ours(monkeypatch, model: LoadedModel, **fields) -> torch.Tensor:
    """Final latents of the real txt2img batch code, NV noise, CFG 1 (decode skipped)."""
    request = Txt2ImgRequest(prompt="a red fox", steps=STEPS, width=64, height=64, cfg_scale=1.0, seed=SEED,
                             randn_source="NV", save_images=False, **fields)
    captured = {}

    def keep(_vae, latents):
        captured["latents"] = latents.clone()
        return torch.zeros((latents.shape[0], 3, 8, 8))

    monkeypatch.setattr(decode, "decode_latents", keep)
    txt2img.run_batch(model, request, [SEED], QuietListener(), preview_every=0)
    return captured["latents"]


class _StreamTorch:
    """A1111's TorchHijack: k-diffusion's ``torch.randn_like`` becomes the image's stream's next draw."""

    def __init__(self, stream: Philox):
        self._stream = stream

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn_like(self, x):
        return self._stream.randn(tuple(x.shape[1:])).unsqueeze(0)


def _reference(k, model: LoadedModel, monkeypatch, function: str, sigmas_of=None, sgm: bool = False,
               **extra) -> torch.Tensor:
    """k-diffusion's ``function`` over A1111's Automatic sigmas (or ``sigmas_of(denoiser)``), NV noise of SEED."""
    cond, _ = conditioning.encode_pair(model.pipe, "a red fox", "", 1, torch.device("cpu"))
    unet = model.pipe.unet

    class TinyCompVis(k.external.DiscreteEpsDDPMDenoiser):
        def get_eps(self, x, t, **kwargs):
            return unet(x, t, encoder_hidden_states=cond.embeds).sample

    denoiser = TinyCompVis(None, kdiffusion_ref.ldm_alphas_cumprod(), quantize=False)
    sigmas = sigmas_of(denoiser) if sigmas_of else denoiser.get_sigmas(STEPS)
    stream = Philox(SEED)
    noise = stream.randn(SHAPE).unsqueeze(0)
    x = noise * (torch.sqrt(1.0 + sigmas[0] ** 2.0) if sgm else sigmas[0])
    monkeypatch.setattr(k.sampling, "torch", _StreamTorch(stream))
    if extra.pop("brownian", False):
        extra["noise_sampler"] = k.sampling.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(),
                                                                     seed=[SEED])
    elif "noise_sampler" in extra:
        extra["noise_sampler"] = lambda _s, _n: stream.randn(SHAPE).unsqueeze(0)
    with torch.no_grad():
        return getattr(k.sampling, function)(denoiser, x, sigmas, disable=True, **extra)


CHURN = dict(s_churn=3.0, s_tmin=0.5, s_tmax=12.0, s_noise=1.05)


@pytest.mark.parametrize(("sampler", "function", "discard"), [
    ("Euler", "sample_euler", False), ("Heun", "sample_heun", False), ("DPM2", "sample_dpm_2", True)])
def test_churn_options_sample_as_k_diffusion(k, tiny_model, monkeypatch, sampler, function, discard) -> None:
    def sigmas_of(denoiser):
        sigmas = denoiser.get_sigmas(STEPS + 1 if discard else STEPS)
        return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas

    expected = _reference(k, tiny_model, monkeypatch, function, sigmas_of, **CHURN)
    # "Uniform" is the model's own schedule, what k-diffusion's get_sigmas gives (DPM2's Automatic is Karras).
    got = _ours(monkeypatch, tiny_model, sampler_name=sampler, scheduler="Uniform", **CHURN)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    plain = _ours(monkeypatch, tiny_model, sampler_name=sampler, scheduler="Uniform")
    assert not torch.allclose(got, plain, atol=1e-3)  # the churn changed the image


@pytest.mark.parametrize(("sampler", "function", "extra"), [
    ("Euler a", "sample_euler_ancestral", dict(eta=0.5)),  # A1111 gives Euler a no s_noise
    ("DPM2 a", "sample_dpm_2_ancestral", dict(eta=0.7, s_noise=0.9)),
    ("DPM++ 2S a", "sample_dpmpp_2s_ancestral", dict(eta=0.3, s_noise=1.1)),
])
def test_eta_and_noise_of_ancestral_samplers_as_k_diffusion(k, tiny_model, monkeypatch, sampler, function,
                                                            extra) -> None:
    discard = sampler == "DPM2 a"

    def sigmas_of(denoiser):
        sigmas = denoiser.get_sigmas(STEPS + 1 if discard else STEPS)
        return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas

    expected = _reference(k, tiny_model, monkeypatch, function, sigmas_of, noise_sampler=True, **extra)
    fields = {"eta_ancestral": extra["eta"], **({"s_noise": extra["s_noise"]} if "s_noise" in extra else {})}
    got = _ours(monkeypatch, tiny_model, sampler_name=sampler, scheduler="Uniform", **fields)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # The request's own eta (A1111's body key) wins over the option.
    assert torch.equal(_ours(monkeypatch, tiny_model, sampler_name=sampler, scheduler="Uniform", eta=extra["eta"],
                             eta_ancestral=0.1,
                             **{k_: v for k_, v in fields.items() if k_ != "eta_ancestral"}), got)


def test_eta_and_noise_of_sde_samplers_as_k_diffusion(k, tiny_model, monkeypatch) -> None:
    def karras(denoiser):
        return k.sampling.get_sigmas_karras(STEPS, denoiser.sigma_min.item(), denoiser.sigma_max.item())

    expected = _reference(k, tiny_model, monkeypatch, "sample_dpmpp_2m_sde", karras, brownian=True, eta=0.4,
                          s_noise=0.95)
    got = _ours(monkeypatch, tiny_model, sampler_name="DPM++ 2M SDE", scheduler="Karras", eta_ancestral=0.4,
                s_noise=0.95)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_sgm_noise_multiplier_starts_from_noise_times_sqrt_1_plus_sigma_max_squared(k, tiny_model,
                                                                                  monkeypatch) -> None:
    expected = _reference(k, tiny_model, monkeypatch, "sample_euler", sgm=True)
    got = _ours(monkeypatch, tiny_model, sampler_name="Euler", sgm_noise_multiplier=True)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_always_discard_next_to_last_sigma_as_a1111(k, tiny_model, monkeypatch) -> None:
    def discarded(denoiser):
        sigmas = denoiser.get_sigmas(STEPS + 1)
        return torch.cat([sigmas[:-2], sigmas[-1:]])

    expected = _reference(k, tiny_model, monkeypatch, "sample_euler", discarded)
    got = _ours(monkeypatch, tiny_model, sampler_name="Euler", always_discard_next_to_last_sigma=True)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------- schedules


@pytest.fixture(scope="module")
def model_sigmas() -> DiscreteSigmas:
    return DiscreteSigmas(alphas_cumprod_from_config(base_scheduler_config()))


def test_sigma_min_max_and_rho_reshape_karras_and_polyexponential_as_k_diffusion(k, model_sigmas) -> None:
    options = ScheduleOptions(sigma_min=0.1, sigma_max=10.0, rho=5.0)
    torch.testing.assert_close(schedule_sigmas("Karras", 12, model_sigmas, options=options),
                               k.sampling.get_sigmas_karras(12, 0.1, 10.0, rho=5.0))
    torch.testing.assert_close(schedule_sigmas("Polyexponential", 12, model_sigmas, options=options),
                               k.sampling.get_sigmas_polyexponential(12, 0.1, 10.0, rho=5.0))
    torch.testing.assert_close(schedule_sigmas("Exponential", 12, model_sigmas, options=options),
                               k.sampling.get_sigmas_exponential(12, 0.1, 10.0))
    # A1111 runs "Automatic" (the model's own schedule) without the overrides.
    assert torch.equal(schedule_sigmas("Automatic", 12, model_sigmas, options=options),
                       schedule_sigmas("Automatic", 12, model_sigmas))


def test_beta_schedule_takes_alpha_and_beta(model_sigmas) -> None:
    options = ScheduleOptions(beta_alpha=0.3, beta_beta=0.8)
    lo, hi = model_sigmas.sigma_min, model_sigmas.sigma_max
    expected = [lo + stats.beta.ppf(x, 0.3, 0.8) * (hi - lo) for x in 1 - np.linspace(0, 1, 9)] + [0.0]
    torch.testing.assert_close(schedule_sigmas("Beta", 9, model_sigmas, options=options), torch.tensor(
        expected, dtype=torch.float32))
    assert not torch.allclose(schedule_sigmas("Beta", 9, model_sigmas), torch.tensor(expected, dtype=torch.float32))


def test_which_sampler_takes_which_option_matches_what_runs() -> None:
    """The infotext table's sets and the samplers' keyword arguments say the same thing."""
    for spec in SAMPLERS:
        if not spec.k_algorithm:
            continue
        takes = k_samplers.ALGORITHMS[spec.k_algorithm].takes
        assert ("eta" in takes) == (spec.k_algorithm in ETA_ALGORITHMS), spec.name
        assert ("s_churn" in takes) == (spec.k_algorithm in CHURN_ALGORITHMS), spec.name
        assert ("s_noise" in takes) == (spec.k_algorithm in S_NOISE_ALGORITHMS), spec.name


# -------------------------------------------------------------------------------------------- infotext


def _round_trip(request: Txt2ImgRequest) -> tuple[str, dict]:
    text = format_infotext(request.prompt, "", infotext_params(request, InfotextContext(seed=1)))
    parsed = parse_infotext(text)
    return text, parse_params(parsed.prompt, parsed.negative_prompt, parsed.params)


@pytest.mark.parametrize(("fields", "written", "read"), [
    (dict(sampler_name="Euler a", eta_ancestral=0.5), "Eta: 0.5", {"eta_ancestral": 0.5}),
    (dict(sampler_name="Euler a", eta=0.25), "Eta: 0.25", {"eta_ancestral": 0.25}),
    (dict(sampler_name="Euler", s_churn=1.5, s_tmin=0.2, s_tmax=9.0, s_noise=1.01),
     "Sigma churn: 1.5, Sigma tmin: 0.2, Sigma tmax: 9, Sigma noise: 1.01",
     {"s_churn": 1.5, "s_tmin": 0.2, "s_tmax": 9.0, "s_noise": 1.01}),
    (dict(sampler_name="DPM++ 2M", scheduler="Karras", sigma_min=0.05, sigma_max=12.0, rho=6.0),
     "Schedule min sigma: 0.05, Schedule max sigma: 12, Schedule rho: 6",
     {"sigma_min": 0.05, "sigma_max": 12.0, "rho": 6.0}),
    (dict(sampler_name="Euler", scheduler="Beta", beta_dist_alpha=0.4, beta_dist_beta=0.7),
     "Beta schedule alpha: 0.4, Beta schedule beta: 0.7", {"beta_dist_alpha": 0.4, "beta_dist_beta": 0.7}),
    (dict(sampler_name="Euler", always_discard_next_to_last_sigma=True), "Discard penultimate sigma: True",
     {"always_discard_next_to_last_sigma": True}),
    (dict(sampler_name="Euler", sgm_noise_multiplier=True), "SGM noise multiplier: True",
     {"sgm_noise_multiplier": True}),
])
def test_options_are_written_as_a1111_writes_them_and_read_back(fields, written, read) -> None:
    text, parsed = _round_trip(Txt2ImgRequest(prompt="p", **fields))
    assert written in text
    assert {key: parsed[key] for key in read} == read


@pytest.mark.parametrize("fields", [
    dict(sampler_name="Euler", eta_ancestral=0.5),  # Euler has no eta
    dict(sampler_name="Euler a", s_churn=2.0, s_noise=0.9),  # A1111 gives Euler a neither
    dict(sampler_name="DPM++ 2M", s_churn=2.0, s_noise=0.9),
    dict(sampler_name="Euler", sigma_min=0.1, sigma_max=5.0, rho=3.0),  # Automatic: the model's own schedule
    dict(sampler_name="DPM++ 2M", scheduler="Exponential", rho=3.0),  # Exponential has no rho
    dict(sampler_name="DPM2", always_discard_next_to_last_sigma=True),  # DPM2 discards it anyway
    dict(sampler_name="Euler a", eta_ancestral=1.0, s_noise=1.0),  # defaults
])
def test_options_a_sampler_does_not_take_are_not_written(fields) -> None:
    text, _ = _round_trip(Txt2ImgRequest(prompt="p", **fields))
    for key in ("Eta:", "Sigma", "Schedule min", "Schedule max", "Schedule rho", "Discard penultimate"):
        assert key not in text


def test_a1111_option_table_spellings_are_read_too() -> None:
    fields = parse_params("p", "", {"SGM noise multplier": "True", "Beta scheduler alpha": "0.3"})
    assert fields["sgm_noise_multiplier"] is True and fields["beta_dist_alpha"] == 0.3


# ------------------------------------------------------------------------------------------------- API


@pytest.fixture(scope="module")
def app_client(tmp_path_factory, model_files, tiny_loader):
    """One app for this module's API tests (building one per test cost about 2 s each)."""
    from tests.conftest import install, make_settings
    from webui.services.container import build_services

    data_dir = tmp_path_factory.mktemp("options") / "data"
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    services = build_services(make_settings(data_dir), load=tiny_loader)
    try:
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as test_client:
            yield test_client
    finally:
        services.queue.shutdown()


@pytest.fixture
def client(app_client):
    yield app_client
    # The options a test set go back to A1111's defaults for the next one.
    app_client.post("/sdapi/v1/options", json={p.setting: p.default for p in SAMPLER_OPTION_PARAMS})


BODY = {"prompt": "a cat", "seed": 3, "width": 64, "height": 64, "steps": 3}


def _infotext(response) -> str:
    assert response.status_code == 200, response.text
    return json.loads(response.json()["info"])["infotexts"][0]


def test_options_and_override_settings_set_the_sampler_options(client) -> None:
    assert client.post("/sdapi/v1/options", json={"eta_ancestral": 0.5, "s_noise": 0.9}).json() == {}
    assert client.get("/sdapi/v1/options").json()["eta_ancestral"] == 0.5
    assert "Eta: 0.5" in _infotext(client.post("/sdapi/v1/txt2img", json={**BODY, "sampler_name": "Euler a"}))
    text = _infotext(client.post("/sdapi/v1/txt2img", json={
        **BODY, "sampler_name": "Euler", "override_settings": {"s_churn": 2.5}}))
    assert "Sigma churn: 2.5" in text and "Sigma noise: 0.9" in text
    # A1111's body keys win over the options.
    text = _infotext(client.post("/sdapi/v1/txt2img", json={**BODY, "sampler_name": "Heun", "s_churn": 1.0,
                                                            "override_settings": {"s_churn": 2.5}}))
    assert "Sigma churn: 1," in text


def test_unipc_options_are_accepted_at_a1111s_defaults_only(client) -> None:
    defaults = {"uni_pc_variant": "bh1", "uni_pc_skip_type": "time_uniform", "uni_pc_order": 3,
                "uni_pc_lower_order_final": True}
    assert client.post("/sdapi/v1/options", json=defaults).status_code == 200
    response = client.post("/sdapi/v1/options", json={"uni_pc_variant": "bh2"})
    assert response.status_code == 422 and response.json()["error"].startswith("uni_pc_variant")


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/sdapi/v1/options", {"s_noise": 1.5}, "s_noise"),
    ("/sdapi/v1/options", {"eta_ancestral": -0.1}, "eta_ancestral"),
    ("/sdapi/v1/options", {"beta_dist_alpha": 0}, "beta_dist_alpha"),
    ("/sdapi/v1/options", {"sgm_noise_multiplier": "yes"}, "sgm_noise_multiplier"),
    ("/sdapi/v1/txt2img", {**BODY, "override_settings": {"s_churn": 200}}, "override_settings.s_churn"),
    ("/sdapi/v1/txt2img", {**BODY, "override_settings": {"rho": "NaN"}}, "override_settings.rho"),
    ("/sdapi/v1/txt2img", {**BODY, "s_tmax": -1}, "s_tmax"),
    ("/sdapi/v1/txt2img", {**BODY, "s_churn": "lots"}, "s_churn"),
    ("/sdapi/v1/txt2img", {**BODY, "override_settings": {"sigma_min": 5, "sigma_max": 2}}, "sigma_min"),
])
def test_bad_sampler_option_values_are_refused_naming_the_key(client, path, body, field) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith(field)
    assert client.get("/sdapi/v1/options").json()["s_noise"] == 1.0  # nothing half-applied


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 60, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(("extra", "written"), [
    ({"sampler_name": "Euler a", "eta": 0.5}, "Eta: 0.5"),
    ({"sampler_name": "Euler a", "override_settings": {"eta_ancestral": 0.5}}, "Eta: 0.5"),
    ({"sampler_name": "Euler", "s_churn": 1.0}, "Sigma churn: 1"),
])
def test_img2img_applies_and_records_sampler_options(client, extra, written) -> None:
    """img2img samples with the same k-diffusion samplers as txt2img, so it takes the same options."""
    plain = client.post("/sdapi/v1/img2img", json={**BODY, "init_images": [_png()], "sampler_name": extra["sampler_name"]})
    response = client.post("/sdapi/v1/img2img", json={**BODY, "init_images": [_png()], **extra})
    assert response.status_code == 200, response.text
    assert written in json.loads(response.json()["info"])["infotexts"][0]
    assert response.json()["images"][0] != plain.json()["images"][0]



def test_the_ui_applies_the_options_as_a1111s_settings_do(client) -> None:
    """Set through /options (A1111's settings), the sampler parameters apply to jobs from the UI too."""
    from tests import gradio_events

    assert client.post("/sdapi/v1/options", json={"s_churn": 1.0}).status_code == 200
    try:
        config = client.get("/config").json()
        by_label = {"Prompt": "a cat", "Negative prompt": "", "Sampling steps": 3, "Width": 64, "Height": 64,
                    "Sampling method": "Euler", "Seed": 3}
        stream = gradio_events.call(client, "txt2img", gradio_events.inputs_by_label(config, "txt2img", by_label))
        assert "Sigma churn: 1" in stream, stream[-2000:]
    finally:
        client.post("/sdapi/v1/options", json={"s_churn": 0.0})
