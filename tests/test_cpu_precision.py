"""CPU precision: auto picks bf16 only where the CPU has native bf16, fp16 never runs on a CPU, bf16 images stay
close to fp32 ones, and the UI, the API and the log say which precision runs."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from tests.conftest import install, make_settings
from webui.cli import parse_settings
from webui.models import memory
from webui.models.precision import bf16_features, cpu_bf16_native, describe_precision
from webui.server import create_app
from webui.services.container import Services, build_services
from webui.services.runtime_info import describe_runtime
from webui.types import Img2ImgRequest, Txt2ImgRequest

PLAIN = "tiny-sd15.safetensors"
CPU = torch.device("cpu")
CUDA = torch.device("cuda")

# torch.cpu.get_capabilities() of three kinds of machine (only the keys that matter here).
SAPPHIRE_RAPIDS = {"architecture": "x86_64", "avx512_f": True, "avx512_bf16": True, "amx_bf16": True,
                   "amx_tile": True}
SKYLAKE_SERVER = {"architecture": "x86_64", "avx512_f": True, "avx512_bw": True, "avx512_bf16": False,
                  "amx_bf16": False}
GRAVITON3 = {"architecture": "aarch64", "neon": True, "bf16": True, "sve_bf16": True}


# --- the decision -----------------------------------------------------------------------------------------------------

def test_auto_is_bf16_on_a_cpu_with_native_bf16_and_fp32_without():
    assert memory.resolve_dtype("auto", CPU, native=True) == torch.bfloat16
    assert memory.resolve_dtype("auto", CPU, native=False) == torch.float32
    # Asked for by name, a precision is used whatever the CPU has (bf16 is only emulated without native support).
    assert memory.resolve_dtype("bf16", CPU, native=False) == torch.bfloat16
    assert memory.resolve_dtype("fp32", CPU, native=True) == torch.float32
    # A GPU's auto stays fp16.
    assert memory.resolve_dtype("auto", CUDA) == torch.float16
    assert memory.resolve_dtype("bf16", CUDA) == torch.bfloat16
    # This machine: auto follows what its CPU has.
    assert memory.resolve_dtype("auto", CPU) == (torch.bfloat16 if cpu_bf16_native() else torch.float32)


def test_native_bf16_means_amx_or_avx512_bf16_not_just_avx512():
    assert bf16_features(SAPPHIRE_RAPIDS) == ("AMX", "AVX512-BF16")
    assert bf16_features(SKYLAKE_SERVER) == ()  # AVX-512 alone: oneDNN emulates bf16, no faster than fp32
    # Arm's BF16 counts only where oneDNN has the Arm Compute Library kernels that use it.
    assert bf16_features(GRAVITON3) == ()
    assert bf16_features(GRAVITON3, arm_kernels=True) == ("Arm BF16", "SVE BF16")


def test_this_cpus_answer_agrees_with_onednn():
    """Where we call bf16 native, PyTorch's oneDNN must also run bf16 (its own check is looser: AVX-512 passes)."""
    if cpu_bf16_native():
        assert torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def test_precision_is_described_with_its_reason():
    assert describe_precision(torch.bfloat16, CPU, ("AMX", "AVX512-BF16")) == "bf16 (native AMX/AVX512-BF16)"
    assert describe_precision(torch.float32, CPU, ()) == "fp32 (this CPU has no native bf16)"
    assert "emulated" in describe_precision(torch.bfloat16, CPU, ())
    assert describe_precision(torch.float32, CPU, ("AMX",)) == "fp32 (as asked; this CPU has native bf16: AMX)"
    assert describe_precision(torch.float16, CUDA) == "fp16"


# --- fp16 on a CPU is refused -----------------------------------------------------------------------------------------

def test_fp16_on_a_cpu_is_refused_by_resolve_dtype_and_by_services_built_in_code(tmp_path):
    with pytest.raises(ValueError, match="fp16.*bf16 or fp32"):
        memory.resolve_dtype("fp16", CPU, native=True)
    with pytest.raises(ValueError, match="--precision fp16"):
        build_services(make_settings(tmp_path / "data", precision="fp16"))


@pytest.mark.parametrize("device", ["cpu", "cpu:0,cpu:1"]
                         + ([] if torch.cuda.is_available() else ["auto"]))
def test_fp16_on_a_cpu_is_refused_at_startup(device, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_settings(["--device", device, "--precision", "fp16"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--precision fp16" in error and "bf16 or fp32" in error


def test_fp16_for_a_cuda_device_passes_the_command_line():
    assert parse_settings(["--device", "cuda", "--precision", "fp16"]).precision == "fp16"
    assert parse_settings(["--device", "cpu", "--precision", "bf16"]).precision == "bf16"


# --- images in bf16 ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def both(tmp_path_factory, model_files, tiny_loader) -> Iterator[dict[str, Services]]:
    """The tiny checkpoints (plain, 9-channel inpainting, InstructPix2Pix) served twice: in fp32 and in bf16."""
    made = {}
    try:
        for precision in ("fp32", "bf16"):
            data_dir = tmp_path_factory.mktemp(precision) / "data"
            for kind in ("single", "inpaint", "ip2p"):
                install(model_files[kind], data_dir)
            made[precision] = build_services(make_settings(data_dir, precision=precision), load=tiny_loader)
        yield made
    finally:
        for services in made.values():
            services.queue.shutdown()


def _image(services: Services, seed: int, sampler: str) -> np.ndarray:
    request = Txt2ImgRequest(prompt="a red fox", seed=seed, steps=4, width=64, height=64, sampler_name=sampler,
                             checkpoint=PLAIN, save_images=False)
    return np.asarray(services.generation.txt2img(request).images[0]).astype(np.float64)


def _gradient() -> Image.Image:
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(ramp, (64, 1)), np.tile(ramp[:, None], (1, 64)),
                                     np.full((64, 64), 90, np.uint8)], -1))


def _square_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 48, 48), fill=255)
    return mask


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M"])
def test_bf16_images_are_close_to_fp32_and_not_blank(both, sampler):
    fp32, bf16 = _image(both["fp32"], 7, sampler), _image(both["bf16"], 7, sampler)
    other_seed = _image(both["bf16"], 8, sampler)
    precision_gap = np.abs(bf16 - fp32).mean()
    seed_gap = np.abs(bf16 - other_seed).mean()
    # Measured on the tiny model: about 1 level of 255 between bf16 and fp32, about 44 between two seeds.
    assert precision_gap < 4
    assert seed_gap > 10 * precision_gap
    assert bf16.std() > 20 and fp32.std() > 20  # a picture, not a black or flat frame


@pytest.mark.parametrize("checkpoint, masked", [(PLAIN, False), (PLAIN, True), ("tiny-inpainting.safetensors", True),
                                                ("toy-ip2p.safetensors", False)])
def test_img2img_inpainting_and_instruct_pix2pix_run_in_bf16(both, checkpoint, masked):
    init, mask = _gradient(), _square_mask() if masked else None

    def run(precision: str, seed: int) -> np.ndarray:
        request = Img2ImgRequest(prompt="make it winter", init_images=[init], mask=mask, seed=seed, steps=4,
                                 width=64, height=64, denoising_strength=0.75, checkpoint=checkpoint, mask_blur=0,
                                 save_images=False)
        return np.asarray(both[precision].generation.img2img(request).images[0]).astype(np.float64)

    bf16, fp32, other_seed = run("bf16", 3), run("fp32", 3), run("bf16", 4)
    assert np.abs(bf16 - fp32).mean() < 4
    assert np.abs(bf16 - other_seed).mean() > 3 * np.abs(bf16 - fp32).mean()
    assert bf16.std() > 20
    if masked:  # pixels outside the mask are the input's, exactly, in bf16 too
        outside = np.asarray(mask) == 0
        assert np.array_equal(bf16[outside], np.asarray(init).astype(np.float64)[outside])


def test_the_models_really_run_in_bf16(both):
    _image(both["bf16"], 1, "Euler a")
    with both["bf16"].manager.lease(PLAIN) as model:
        assert model.pipe.unet.dtype == torch.bfloat16
        assert model.pipe.text_encoder.dtype == torch.bfloat16


def test_a_merge_on_a_bf16_server_keeps_its_inputs_dtypes(both):
    """Models running in bf16 must not leak into files: merging fp32 checkpoints writes fp32."""
    from safetensors import safe_open

    from webui.services.merge_request import MergeRequest

    services = both["bf16"]
    _image(services, 1, "Euler a")  # a bf16 model is loaded while the merge runs
    services.merging.merge(MergeRequest(primary="tiny-inpainting.safetensors", secondary=PLAIN, multiplier=0.5,
                                        output_name="merged-on-bf16"), timeout=120)
    path = services.settings.checkpoints_dir / "merged-on-bf16.safetensors"
    with safe_open(str(path), "pt") as merged, safe_open(str(services.settings.checkpoints_dir / PLAIN), "pt") as a:
        dtypes = {merged.get_slice(key).get_dtype() for key in merged.keys()}
        assert dtypes == {a.get_slice(key).get_dtype() for key in a.keys()} and "BF16" not in dtypes


# --- saying which precision runs --------------------------------------------------------------------------------------

def test_api_and_ui_say_which_precision_runs(tmp_path, model_files, tiny_loader):
    """With --precision auto: what it resolved to, everywhere a user or client looks."""
    install(model_files["single"], tmp_path / "data")
    services = build_services(make_settings(tmp_path / "data", precision="auto"), load=tiny_loader)
    expected = "bf16" if cpu_bf16_native() else "fp32"
    try:
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
            runtime = client.get("/studio/v1/runtime").json()
            [device] = runtime["devices"]
            assert device["device"] == "cpu" and device["dtype"] == expected and device["profile"] == "cpu"
            assert device["precision"].startswith(f"{expected} (")  # with its reason
            assert runtime["summary"] == describe_runtime(services)
            assert runtime["summary"].startswith("CPU") and f" · {expected} (" in runtime["summary"]
            # A1111 clients read cmd-flags: the precision there is the one running, never "auto".
            assert client.get("/sdapi/v1/cmd-flags").json()["precision"] == expected
            [line] = [c["props"]["value"] for c in client.get("/config").json()["components"]
                      if c.get("props", {}).get("elem_id") == "runtime_info"]
            assert line == f"Running on {runtime['summary']}"
    finally:
        services.queue.shutdown()
