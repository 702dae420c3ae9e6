"""Memory plans per (free GPU memory, family, profile), and that every plan leaves a pipeline that generates.

The GPU-only parts (text encoders visiting the GPU, sequential offload) cannot run here: for those the tests check
what the plan says; everything that also runs on a CPU (VAE slicing/tiling thresholds, attention slicing) is run.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

from tests.tiny_models import tiny_sd1_components
from webui.models import memory
from webui.models.memory import GIB

CUDA = torch.device("cuda")  # only compared, never used: plans are decided from the free memory given
CPU = torch.device("cpu")


@pytest.mark.parametrize("free_gib, family, expected", [
    (20.0, "sdxl", "full"),
    (12.0, "sdxl", "full"),
    (11.9, "sdxl", "8gb"),     # a 12 GB card with a little in use: SDXL no longer fits with everything resident
    (7.0, "sdxl", "8gb"),      # a real 8 GB card after its CUDA context
    (6.4, "sdxl", "4gb"),
    (6.0, "sd1", "full"),
    (5.0, "sd1", "8gb"),
    (3.0, "sd1", "4gb"),
    (7.0, "sdxl-refiner", "8gb"),
])
def test_auto_picks_the_profile_from_the_free_memory(free_gib, family, expected):
    assert memory.auto_profile(int(free_gib * GIB), family) == expected


def test_auto_is_decided_per_load_from_free_memory_not_the_cards_size():
    # The manager keeps "auto" on a GPU; each checkpoint's plan is chosen from what is free when it is placed.
    assert memory.resolve_profile("auto", CUDA) == "auto"
    big = memory.plan_for_load("auto", "sdxl", CUDA, free=40 * GIB)
    assert big.profile == "full" and big.text_encoders == "device" and big.vae_tile_over is None
    busy = memory.plan_for_load("auto", "sdxl", CUDA, free=9 * GIB)  # same card, another process holds 31 GiB
    assert busy.profile == "8gb" and busy.text_encoders == "visit"
    assert memory.plan_for_load("4gb", "sdxl", CPU) == memory.plan_for("cpu", "sdxl")  # a CPU has one plan


def test_sdxl_8gb_keeps_unet_and_vae_resident_and_the_text_encoders_visiting():
    plan = memory.plan_for("8gb", "sdxl", free=7.9 * GIB)
    assert plan.offload == "none"  # neither diffusers' model offload (2.4x) nor sequential offload
    assert plan.text_encoders == "visit"
    assert not plan.attention_slicing  # 45% slower on an H100: not where the UNet fits
    assert plan.vae_tile_over == 1024  # 1024² decodes whole; only larger images are tiled


def test_a_real_8gb_card_also_tiles_the_vae_from_1024():
    tight = memory.plan_for_load("auto", "sdxl", CUDA, free=int(7.0 * GIB))
    assert tight.profile == "8gb" and tight.text_encoders == "visit"
    assert tight.vae_tile_over == 512  # 1024² is larger than 512 a side: tiled
    assert not tight.attention_slicing


def test_sd1_keeps_everything_resident_on_8gb_and_only_the_text_encoder_visits_on_4gb():
    eight = memory.plan_for("8gb", "sd1", free=7 * GIB)
    assert (eight.text_encoders, eight.offload, eight.attention_slicing) == ("device", "none", False)
    four = memory.plan_for("4gb", "sd1", free=3 * GIB)
    assert (four.text_encoders, four.offload, four.attention_slicing) == ("visit", "none", False)
    assert four.vae_tile_over == 512
    sdxl_four = memory.plan_for("4gb", "sdxl", free=3 * GIB)
    assert sdxl_four.offload == "sequential" and sdxl_four.attention_slicing


def _pipe() -> StableDiffusionPipeline:
    return StableDiffusionPipeline(**tiny_sd1_components(seed=0), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _generate(pipe, size: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return pipe("a cat", num_inference_steps=2, height=size, width=size, generator=generator,
                output_type="pt").images


PLANS = [memory.plan_for(profile, family, free) for profile, family, free in (
    ("cpu", "sd1", None), ("full", "sd1", None), ("8gb", "sd1", None), ("8gb", "sdxl", None),
    ("8gb", "sdxl", 7 * GIB), ("4gb", "sd1", None), ("4gb", "sdxl", None))]
# (a plan's VAE tiling on larger images: test_vae_tiling_starts_only_above_the_plans_threshold)


@pytest.fixture(scope="module")
def eager_image() -> torch.Tensor:
    return _generate(_pipe())


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: f"{p.profile}-{p.text_encoders}-{p.vae_tile_over}")
def test_every_plan_leaves_a_pipeline_that_generates_on_the_cpu(plan, eager_image):
    pipe = _pipe()
    memory.apply_plan(pipe, plan, CPU)
    image = _generate(pipe)
    assert image.shape == eager_image.shape and torch.isfinite(image).all()
    # 64² is under every tile threshold, and attention slicing computes the same attention: the plain image.
    assert (image - eager_image).abs().max() < 1e-4


def test_vae_tiling_starts_only_above_the_plans_threshold():
    pipe = _pipe()
    latents = torch.randn(1, 4, 48, 48, generator=torch.Generator().manual_seed(1))  # a 96² image (VAE factor 2)
    with torch.no_grad():
        whole = pipe.vae.decode(latents).sample
        memory.set_vae_tiling(pipe.vae, 96)  # not larger than 96 a side: decoded whole
        assert torch.equal(pipe.vae.decode(latents).sample, whole)
        memory.set_vae_tiling(pipe.vae, 64)  # larger: tiled in 64 px tiles, blended
        tiled = pipe.vae.decode(latents).sample
        assert not torch.equal(tiled, whole) and tiled.shape == whole.shape and torch.isfinite(tiled).all()
        memory.set_vae_tiling(pipe.vae, None)
        assert torch.equal(pipe.vae.decode(latents).sample, whole)


# Text encoders visiting the GPU, checked with the "meta" device standing in for it (weights there have shapes,
# no data: moving onto it and running a forward works; moving back off it cannot, so each direction is its own test).
META = torch.device("meta")


def _ids(pipe) -> torch.Tensor:
    return pipe.tokenizer(["a cat"], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                          return_tensors="pt").input_ids


def test_the_visit_plan_leaves_the_text_encoder_home_and_brings_it_for_the_prompt():
    pipe = _pipe()
    memory.apply_plan(pipe, memory.plan_for("8gb", "sdxl", free=7 * GIB), META)
    assert pipe.unet.device == META and pipe.vae.device == META  # resident on the device
    assert pipe.text_encoder.device == CPU                     # at home in RAM until a prompt is encoded
    out = pipe.text_encoder(_ids(pipe))                          # ids made on the CPU follow the encoder
    assert pipe.text_encoder.device == META and out.last_hidden_state.device == META


def test_the_unet_sends_visiting_text_encoders_home_before_it_runs():
    from webui.models.fast_path import dummy_inputs
    from webui.models.offload import TextEncoderVisits

    pipe = _pipe()
    # Here the CPU is the "device" and meta is "home": what matters is that the UNet's call sends them home.
    visits = TextEncoderVisits([pipe.text_encoder], pipe.unet, device=CPU, home=META)
    pipe.text_encoder(_ids(pipe))
    assert pipe.text_encoder.device == CPU and visits.visits == 0  # already there: nothing moved
    with torch.no_grad():
        pipe.unet(**dummy_inputs(pipe.unet, CPU))
    assert pipe.text_encoder.device == META
    visits.remove()
