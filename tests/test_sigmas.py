"""A1111-exact noise levels and samplers, checked against k-diffusion (the library A1111 samples with).

For every schedule type the sigma sequence must equal A1111's (k-diffusion's ``get_sigmas_*`` and its
model wrapper where they exist, A1111 1.10's sd_schedulers.py formulas otherwise); for every k-diffusion
sampler A1111 offers, our txt2img pipeline must end on the same latents as k-diffusion's sampler run over the
same tiny UNet from the same noise.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from scipy import stats

import kdiffusion_ref
from tiny_models import tiny_sd1_components
from webui.models.loader import LoadedModel, base_scheduler_config
from webui.pipelines.common import job_pipeline
from webui.samplers import SAMPLERS, SCHEDULE_TYPES, Sampling, build_scheduler, effective_schedule, resolve_sampler
from webui.schedules import DiscreteSigmas, alphas_cumprod_from_config, schedule_sigmas

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    # torchsde notes float rounding at the ends of its interval; k-diffusion (A1111) triggers the same.
    pytest.mark.filterwarnings("ignore:Should have:UserWarning"),
]

STEPS = (1, 2, 8, 11, 20, 30)


@pytest.fixture(scope="module")
def ref_model(k):
    """k-diffusion's CompVisDenoiser equivalent as A1111 builds it (quantize off, A1111's default)."""
    return k.external.DiscreteEpsDDPMDenoiser(None, kdiffusion_ref.ldm_alphas_cumprod(), quantize=False)


@pytest.fixture(scope="module")
def ours() -> DiscreteSigmas:
    return DiscreteSigmas(alphas_cumprod_from_config(base_scheduler_config()))


def a1111_sigmas(k, model, schedule: str, n: int, sdxl: bool = False) -> torch.Tensor:
    """A1111 1.10's get_sigmas for one schedule, written from its source over k-diffusion's objects."""
    lo, hi = model.sigmas[0].item(), model.sigmas[-1].item()
    sampling = k.sampling
    if schedule in ("Automatic", "Uniform"):
        return model.get_sigmas(n)
    if schedule == "Karras":
        return sampling.get_sigmas_karras(n=n, sigma_min=lo, sigma_max=hi, rho=7.0)
    if schedule == "Exponential":
        return sampling.get_sigmas_exponential(n=n, sigma_min=lo, sigma_max=hi)
    if schedule == "Polyexponential":
        return sampling.get_sigmas_polyexponential(n=n, sigma_min=lo, sigma_max=hi, rho=1.0)
    if schedule in ("SGM Uniform", "Normal"):
        start, end = model.sigma_to_t(torch.tensor(hi)), model.sigma_to_t(torch.tensor(lo))
        ts = torch.linspace(start, end, n + 1)[:-1] if schedule == "SGM Uniform" else torch.linspace(start, end, n)
        return torch.FloatTensor([float(model.t_to_sigma(t)) for t in ts] + [0.0])
    if schedule == "KL Optimal":
        a_min, a_max = torch.arctan(torch.tensor(lo)), torch.arctan(torch.tensor(hi))
        idx = torch.arange(n + 1)
        return torch.tan(idx / n * a_min + (1.0 - idx / n) * a_max)
    if schedule == "Align Your Steps":
        table = ([14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029] if sdxl else
                 [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029])
        if n == len(table):
            return torch.FloatTensor(table + [0.0])
        ys = np.exp(np.interp(np.linspace(0, 1, n), np.linspace(0, 1, len(table)), np.log(table[::-1])))[::-1]
        return torch.FloatTensor(np.append(ys.copy(), [0.0]))
    if schedule == "Simple":
        ss = len(model.sigmas) / n
        return torch.FloatTensor([float(model.sigmas[-(1 + int(x * ss))]) for x in range(n)] + [0.0])
    if schedule == "DDIM":
        ss = max(len(model.sigmas) // n, 1)
        return torch.FloatTensor([float(model.sigmas[x]) for x in range(1, len(model.sigmas), ss)][::-1] + [0.0])
    if schedule == "Beta":
        fractions = [stats.beta.ppf(x, 0.6, 0.6) for x in 1 - np.linspace(0, 1, n)]
        return torch.FloatTensor([lo + x * (hi - lo) for x in fractions] + [0.0])
    raise AssertionError(schedule)


# ----------------------------------------------------------------------------------- sigma sequences


@pytest.mark.parametrize("schedule", SCHEDULE_TYPES)
@pytest.mark.parametrize("steps", STEPS)
def test_every_schedule_type_gives_a1111_sigmas(k, ref_model, ours, schedule: str, steps: int) -> None:
    expected = a1111_sigmas(k, ref_model, schedule, steps)
    got = schedule_sigmas(schedule, steps, ours)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("steps", (8, 11, 20))
def test_align_your_steps_uses_the_sdxl_table_for_sdxl(k, ref_model, ours, steps: int) -> None:
    got = schedule_sigmas("Align Your Steps", steps, ours, sdxl=True)
    torch.testing.assert_close(got, a1111_sigmas(k, ref_model, "Align Your Steps", steps, sdxl=True))
    assert not torch.equal(got, schedule_sigmas("Align Your Steps", steps, ours))


def test_automatic_euler_starts_at_sigma_max_as_a1111() -> None:
    # The numbers: "leading" spacing started Euler at 11.0 (20 steps); A1111 starts at 14.6146.
    scheduler = build_scheduler(base_scheduler_config(), "Euler", "Automatic")
    scheduler.set_timesteps(20)
    assert scheduler.init_noise_sigma == pytest.approx(14.6146, abs=1e-4)
    assert scheduler.sigmas[:3].tolist() == pytest.approx([14.6146, 10.7468, 8.0815], abs=1e-4)
    assert scheduler.sigmas[-2:].tolist() == pytest.approx([0.0292, 0.0], abs=1e-4)
    assert len(scheduler.timesteps) == 20
    assert scheduler.timesteps[0].item() == pytest.approx(999.0)


@pytest.mark.parametrize(("sampler", "calls"), [
    ("Euler", 20), ("Euler a", 20), ("LMS", 20), ("DPM++ 2M", 20), ("DPM++ 2M SDE", 20),
    ("DPM++ 3M SDE", 20), ("Heun", 39), ("DPM2", 39), ("DPM++ SDE", 39), ("DPM++ 2S a", 39), ("DPM2 a", 39),
])
def test_a1111_step_count_and_unet_calls(sampler: str, calls: int) -> None:
    """20 steps: one UNet call per step, plus one per step but the last for second-order samplers."""
    scheduler = build_scheduler(base_scheduler_config(), sampler, "Automatic")
    scheduler.set_timesteps(20)
    assert len(scheduler.sigmas) == 21
    assert len(scheduler.timesteps) == calls


@pytest.mark.parametrize("sampler", ["DPM2", "DPM2 a", "DPM++ 3M SDE"])
def test_discard_penultimate_sigma_as_a1111(k, ref_model, sampler: str) -> None:
    spec, schedule = resolve_sampler(sampler)
    scheduler = build_scheduler(base_scheduler_config(), sampler)
    scheduler.set_timesteps(10)
    full = a1111_sigmas(k, ref_model, effective_schedule(spec, schedule), 11)
    torch.testing.assert_close(scheduler.sigmas, torch.cat([full[:-2], full[-1:]]))


# ------------------------------------------------------------------------------------- final latents

K_SAMPLERS = [spec for spec in SAMPLERS if spec.k_algorithm]
K_FUNCTIONS = {
    "Euler": ("sample_euler", {}), "Euler a": ("sample_euler_ancestral", {}), "LMS": ("sample_lms", {}),
    "Heun": ("sample_heun", {}), "DPM2": ("sample_dpm_2", {}), "DPM2 a": ("sample_dpm_2_ancestral", {}),
    "DPM++ 2S a": ("sample_dpmpp_2s_ancestral", {}), "DPM++ 2M": ("sample_dpmpp_2m", {}),
    "DPM++ SDE": ("sample_dpmpp_sde", {}), "DPM++ 2M SDE": ("sample_dpmpp_2m_sde", {}),
    "DPM++ 2M SDE Heun": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}),
    "DPM++ 3M SDE": ("sample_dpmpp_3m_sde", {}),
}
BROWNIAN = {"DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"}
SEED = 1234


@pytest.fixture(scope="module")
def embeds() -> torch.Tensor:
    return torch.randn((1, 77, 32), generator=torch.Generator().manual_seed(7))


def _reference_latents(k, model: LoadedModel, embeds, sampler: str, schedule: str, steps: int,
                       noise: torch.Tensor) -> torch.Tensor:
    spec, _ = resolve_sampler(sampler, schedule)
    unet = model.pipe.unet

    class TinyCompVis(k.external.DiscreteEpsDDPMDenoiser):
        def get_eps(self, x, t, **kwargs):
            return unet(x, t, encoder_hidden_states=embeds).sample

    denoiser = TinyCompVis(None, kdiffusion_ref.ldm_alphas_cumprod(), quantize=False)
    n = steps + 1 if spec.discard_penultimate_sigma else steps
    sigmas = a1111_sigmas(k, denoiser, effective_schedule(spec, schedule), n)
    if spec.discard_penultimate_sigma:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    x = noise * sigmas[0]
    name, extra = K_FUNCTIONS[sampler]
    if sampler in BROWNIAN:
        lo, hi = sigmas[sigmas > 0].min(), sigmas.max()
        extra = {**extra, "noise_sampler": k.sampling.BrownianTreeNoiseSampler(x, lo, hi, seed=[SEED])}
    elif "noise_sampler" in inspect.signature(getattr(k.sampling, name)).parameters:
        generator = torch.Generator().manual_seed(SEED)
        extra = {**extra, "noise_sampler": lambda _s, _n: torch.randn(x.shape, generator=generator)}
    with torch.no_grad():
        return getattr(k.sampling, name)(denoiser, x, sigmas, disable=True, **extra)


def _our_latents(model: LoadedModel, embeds, sampler: str, schedule: str, steps: int, noise) -> torch.Tensor:
    runner = job_pipeline(model, StableDiffusionPipeline, Sampling.resolve(sampler, schedule), [SEED])
    with torch.no_grad():
        out = runner(prompt_embeds=embeds, guidance_scale=1.0, num_inference_steps=steps, width=64, height=64,
                     latents=noise.clone(), generator=[torch.Generator().manual_seed(SEED)], output_type="latent")
    return out.images


@pytest.mark.parametrize("spec", K_SAMPLERS, ids=lambda s: s.name)
def test_final_latents_equal_k_diffusion(k, tiny_model, embeds, spec) -> None:
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(99))
    expected = _reference_latents(k, tiny_model, embeds, spec.name, "Automatic", 4, noise)
    got = _our_latents(tiny_model, embeds, spec.name, "Automatic", 4, noise)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # The latents moved: a sampler that did nothing would not pass by accident.
    assert not torch.allclose(got, noise * 14.6146, atol=1e-2)


@pytest.mark.parametrize("schedule", [s for s in SCHEDULE_TYPES if s != "Automatic"])
def test_final_latents_equal_k_diffusion_for_every_schedule(k, tiny_model, embeds, schedule: str) -> None:
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    expected = _reference_latents(k, tiny_model, embeds, "Euler a", schedule, 3, noise)
    got = _our_latents(tiny_model, embeds, "Euler a", schedule, 3, noise)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_image_k_of_a_batch_matches_a_single_run_for_sde_noise(tiny_model, embeds) -> None:
    noise = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(3))
    runner = job_pipeline(tiny_model, StableDiffusionPipeline, Sampling.resolve("DPM++ 2M SDE"), [11, 12])
    with torch.no_grad():
        batch = runner(prompt_embeds=embeds.repeat(2, 1, 1), guidance_scale=1.0, num_inference_steps=4, width=64,
                       height=64, latents=noise.clone(), output_type="latent").images
        single = job_pipeline(tiny_model, StableDiffusionPipeline, Sampling.resolve("DPM++ 2M SDE"), [12])(
            prompt_embeds=embeds, guidance_scale=1.0, num_inference_steps=4, width=64, height=64,
            latents=noise[1:].clone(), output_type="latent").images
    torch.testing.assert_close(batch[1:], single, rtol=1e-4, atol=1e-4)
    assert not math.isclose(float((batch[0] - batch[1]).abs().max()), 0.0)


def test_v_prediction_models_denoise_as_k_diffusion(k, tiny_model, embeds) -> None:
    """SD 2.x-v checkpoints: the UNet's output is v, turned into denoised latents as CompVisVDenoiser does."""
    unet = tiny_model.pipe.unet

    class TinyCompVisV(k.external.DiscreteVDDPMDenoiser):
        def get_v(self, x, t, **kwargs):
            return unet(x, t, encoder_hidden_states=embeds).sample

    denoiser = TinyCompVisV(None, kdiffusion_ref.ldm_alphas_cumprod(), quantize=False)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(21))
    sigmas = denoiser.get_sigmas(4)
    with torch.no_grad():
        expected = k.sampling.sample_euler(denoiser, noise * sigmas[0], sigmas, disable=True)
    v_model = LoadedModel(info=None, family="sd", variant="normal", pipe=tiny_model.pipe,
                          scheduler_config=base_scheduler_config("v_prediction"), default_size=64)
    got = _our_latents(v_model, embeds, "Euler", "Automatic", 4, noise)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, _our_latents(tiny_model, embeds, "Euler", "Automatic", 4, noise), atol=1e-3)


@pytest.mark.parametrize(("written", "label"), [
    ("Align Your Steps", "Align Your Steps"), ("KL Optimal", "KL Optimal"), ("Polyexponential", "Polyexponential"),
    ("Beta", "Beta"), ("Normal", "Normal"), ("Simple", "Simple"), ("DDIM", "DDIM"), ("Uniform", "Uniform"),
    ("align_your_steps", "Align Your Steps"), ("kl_optimal", "KL Optimal"),
])
def test_every_a1111_schedule_name_is_accepted_and_runs(written: str, label: str) -> None:
    """Infotext labels and the API's ids both resolve, and each builds a scheduler with A1111's sigmas."""
    spec, schedule = resolve_sampler("DPM++ 2M", written)
    assert schedule == label
    scheduler = build_scheduler(base_scheduler_config(), spec.name, written)
    scheduler.set_timesteps(12)
    assert scheduler.config.schedule == label
    assert len(scheduler.timesteps) == len(scheduler.sigmas) - 1


class _Steps:
    def __init__(self):
        self.seen: list[tuple[int, int]] = []

    def on_step(self, step, steps, preview) -> None:
        self.seen.append((step, steps))

    def should_stop(self) -> bool:
        return False


@pytest.mark.parametrize(("sampler", "expected"), [
    ("Heun", [1, 1, 2, 2, 3, 3, 4]), ("DPM++ SDE", [1, 1, 2, 2, 3, 3, 4]), ("Euler", [1, 2, 3, 4]),
])
def test_progress_counts_sampler_steps_not_unet_calls(tiny_model, embeds, sampler: str, expected) -> None:
    from webui.pipelines.common import StepCallback

    listener = _Steps()
    runner = job_pipeline(tiny_model, StableDiffusionPipeline, Sampling.resolve(sampler, "Karras"), [SEED])
    callback = StepCallback(listener, 4, 0, "sd")
    with torch.no_grad():
        runner(prompt_embeds=embeds, guidance_scale=1.0, num_inference_steps=4, width=64, height=64,
               output_type="latent", generator=[torch.Generator().manual_seed(SEED)], **callback.kwargs())
    assert [step for step, _ in listener.seen] == expected
    assert {steps for _, steps in listener.seen} == {4}


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "Heun", "DPM++ SDE"])
def test_cfg_matches_a1111_cfg_denoiser(k, tiny_model, embeds, sampler: str) -> None:
    """With a negative prompt and CFG 7: A1111 mixes the two denoised outputs, diffusers the two eps; same result."""
    unet = tiny_model.pipe.unet
    negative = torch.randn((1, 77, 32), generator=torch.Generator().manual_seed(8))
    scale = 7.0

    class TinyCfg(k.external.DiscreteEpsDDPMDenoiser):
        def forward(self, x, sigma, **kwargs):
            cond = super().forward(x, sigma, context=embeds)
            uncond = super().forward(x, sigma, context=negative)
            return uncond + (cond - uncond) * scale

        def get_eps(self, x, t, context):
            return unet(x, t, encoder_hidden_states=context).sample

    denoiser = TinyCfg(None, kdiffusion_ref.ldm_alphas_cumprod(), quantize=False)
    spec, schedule = resolve_sampler(sampler)
    sigmas = a1111_sigmas(k, denoiser, effective_schedule(spec, schedule), 3)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(4))
    x = noise * sigmas[0]
    name, extra = K_FUNCTIONS[sampler]
    if sampler in BROWNIAN:
        extra = {"noise_sampler": k.sampling.BrownianTreeNoiseSampler(x, sigmas[sigmas > 0].min(), sigmas.max(),
                                                                      seed=[SEED])}
    elif sampler == "Euler a":
        generator = torch.Generator().manual_seed(SEED)
        extra = {"noise_sampler": lambda _s, _n: torch.randn(x.shape, generator=generator)}
    with torch.no_grad():
        expected = getattr(k.sampling, name)(denoiser, x, sigmas, disable=True, **extra)
        runner = job_pipeline(tiny_model, StableDiffusionPipeline, Sampling.resolve(sampler), [SEED])
        got = runner(prompt_embeds=embeds, negative_prompt_embeds=negative, guidance_scale=scale,
                     num_inference_steps=3, width=64, height=64, latents=noise.clone(),
                     generator=[torch.Generator().manual_seed(SEED)], output_type="latent").images
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


def test_half_precision_unet_with_cfg_runs_and_stays_close_to_float32(tiny_model, embeds) -> None:
    """fp16 UNet (CUDA's default) with CFG: fp16 latents handed back, close to the float32 run."""
    # Fresh components with the same weights: .to() casts modules in place, the shared tiny model must stay fp32.
    half = StableDiffusionPipeline(**tiny_sd1_components(seed=0), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False).to(dtype=torch.float16)
    model = LoadedModel(info=None, family="sd", variant="normal", pipe=half,
                        scheduler_config=base_scheduler_config(), default_size=64)
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(6))
    runner = job_pipeline(model, StableDiffusionPipeline, Sampling.resolve("DPM++ 2M SDE"), [SEED])
    with torch.no_grad():
        out = runner(prompt_embeds=embeds.half(), negative_prompt_embeds=embeds.half(), guidance_scale=3.0,
                     num_inference_steps=3, width=64, height=64, latents=noise.half(), output_type="latent").images
    assert out.dtype == torch.float16
    assert torch.isfinite(out).all()
    reference = _our_latents(tiny_model, embeds, "DPM++ 2M SDE", "Automatic", 3, noise)
    torch.testing.assert_close(out.float(), reference, rtol=0.05, atol=0.05)


def test_img2img_samples_every_schedule_type(services) -> None:
    """img2img runs A1111's k-diffusion samplers too, so schedule types diffusers lacks work there as well."""
    from PIL import Image

    from webui.types import Img2ImgRequest

    request = Img2ImgRequest(prompt="x", init_images=[Image.new("RGB", (64, 64))], width=64, height=64,
                             sampler_name="Euler", scheduler="Align Your Steps", steps=2, save_images=False)
    result = services.generation.img2img(request)
    assert "Schedule type: Align Your Steps" in result.infotexts[0]


@pytest.mark.parametrize(("sampler", "schedule", "written"), [
    ("Euler", "Automatic", None),  # A1111 writes no schedule where Automatic is the model's uniform one
    ("DPM++ 2M", "Automatic", "Karras"),  # ...and the sampler's default where Automatic picks one
    ("DPM2 a", "Beta", "Beta"), ("Euler a", "Align Your Steps", "Align Your Steps"),
    ("DPM++ 2M SDE", "KL Optimal", "KL Optimal"), ("Heun", "Polyexponential", "Polyexponential"),
])
def test_schedule_type_infotext_round_trip(sampler: str, schedule: str, written: str | None) -> None:
    from webui.infotext import format_infotext, parse_infotext, to_generation_fields
    from webui.parameters import InfotextContext, infotext_params
    from webui.types import Txt2ImgRequest

    request = Txt2ImgRequest(prompt="a cat", sampler_name=sampler, scheduler=schedule)
    params = infotext_params(request, InfotextContext(seed=1))
    assert params.get("Schedule type") == written
    fields = to_generation_fields(parse_infotext(format_infotext("a cat", "", params)))
    again = Txt2ImgRequest(**{k: v for k, v in fields.items() if k in Txt2ImgRequest.model_fields})
    assert again.sampling.effective_schedule == request.sampling.effective_schedule
    assert again.sampling.spec.name == sampler
