"""``--attention``: which kernel runs, the refusal of a forced kernel that cannot run, and what the report says."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0, SlicedAttnProcessor
from fastapi.testclient import TestClient

from tests.conftest import install, make_settings
from tests.tiny_models import tiny_sd1_components
from webui.models import attention
from webui.server import create_app
from webui.services.container import build_services

CUDA = torch.device("cuda")  # only compared against: nothing runs on it here
CPU = torch.device("cpu")


def _pipe() -> StableDiffusionPipeline:
    return StableDiffusionPipeline(**tiny_sd1_components(seed=0), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def test_forced_xformers_is_refused_with_the_fix_named():
    on_cpu = attention.problem("xformers", CPU, xformers=True)
    assert "needs a CUDA GPU" in on_cpu and "--attention auto" in on_cpu
    missing = attention.problem("xformers", CUDA, xformers=False)
    assert "pip install xformers" in missing
    assert attention.problem("xformers", CUDA, xformers=True) is None
    assert all(attention.problem(choice, CPU) is None for choice in ("auto", "sdpa", "slicing"))


def test_auto_is_sdpa_without_xformers_or_without_cuda():
    unet = _pipe().unet
    assert attention.choose("auto", CPU, unet, xformers=True) == "sdpa"
    assert attention.choose("auto", CUDA, unet, xformers=False) == "sdpa"


def test_slicing_only_where_the_plan_says_memory_is_short_and_a_forced_kernel_wins():
    unet = _pipe().unet
    assert attention.choose("auto", CUDA, unet, memory_short=True, xformers=True) == "slicing"
    assert attention.choose("sdpa", CUDA, unet, memory_short=True) == "sdpa"
    assert attention.choose("xformers", CUDA, unet, memory_short=True, xformers=True) == "xformers"
    pipe = _pipe()
    pipe.enable_attention_slicing()  # what the SDXL 4gb plan does before the kernel is set
    attention.apply(pipe, "sdpa")
    assert all(isinstance(p, AttnProcessor2_0) for p in pipe.unet.attn_processors.values())


@pytest.mark.parametrize("times, expected", [({"sdpa": 0.004, "xformers": 0.003}, "xformers"),
                                             ({"sdpa": 0.002, "xformers": 0.003}, "sdpa")])
def test_auto_keeps_the_faster_kernel_timed_on_the_unets_own_attention_shape(times, expected):
    unet = _pipe().unet
    asked = []

    def timer(kernel, shape):
        asked.append((kernel, shape))
        return times[kernel]

    assert attention.choose("auto", CUDA, unet, xformers=True, timer=timer) == expected
    shape = attention.largest_self_attention(unet)
    # The tiny UNet (tests/tiny_models.py): sample size 8, attention at its first level, 32 channels in 8 heads.
    assert (shape.batch, shape.tokens, shape.heads, shape.head_dim) == (2, 8 * 8, 8, 4)
    assert asked == [("sdpa", shape), ("xformers", shape)]


def test_a_failing_xformers_timing_falls_back_to_sdpa():
    def timer(kernel, shape):
        if kernel == "xformers":
            raise RuntimeError("no kernel for this GPU")
        return 0.001

    assert attention.choose("auto", CUDA, _pipe().unet, xformers=True, timer=timer) == "sdpa"


def test_slicing_and_sdpa_set_their_processors_and_give_the_same_image():
    def generate(pipe):
        return pipe("a cat", num_inference_steps=2, height=64, width=64, output_type="pt",
                    generator=torch.Generator().manual_seed(3)).images

    sdpa, sliced = _pipe(), _pipe()
    attention.apply(sdpa, attention.choose("sdpa", CPU, sdpa.unet))
    attention.apply(sliced, attention.choose("slicing", CPU, sliced.unet))
    assert all(isinstance(p, AttnProcessor2_0) for p in sdpa.unet.attn_processors.values())
    assert all(isinstance(p, SlicedAttnProcessor) for p in sliced.unet.attn_processors.values())
    assert torch.allclose(generate(sdpa), generate(sliced), atol=1e-4)


def test_forced_xformers_on_a_cpu_is_a_clear_load_error_and_the_report_names_the_kernel(
        data_dir, model_files, tiny_loader):
    install(model_files["single"], data_dir)
    refused = build_services(make_settings(data_dir, attention="xformers"), load=tiny_loader)
    try:
        with TestClient(create_app(refused), base_url="http://127.0.0.1:7860") as client:
            response = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64,
                                                               "height": 64})
            assert response.status_code == 422
            assert "xformers needs a CUDA GPU" in response.json()["error"]
    finally:
        refused.queue.shutdown()
    services = build_services(make_settings(data_dir), load=tiny_loader)  # --attention auto (the default)
    try:
        with services.manager.lease():
            pass
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
            (device,) = client.get("/studio/v1/devices").json()
        assert device["attention"] == "sdpa" and device["compiled"] is False
        assert device["plans"] == {services.manager.selected.title: {
            "profile": "cpu", "text_encoders": "device", "offload": "none", "vae_tile_over": None,
            "attention": "sdpa", "compiled": False}}
    finally:
        services.queue.shutdown()


def test_before_any_checkpoint_the_report_names_the_kernel_that_will_run() -> None:
    assert attention.expected("auto", CPU, xformers=True) == "sdpa"  # nothing to time without CUDA
    assert attention.expected("auto", CUDA, xformers=False) == "sdpa"
    assert attention.expected("auto", CUDA, xformers=True) == "auto"  # timed when a checkpoint loads
    assert attention.expected("slicing", CPU) == "slicing"
