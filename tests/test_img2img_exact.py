"""img2img and inpainting as A1111 samples them with its k-diffusion samplers (``sample_img2img``): the tail of
the schedule from ``int(strength * steps)``, A1111's noise, and for inpainting the latent mask applied to every
denoised prediction. Checked against the ``k-diffusion`` package, the library A1111 samples with."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image, ImageDraw

import kdiffusion_ref
from test_prompt_syntax import UNetInputs
from test_sigmas import K_FUNCTIONS, a1111_sigmas
from webui.models.registry import CheckpointInfo
from webui.pipelines import common, decode, img2img, noise
from webui.pipelines.encode import encode_images
from webui.samplers import effective_schedule, resolve_sampler
from webui.types import Img2ImgRequest

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]
SEED = 21


class Steps:
    def __init__(self):
        self.seen: list[tuple[int, int]] = []

    def on_step(self, step, steps, preview):
        self.seen.append((step, steps))

    def should_stop(self):
        return False


def _load(model_files, tiny_loader, key):
    path = model_files[key]
    info = CheckpointInfo(path=path, name=path.name, model_name=path.stem, kind="safetensors", short_hash=None,
                          sha256=None)
    return tiny_loader(info, torch.float32)


@pytest.fixture(scope="module")
def tiny(model_files, tiny_loader):
    return _load(model_files, tiny_loader, "single")


@pytest.fixture(scope="module")
def inpaint_model(model_files, tiny_loader):
    return _load(model_files, tiny_loader, "inpaint")


def picture() -> Image.Image:
    x = np.linspace(0, 255, 64, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(x, (64, 1)), np.tile(x[:, None], (1, 64)),
                                     np.full((64, 64), 90, np.uint8)], axis=-1))


def square_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    return mask


def request(**fields) -> Img2ImgRequest:
    base = dict(prompt="a red house", init_images=[picture()], width=64, height=64, steps=6, seed=SEED,
                cfg_scale=1.0, sampler_name="Euler", denoising_strength=0.5, mask_blur=0, inpaint_full_res=False,
                inpainting_fill=1)
    return Img2ImgRequest(**{**base, **fields})


def a1111_reference(k, model, embeds, req: Img2ImgRequest, init, start_noise, keep=None,
                    noise_sampler=None) -> torch.Tensor:
    """A1111's sample_img2img over k-diffusion's sampler, with CFGDenoiser's inpainting blend when ``keep``."""
    unet = model.pipe.unet

    class TinyCompVis(k.external.DiscreteEpsDDPMDenoiser):
        def get_eps(self, x, t, **kwargs):
            return unet(x, t, encoder_hidden_states=embeds).sample

    denoiser = TinyCompVis(None, kdiffusion_ref.ldm_alphas_cumprod(), quantize=False)

    def blended(x, sigma, **kwargs):
        denoised = denoiser(x, sigma, **kwargs)
        return denoised if keep is None else init * keep + (1 - keep) * denoised

    spec, _ = resolve_sampler(req.sampler_name, "Automatic")
    if req.img2img_fix_steps:  # sd_samplers_common.setup_img2img_steps with opts.img2img_fix_steps
        steps, t_enc = int(req.steps / min(req.denoising_strength, 0.999)), req.steps - 1
    else:
        steps, t_enc = req.steps, int(min(req.denoising_strength, 0.999) * req.steps)
    sigmas = a1111_sigmas(k, denoiser, effective_schedule(spec, "Automatic"), steps)
    sigma_sched = sigmas[steps - t_enc - 1:]
    name, extra = K_FUNCTIONS[req.sampler_name]
    if noise_sampler is not None:
        extra = {**extra, "noise_sampler": noise_sampler}
    with torch.no_grad():
        out = getattr(k.sampling, name)(blended, init + start_noise * sigma_sched[0], sigma_sched, disable=True,
                                        **extra)
    return out if keep is None else out * (1 - keep) + init * keep


def start_of(model, req: Img2ImgRequest, prepared):
    runner = common.job_pipeline(model, StableDiffusionImg2ImgPipeline, req.sampling, [SEED], exact=True)
    init = encode_images(runner, [prepared.image], [SEED])
    start_noise, _ = noise.initial_noise(tuple(init.shape[1:]), [SEED], [], noise.NoiseSettings(), "cpu")
    return init, start_noise


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "Heun"])
@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_img2img_equals_a1111_sample_img2img_on_k_diffusion(k, tiny, sampler, strength):
    req = request(sampler_name=sampler, denoising_strength=strength)
    prepared = img2img.prepare(req, req.init_images[0], "img2img")
    with UNetInputs(tiny.pipe.unet) as inputs:
        out = img2img.run_batch(tiny, req, prepared, "img2img", [SEED], Steps(), preview_every=0)
    init, start_noise = start_of(tiny, req, prepared)
    expected = a1111_reference(k, tiny, inputs.seen[0], req, init, start_noise)
    [reference] = decode.to_pil(decode.decode_latents(tiny.pipe.vae, expected))
    assert np.abs(pixels(out.images[0]) - pixels(reference)).max() <= 1
    assert np.abs(pixels(out.images[0]) - pixels(picture())).mean() > 1  # it sampled


def test_img2img_runs_a1111s_step_count_and_reports_it():
    """int(strength * steps) + 1 steps, one more than diffusers' img2img; all of them at strength 1."""
    assert img2img.steps_run(request(steps=6, denoising_strength=0.5), "img2img") == 4
    assert img2img.steps_run(request(steps=20, denoising_strength=0.75), "img2img") == 16
    assert img2img.steps_run(request(steps=20, denoising_strength=1.0), "inpaint") == 20
    assert img2img.steps_run(request(steps=20, denoising_strength=0.75, sampler_name="DDIM"), "img2img") == 15
    assert img2img.steps_run(request(steps=20, denoising_strength=0.0), "img2img") == 0


def test_progress_counts_a1111s_steps(tiny):
    req = request(steps=6, denoising_strength=0.5, sampler_name="Heun")  # two UNet calls a step, 4 steps
    listener = Steps()
    img2img.run_batch(tiny, req, img2img.prepare(req, req.init_images[0], "img2img"), "img2img", [SEED],
                      listener, preview_every=0)
    assert {total for _step, total in listener.seen} == {4}
    assert max(step for step, _total in listener.seen) == 4


def test_inpainting_blends_the_init_latents_into_every_prediction_as_a1111(k, tiny):
    req = request(mask=square_mask(), denoising_strength=0.75)
    prepared = img2img.prepare(req, req.init_images[0], "inpaint")
    with UNetInputs(tiny.pipe.unet) as inputs:
        out = img2img.run_batch(tiny, req, prepared, "inpaint", [SEED], Steps(), preview_every=0)
    init, start_noise = start_of(tiny, req, prepared)
    size = (init.shape[-1], init.shape[-2])
    latent_mask = np.asarray(square_mask().convert("RGB").resize(size), dtype=np.float32)[..., 0] / 255
    keep = (1 - torch.from_numpy(np.around(latent_mask)))[None, None].expand_as(init)
    expected = a1111_reference(k, tiny, inputs.seen[0], req, init, start_noise, keep)
    [reference] = decode.to_pil(decode.decode_latents(tiny.pipe.vae, expected))
    reference = img2img.finish(prepared, reference)
    assert np.abs(pixels(out.images[0]) - pixels(reference)).max() <= 1
    outside = np.asarray(square_mask()) == 0
    assert np.abs(pixels(out.images[0]) - pixels(picture()))[outside].max() == 0  # pasted back untouched


@pytest.mark.parametrize("fill", [2, 3])
def test_latent_fills_replace_the_masked_latents_as_a1111(tiny, fill):
    req = request(mask=square_mask(), inpainting_fill=fill)
    prepared = img2img.prepare(req, req.init_images[0], "inpaint")
    runner = common.job_pipeline(tiny, StableDiffusionImg2ImgPipeline, req.sampling, [SEED], exact=True)
    start, _noise = img2img._image_start(runner, req, prepared, [SEED], [])
    masked = start.keep_mask == 0
    assert masked.any() and (~masked).any()
    seeds_noise, _ = noise.initial_noise(tuple(start.latents.shape[1:]), [SEED], [], noise.NoiseSettings(), "cpu")
    expected = seeds_noise[masked] if fill == 2 else torch.zeros(int(masked.sum()))
    torch.testing.assert_close(start.latents[masked], expected)
    plain = encode_images(runner, [prepared.image], [SEED])
    torch.testing.assert_close(start.latents[~masked], plain[~masked])


@pytest.mark.parametrize("sampler, scheduler", [("Euler a", "Automatic"), ("DPM++ 2M", "Beta"),
                                                ("DPM++ SDE", "Karras")])
def test_inpainting_checkpoints_sample_with_a1111s_samplers_and_schedules(inpaint_model, sampler, scheduler):
    req = request(mask=square_mask(), sampler_name=sampler, scheduler=scheduler, denoising_strength=1.0, steps=3)
    prepared = img2img.prepare(req, req.init_images[0], "inpaint")
    seen_channels = []
    handle = inpaint_model.pipe.unet.register_forward_pre_hook(lambda _m, args: seen_channels.append(args[0].shape[1]))
    try:
        listener = Steps()
        out = img2img.run_batch(inpaint_model, req, prepared, "inpaint", [SEED], listener, preview_every=0)
    finally:
        handle.remove()
    assert set(seen_channels) == {9}
    assert max(step for step, _total in listener.seen) == 3
    outside = np.asarray(square_mask()) == 0
    assert np.abs(pixels(out.images[0]) - pixels(picture()))[outside].max() == 0


def test_fill_paints_the_masked_area_with_the_surrounding_colours_as_a1111():
    from webui.images import pre_fill

    image = Image.new("RGB", (64, 64), (200, 30, 30))
    ImageDraw.Draw(image).rectangle((40, 0, 63, 63), fill=(20, 40, 220))  # blue band on the right
    image.paste((0, 255, 0), (8, 20, 24, 36))  # a green square, masked out below
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((8, 20, 23, 35), fill=255)
    filled = pixels(pre_fill(image, mask))
    outside = np.asarray(mask) == 0
    assert np.abs(filled - pixels(image))[outside].max() <= 1  # unmasked pixels stay
    centre = filled[28, 16]
    assert centre[0] > 150 and centre[1] < 80  # red from around it, none of the green it replaced


@pytest.mark.parametrize("source", ["GPU", "NV", "CPU"])
def test_ancestral_step_noise_continues_each_images_stream_as_a1111(k, tiny, source):
    """Euler a in img2img: the starting noise and then every step's noise are A1111's rng.next() draws."""
    req = request(sampler_name="Euler a", denoising_strength=0.8, randn_source=source)
    prepared = img2img.prepare(req, req.init_images[0], "img2img")
    with UNetInputs(tiny.pipe.unet) as inputs:
        out = img2img.run_batch(tiny, req, prepared, "img2img", [SEED], Steps(), preview_every=0)
    runner = common.job_pipeline(tiny, StableDiffusionImg2ImgPipeline, req.sampling, [SEED], exact=True)
    init = encode_images(runner, [prepared.image], [SEED])
    streams = noise.ImageNoise(tuple(init.shape[1:]), [SEED], [], noise.NoiseSettings(source), "cpu")
    start_noise = streams.first()
    expected = a1111_reference(k, tiny, inputs.seen[0], req, init, start_noise,
                               noise_sampler=lambda _s, _n: streams.next(init))
    [reference] = decode.to_pil(decode.decode_latents(tiny.pipe.vae, expected))
    assert np.abs(pixels(out.images[0]) - pixels(reference)).max() <= 1


def test_img2img_fix_steps_runs_exactly_the_steps_as_a1111s_option(k, tiny):
    req = request(steps=4, denoising_strength=0.5, img2img_fix_steps=True)
    assert img2img.steps_run(req, "img2img") == 4  # of a schedule stretched to 8
    prepared = img2img.prepare(req, req.init_images[0], "img2img")
    listener = Steps()
    with UNetInputs(tiny.pipe.unet) as inputs:
        out = img2img.run_batch(tiny, req, prepared, "img2img", [SEED], listener, preview_every=0)
    assert len(inputs.seen) == 4 and {total for _step, total in listener.seen} == {4}
    init, start_noise = start_of(tiny, req, prepared)
    expected = a1111_reference(k, tiny, inputs.seen[0], req, init, start_noise)
    [reference] = decode.to_pil(decode.decode_latents(tiny.pipe.vae, expected))
    assert np.abs(pixels(out.images[0]) - pixels(reference)).max() <= 1
