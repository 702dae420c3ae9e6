"""Upscaler models: discovery, safe loading and detection (spandrel), tiled inference, and the extras job."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.upscaler_models import (esrgan_old_state, realesrgan_state, save_pth, save_safetensors, write_upscalers)
from webui.errors import InvalidRequest, ModelLoadError
from webui.models.upscalers import UpscalerRegistry, load_upscaler
from webui.pipelines.upscale import run_model, upscale_to
from webui.services.jobs import JobQueue
from webui.services.storage import ImageStore
from webui.services.upscaling import UPSCALER_KIND, ExtrasRequest, UpscalingService
from webui.types import UpscaleRequest


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.RandomState(seed).rand(height, width, 3) * 255).astype(np.uint8))


class NotWeights:
    """A custom class: unpickling it needs code from this module, which weights_only refuses."""

    def __init__(self):
        self.payload = "would run"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    models = tmp_path_factory.mktemp("upscalers") / "models"
    write_upscalers(models)
    save_safetensors(models / "RealESRGAN" / "RealESRGAN_x4_st.safetensors", realesrgan_state())
    save_safetensors(models / "ESRGAN" / "ESRGAN_2x_st.safetensors", esrgan_old_state())
    return models


# ------------------------------------------------------------------------------------------- detection


@pytest.mark.parametrize("name, arch, scale", [
    ("ESRGAN/ESRGAN_2x_tiny.pth", "ESRGAN", 2),               # original ESRGAN "model.N" layout
    ("ESRGAN/ESRGAN_2x_st.safetensors", "ESRGAN", 2),
    ("RealESRGAN/RealESRGAN_x4_tiny.pth", "ESRGAN", 4),       # BasicSR keys in a params_ema wrapper
    ("RealESRGAN/RealESRGAN_x4_st.safetensors", "ESRGAN", 4),
    ("SwinIR/sub/SwinIR_2x_tiny.pth", "SwinIR", 2),           # official SwinIR keys in a params wrapper
])
def test_original_layouts_are_detected_with_their_scale(models_dir, name, arch, scale):
    model = load_upscaler(models_dir / name)
    assert model.architecture.id == arch
    assert model.scale == scale
    out = run_model(model, noise_image(20, 16), tile=0)
    assert out.size == (20 * scale, 16 * scale)


def test_registry_lists_every_folder_and_sub_folder_by_stem(models_dir):
    registry = UpscalerRegistry(models_dir)
    names = {item.name: item.folder for item in registry.refresh()}
    assert names == {"ESRGAN_2x_st": "ESRGAN", "ESRGAN_2x_tiny": "ESRGAN", "RealESRGAN_x4_st": "RealESRGAN",
                     "RealESRGAN_x4_tiny": "RealESRGAN", "SwinIR_2x_tiny": "SwinIR"}
    assert registry.find("esrgan_2x_tiny").path.name == "ESRGAN_2x_tiny.pth"


def test_a_symlink_leaving_the_folder_is_not_listed(tmp_path, models_dir):
    models = tmp_path / "models"
    (models / "ESRGAN").mkdir(parents=True)
    os.symlink(models_dir / "ESRGAN" / "ESRGAN_2x_tiny.pth", models / "ESRGAN" / "outside.pth")
    assert UpscalerRegistry(models).refresh() == []
    assert [i.name for i in UpscalerRegistry(models, allow_external_links=True).refresh()] == ["outside"]


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"params_ema": realesrgan_state(), "extra": NotWeights()}, path)
    with pytest.raises(ModelLoadError, match=r"evil\.pth refused: not a plain weights file"):
        load_upscaler(path)


@pytest.mark.parametrize("content, message", [
    (b"\x00garbage" * 100, r"junk\.pth could not be read"),
    (None, r"junk\.pth: not an upscaler model this server knows"),
])
def test_a_file_that_is_not_an_upscaler_gets_a_message_naming_it(tmp_path, content, message):
    path = tmp_path / "junk.pth"
    if content is None:
        save_pth(path, {"encoder.weight": torch.zeros(4, 4)})
    else:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        load_upscaler(path)


# ------------------------------------------------------------------------------------------------ tiling


def test_tiled_result_matches_untiled_on_an_image_larger_than_a_tile(models_dir):
    model = load_upscaler(models_dir / "ESRGAN" / "ESRGAN_2x_tiny.pth")
    image = noise_image(80, 72)
    whole = np.asarray(run_model(model, image, tile=0), dtype=np.float64)
    tiles_done = []
    tiled = np.asarray(run_model(model, image, tile=32, overlap=8, on_tile=lambda d, t: tiles_done.append((d, t))),
                       dtype=np.float64)
    hard = np.asarray(run_model(model, image, tile=32, overlap=0), dtype=np.float64)
    assert tiles_done[-1] == (9, 9)  # 3 x 3 tiles of 32 over 80 x 72
    assert whole.shape == tiled.shape == (144, 160, 3)
    # Blended seams stay close to the untiled result; butt-joined tiles (no overlap) are visibly worse.
    assert np.abs(whole - tiled).mean() < 3.0
    assert np.abs(whole - hard).mean() > 2 * np.abs(whole - tiled).mean()


def test_upscale_to_runs_the_model_again_then_resizes_to_the_exact_size(models_dir):
    model = load_upscaler(models_dir / "ESRGAN" / "ESRGAN_2x_tiny.pth")
    passes = []
    out = upscale_to(model, noise_image(16, 12), (56, 40), tile=0, on_tile=lambda d, t: passes.append(d) if d else 0)
    assert out.size == (56, 40)
    assert len(passes) == 2  # 16 -> 32 -> 64 covers 56: two model passes, then Lanczos down to 56 x 40


# ------------------------------------------------------------------------------------------ the service


@pytest.fixture
def service(tmp_path, models_dir):
    queue = JobQueue(max_pending=4)
    svc = UpscalingService(models_dir, queue, ImageStore(tmp_path / "outputs"), tile_options=lambda: (32, 8))
    yield svc
    queue.shutdown()


def test_extras_job_upscales_with_a_model_saves_with_postprocessing_text(service, tmp_path):
    source = noise_image(40, 24)
    source.info["parameters"] = "a cat\nSteps: 20, Seed: 1"
    spec = UpscaleRequest(scale=2, upscaler_1="ESRGAN_2x_tiny")
    result = service.run(ExtrasRequest((source,), spec), timeout=60)
    assert result.images[0].size == (80, 48)
    assert result.infotexts[0] == "Postprocess upscale by: 2, Postprocess upscaler: ESRGAN_2x_tiny"
    path = result.paths[0]
    assert path is not None and path.parent.parent == tmp_path / "outputs" / "extras-images"
    saved = Image.open(path)
    assert saved.size == (80, 48)
    assert saved.info["postprocessing"] == result.infotexts[0]
    assert saved.info["parameters"] == "a cat\nSteps: 20, Seed: 1"  # the source's generation parameters kept


def test_a_model_upscaler_blends_with_a_second_and_crops_to_a_box(service):
    spec = UpscaleRequest(to_size=True, width=64, height=40, crop=True, upscaler_1="RealESRGAN_x4_tiny",
                          upscaler_2="Nearest", upscaler_2_visibility=0.5)
    result = service.run(ExtrasRequest((noise_image(24, 24),), spec, save=False), timeout=60)
    assert result.images[0].size == (64, 40)
    assert "Postprocess upscaler 2: Nearest" in result.infotexts[0]
    assert result.paths == (None,)


def test_the_last_model_stays_resident_one_at_a_time(service):
    device = service._queue.device_owners[0]
    for name in ("ESRGAN_2x_tiny", "SwinIR_2x_tiny"):
        service.run(ExtrasRequest((noise_image(16, 16),), UpscaleRequest(upscaler_1=name), save=False), timeout=60)
        assert device.names(UPSCALER_KIND) == [f"{UPSCALER_KIND}:{name}"]


def test_unknown_upscaler_and_face_restoration_are_refused_naming_the_field(service):
    with pytest.raises(InvalidRequest, match=r"^upscaler_2: unknown upscaler 'nope'.*ESRGAN_2x_tiny"):
        service.submit(ExtrasRequest((noise_image(8, 8),), UpscaleRequest(upscaler_2="nope")))
    with pytest.raises(InvalidRequest, match=r"^gfpgan_visibility: face restoration is not available.*face "
                                             r"detector"):
        service.submit(ExtrasRequest((noise_image(8, 8),), UpscaleRequest(), gfpgan_visibility=0.5))


def test_a_file_that_does_not_load_fails_the_job_with_its_name(tmp_path):
    models = tmp_path / "models"
    (models / "ESRGAN").mkdir(parents=True)
    (models / "ESRGAN" / "broken.pth").write_bytes(b"\x00not a model" * 20)
    queue = JobQueue(max_pending=4)
    try:
        svc = UpscalingService(models, queue, ImageStore(tmp_path / "outputs"))
        with pytest.raises(ModelLoadError, match=r"broken\.pth could not be read"):
            svc.run(ExtrasRequest((noise_image(8, 8),), UpscaleRequest(upscaler_1="broken")), timeout=60)
    finally:
        queue.shutdown()


def test_a_server_folder_batch_writes_named_files_and_skips_unreadable_ones(tmp_path, models_dir):
    from webui.services.folders import FolderPolicy

    data = tmp_path / "data"
    (data / "in").mkdir(parents=True)
    noise_image(16, 8).save(data / "in" / "one.png")
    noise_image(8, 8, seed=1).save(data / "in" / "two.png")
    (data / "in" / "bad.png").write_bytes(b"not a png")
    (data / "out").mkdir()
    (data / "out" / "one.png").write_bytes(b"kept")
    queue = JobQueue(max_pending=4)
    try:
        svc = UpscalingService(models_dir, queue, ImageStore(data / "outputs"), folders=FolderPolicy.build(data))
        result = svc.run(ExtrasRequest((), UpscaleRequest(upscaler_1="ESRGAN_2x_tiny"), input_dir="in",
                                       output_dir="out"), timeout=60)
        assert [p.name for p in result.paths] == ["one-1.png", "two.png"]  # never overwrites what is there
        assert (data / "out" / "one.png").read_bytes() == b"kept"
        assert Image.open(data / "out" / "one-1.png").size == (32, 16)
        assert any(w.startswith("Skipped bad.png") for w in result.warnings)
        with pytest.raises(InvalidRequest, match="^input_dir: not an existing folder"):
            svc.submit(ExtrasRequest((), UpscaleRequest(), input_dir="/etc"))
    finally:
        queue.shutdown()
    closed_queue = JobQueue(max_pending=1)
    try:
        closed = UpscalingService(models_dir, closed_queue, ImageStore(data / "outputs"),
                                  folders=FolderPolicy.build(data, enabled=False, disabled_reason="off here"))
        with pytest.raises(InvalidRequest, match="^input_dir: off here"):
            closed.submit(ExtrasRequest((), UpscaleRequest(), input_dir="in"))
    finally:
        closed_queue.shutdown()


def test_the_tile_options_set_the_tiling(service, models_dir):
    tiles = {}
    for tile in (16, 0):
        service._tile_options = lambda tile=tile: (tile, 8)
        job = service.submit(ExtrasRequest((noise_image(40, 40),), UpscaleRequest(upscaler_1="ESRGAN_2x_tiny"),
                                           save=False))
        job.wait(60)
        tiles[tile] = job.progress.steps
    assert tiles == {16: 16, 0: 1}  # 4 x 4 tiles of 16 px with 8 px overlap over 40 px; tile 0: the whole image


def test_esrgan_tile_options_are_validated():
    from webui.services.options import OPTIONS

    assert OPTIONS["ESRGAN_tile"].check("ESRGAN_tile", 256) == 256
    with pytest.raises(InvalidRequest, match="^ESRGAN_tile: must be from 0 to 512"):
        OPTIONS["ESRGAN_tile"].check("ESRGAN_tile", 1000)
    with pytest.raises(InvalidRequest, match="^ESRGAN_tile_overlap: must be an integer"):
        OPTIONS["ESRGAN_tile_overlap"].check("ESRGAN_tile_overlap", 2.5)


def test_interrupt_keeps_the_images_already_upscaled(service):
    calls = []

    def tile_options():  # read once per image: the second image is interrupted as it starts
        calls.append(1)
        if len(calls) == 2:
            service._queue.interrupt()
        return 32, 8

    service._tile_options = tile_options
    images = tuple(noise_image(16, 16, seed=i) for i in range(3))
    result = service.run(ExtrasRequest(images, UpscaleRequest(upscaler_1="ESRGAN_2x_tiny"), save=False), timeout=60)
    assert len(result.images) == 1
    assert result.warnings == ("Interrupted after 1 of 3 images.",)
