"""Ancestral samplers' step noise as A1111's ``rng.next()``: each image's own stream continued after its starting noise.

The reference is k-diffusion's ``sample_euler_ancestral`` (the function A1111 calls) with a ``noise_sampler`` that
draws from :class:`webui.pipelines.noise.Philox` streams, as A1111's NV generator (and CUDA's randn, which Philox
reproduces) would feed it. Our side runs the real txt2img batch code on a tiny model.
"""

from __future__ import annotations

import pytest
import torch

import kdiffusion_ref
from job_helpers import QuietListener
from webui.models.loader import LoadedModel
from webui.pipelines import conditioning, decode, txt2img
from webui.pipelines.noise import ImageNoise, NoiseSettings, Philox
from webui.types import Txt2ImgRequest

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

STEPS = 4
SEEDS = [101, 2024]


def _ours(monkeypatch, model: LoadedModel, sampler: str, source: str, seeds: list[int],
          ensd: int = 0) -> torch.Tensor:
    """Final latents of the real txt2img batch code (decode is skipped: the latents are what is compared)."""
    request = Txt2ImgRequest(prompt="a red fox", sampler_name=sampler, steps=STEPS, width=64, height=64,
                             cfg_scale=1.0, randn_source=source, eta_noise_seed_delta=ensd, save_images=False)
    captured = {}

    def keep(_vae, latents):
        captured["latents"] = latents.clone()
        return torch.zeros((latents.shape[0], 3, 8, 8))

    monkeypatch.setattr(decode, "decode_latents", keep)
    txt2img.run_batch(model, request, seeds, QuietListener(), preview_every=0)
    return captured["latents"]


def _reference(k, model: LoadedModel, seeds: list[int], ensd: int = 0) -> torch.Tensor:
    """k-diffusion's Euler a with A1111's noise: Philox per image, starting noise then the same stream's next draws."""
    pipe = model.pipe
    cond, _ = conditioning.encode_pair(pipe, "a red fox", "", 1, torch.device("cpu"))
    unet = pipe.unet
    embeds = cond.embeds.repeat(len(seeds), 1, 1)

    class TinyCompVis(k.external.DiscreteEpsDDPMDenoiser):
        def get_eps(self, x, t, **kwargs):
            return unet(x, t, encoder_hidden_states=embeds).sample

    denoiser = TinyCompVis(None, kdiffusion_ref.ldm_alphas_cumprod(), quantize=False)
    sigmas = denoiser.get_sigmas(STEPS)
    shape = (4, 32, 32)  # the tiny VAE halves: 64 px -> 32 latent cells
    streams = [Philox(seed) for seed in seeds]
    x = torch.stack([stream.randn(shape) for stream in streams]) * sigmas[0]
    if ensd:
        streams = [Philox(seed + ensd) for seed in seeds]  # A1111 restarts the streams at seed + ENSD
    with torch.no_grad():
        return k.sampling.sample_euler_ancestral(
            denoiser, x, sigmas, disable=True,
            noise_sampler=lambda _s, _n: torch.stack([stream.randn(shape) for stream in streams]))


@pytest.mark.parametrize("source", ["NV", "GPU"])
def test_euler_a_draws_its_step_noise_from_each_images_philox_stream(k, tiny_model, monkeypatch, source: str) -> None:
    expected = _reference(k, tiny_model, SEEDS)
    got = _ours(monkeypatch, tiny_model, "Euler a", source, SEEDS)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # The second image equals a run of its seed alone: the batch does not share a stream.
    single = _ours(monkeypatch, tiny_model, "Euler a", source, SEEDS[1:])
    torch.testing.assert_close(got[1:], single, rtol=1e-4, atol=1e-4)


def test_ensd_restarts_the_step_noise_at_seed_plus_delta(k, tiny_model, monkeypatch) -> None:
    expected = _reference(k, tiny_model, SEEDS[:1], ensd=31337)
    got = _ours(monkeypatch, tiny_model, "Euler a", "NV", SEEDS[:1], ensd=31337)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, _ours(monkeypatch, tiny_model, "Euler a", "NV", SEEDS[:1]), atol=1e-3)


def test_cpu_source_continues_the_torch_cpu_generator() -> None:
    noise = ImageNoise((4, 8, 8), [7, 8], [], NoiseSettings(source="CPU"), "cpu")
    first = noise.first()
    step = noise.next(torch.zeros((2, 4, 8, 8)))
    for i, seed in enumerate([7, 8]):
        reference = torch.Generator().manual_seed(seed)
        assert torch.equal(first[i], torch.randn((4, 8, 8), generator=reference))
        assert torch.equal(step[i], torch.randn((4, 8, 8), generator=reference))


def test_philox_step_noise_is_the_streams_next_offset() -> None:
    noise = ImageNoise((4, 8, 8), [5], [], NoiseSettings(source="NV"), "cpu")
    noise.first()
    stream = Philox(5)
    stream.randn((4, 8, 8))
    assert torch.equal(noise.next(torch.zeros((1, 4, 8, 8)))[0], stream.randn((4, 8, 8)))
    with pytest.raises(ValueError, match="2 latents"):
        noise.next(torch.zeros((2, 4, 8, 8)))
