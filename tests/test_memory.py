"""Memory policy: which savers each profile turns on, and what device/precision 'auto' resolves to."""

from __future__ import annotations

import pytest
import torch

from tests.tiny_models import tiny_sd1_components
from webui.models import memory


def test_cpu_resolves_to_bf16_or_fp32_and_the_cpu_profile():
    cpu = torch.device("cpu")
    assert memory.resolve_device("cpu") == cpu
    assert memory.resolve_dtype("auto", cpu, native=False) == torch.float32  # no native bf16: fp32, never fp16
    assert memory.resolve_dtype("auto", cpu, native=True) == torch.bfloat16  # where the CPU has native bf16
    assert memory.resolve_dtype("bf16", cpu) == torch.bfloat16
    assert memory.resolve_dtype("fp16", torch.device("cuda")) == torch.float16
    assert memory.resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert memory.resolve_profile("8gb", cpu) == "cpu"


@pytest.mark.parametrize("profile, family, expected", [
    ("full", "sd1", memory.MemoryPlan("full", vae_slicing=True)),
    ("8gb", "sd1", memory.MemoryPlan("8gb", vae_slicing=True, vae_tile_over=1024)),
    ("8gb", "sdxl", memory.MemoryPlan("8gb", vae_slicing=True, vae_tile_over=1024, text_encoders="visit")),
    ("4gb", "sd1", memory.MemoryPlan("4gb", vae_slicing=True, vae_tile_over=512, text_encoders="visit")),
    ("4gb", "sdxl", memory.MemoryPlan("4gb", attention_slicing=True, vae_slicing=True, vae_tile_over=512,
                                      offload="sequential")),
])
def test_profiles_trade_speed_for_memory_only_where_needed(profile, family, expected):
    plan = memory.plan_for(profile, family)
    assert plan == expected
    # SDPA is always on; attention slicing (slower on top of SDPA) only where SDXL must stream its weights.
    assert plan.attention_slicing == (profile == "4gb" and family == "sdxl")


def test_apply_plan_turns_the_savers_on():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_sd1_components(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    memory.apply_plan(pipe, memory.plan_for("4gb", "sdxl"), torch.device("cpu"))
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    assert pipe.unet.device.type == "cpu"  # offload needs CUDA; on CPU the model simply stays put


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="unknown memory profile"):
        memory.plan_for("2gb", "sd1")
