"""Hires fix, as A1111 1.10 runs it: the img2img sampling primitive (checked against k-diffusion, the library
A1111 samples with) and the two-pass txt2img job through ``POST /sdapi/v1/txt2img``."""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

import kdiffusion_ref
from test_sigmas import BROWNIAN, K_FUNCTIONS, _ldm_alphas_cumprod, a1111_sigmas
from tiny_models import tiny_sd1_components
from webui.k_samplers import ImageStart, img2img_steps
from webui.models.loader import LoadedModel, base_scheduler_config
from webui.pipelines.common import job_pipeline
from webui.samplers import Sampling, effective_schedule, resolve_sampler

pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Should have:UserWarning"),
]
SEED = 4321


@pytest.fixture(scope="module")
def k():
    return kdiffusion_ref.load()


@pytest.fixture(scope="module")
def tiny_model() -> LoadedModel:
    pipe = StableDiffusionPipeline(**tiny_sd1_components(seed=0), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    return LoadedModel(info=None, family="sd", variant="normal", pipe=pipe,
                       scheduler_config=base_scheduler_config(), default_size=64)


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

    denoiser = TinyCompVis(None, _ldm_alphas_cumprod(), quantize=False)
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
