"""The generation service end to end on tiny real models: images, seeds, files, infotext, interrupt, skip."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from tests.conftest import install, make_settings
from webui.api.a1111_info import a1111_info
from webui.errors import InvalidRequest, NoModelAvailable
from webui.infotext import parse_infotext
from webui.services.container import build_services
from webui.types import JobState, Txt2ImgRequest

SMALL = dict(width=64, height=64, steps=3)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_generates_saves_png_with_infotext(services, data_dir):
    request = Txt2ImgRequest(prompt="a (red:1.2) fox\nin snow", negative_prompt="blurry, dark", seed=1234,
                             sampler_name="Euler a", cfg_scale=6.5, **SMALL)
    result = services.generation.txt2img(request)
    assert len(result.images) == 1 and result.seeds == [1234]
    image = result.images[0]
    assert image.size == (64, 64)
    assert pixels(image).std() > 1  # a real picture, not a flat or black frame
    [path] = result.paths
    assert path.parent.parent.name == "txt2img-images"
    assert path.name == "00000-1234.png"
    parsed = parse_infotext(Image.open(path).info["parameters"])
    assert parsed.prompt == "a (red:1.2) fox\nin snow"
    assert parsed.negative_prompt == "blurry, dark"
    selected = services.manager.selected
    assert parsed.params["Seed"] == "1234"
    assert parsed.params["Sampler"] == "Euler a"
    assert parsed.params["CFG scale"] == "6.5"
    assert parsed.params["Size"] == "64x64"
    assert parsed.params["Model hash"] == selected.short_hash
    assert parsed.params["Model"] == selected.model_name
    assert not list(path.parent.glob(".tmp-*"))  # atomic writes leave nothing behind


def test_same_request_and_seed_gives_same_image_different_seed_differs(services):
    for sampler in ("Euler a", "DPM++ 2M", "DDIM", "DPM++ SDE"):
        request = Txt2ImgRequest(prompt="a cat", seed=7, sampler_name=sampler, save_images=False, **SMALL)
        first = services.generation.txt2img(request).images[0]
        again = services.generation.txt2img(request).images[0]
        other = services.generation.txt2img(request.model_copy(update={"seed": 8})).images[0]
        assert np.array_equal(pixels(first), pixels(again)), sampler
        assert not np.array_equal(pixels(first), pixels(other)), sampler


def test_batches_use_consecutive_seeds_and_numbered_files(services):
    request = Txt2ImgRequest(prompt="a cat", seed=100, batch_size=2, n_iter=2, **SMALL)
    result = services.generation.txt2img(request)
    assert result.seeds == [100, 101, 102, 103]
    assert [p.name for p in result.paths] == ["00000-100.png", "00001-101.png", "00002-102.png", "00003-103.png"]
    assert a1111_info(result)["all_seeds"] == [100, 101, 102, 103]
    assert [f"Seed: {s}," in t for s, t in zip(result.seeds, result.infotexts)] == [True] * 4
    # Image k of a batch matches a single run with seed + k (up to batch-size rounding).
    single = services.generation.txt2img(Txt2ImgRequest(prompt="a cat", seed=101, save_images=False, **SMALL))
    assert np.abs(pixels(result.images[1]) - pixels(single.images[0])).max() <= 2


def test_random_seed_is_reported(services):
    result = services.generation.txt2img(Txt2ImgRequest(prompt="x", seed=-1, save_images=False, **SMALL))
    assert 0 <= result.seeds[0] < 2**32
    assert f"Seed: {result.seeds[0]}," in result.infotexts[0]


def test_prompt_emphasis_and_long_prompts_change_the_image(services):
    base = Txt2ImgRequest(prompt="a cat on a sofa", seed=3, save_images=False, **SMALL)
    plain = services.generation.txt2img(base).images[0]
    weighted = services.generation.txt2img(base.model_copy(update={"prompt": "a (cat:1.6) on a sofa"})).images[0]
    assert not np.array_equal(pixels(plain), pixels(weighted))
    long_prompt = ", ".join(f"word{i}" for i in range(120))  # ~240 tokens: 4 chunks, never truncated
    tail_changed = long_prompt.replace("word119", "sunset")
    a = services.generation.txt2img(base.model_copy(update={"prompt": long_prompt})).images[0]
    b = services.generation.txt2img(base.model_copy(update={"prompt": tail_changed})).images[0]
    assert not np.array_equal(pixels(a), pixels(b)), "words past 75 tokens must still matter"


def test_clip_skip_and_schedule_are_recorded(services):
    request = Txt2ImgRequest(prompt="x", seed=1, clip_skip=2, sampler_name="DPM++ 2M", scheduler="Karras",
                             save_images=False, **SMALL)
    text = services.generation.txt2img(request).infotexts[0]
    assert "Clip skip: 2" in text
    assert "Sampler: DPM++ 2M, Schedule type: Karras" in text


def test_requests_name_their_bad_field(services):
    with pytest.raises(InvalidRequest) as info:
        Txt2ImgRequest.parse(prompt="x", width=100)
    assert info.value.field == "width" and "multiple of 8" in str(info.value)
    with pytest.raises(InvalidRequest) as info:
        Txt2ImgRequest.parse(prompt="x", cfg_scale=float("nan"))
    assert info.value.field == "cfg_scale"
    with pytest.raises(InvalidRequest, match="sampler_name: Unknown sampler 'Bogus'. Valid samplers: Euler a"):
        services.generation.submit_txt2img(Txt2ImgRequest(sampler_name="Bogus", **SMALL))
    with pytest.raises(InvalidRequest, match="width: 1024 is over this server's limit of 512"):
        services.generation.submit_txt2img(Txt2ImgRequest(width=1024, height=64, steps=3))
    with pytest.raises(InvalidRequest, match="checkpoint: Checkpoint 'missing' not found"):
        services.generation.submit_txt2img(Txt2ImgRequest(checkpoint="missing", **SMALL))


def test_request_can_pick_a_checkpoint_per_job(services):
    request = Txt2ImgRequest(prompt="a cat", seed=5, save_images=False, **SMALL)
    a = services.generation.txt2img(request.model_copy(update={"checkpoint": "tiny-sd15"}))
    b = services.generation.txt2img(request.model_copy(update={"checkpoint": "other-sd15"}))
    assert "Model: tiny-sd15," in a.infotexts[0] and "Model: other-sd15," in b.infotexts[0]
    assert not np.array_equal(pixels(a.images[0]), pixels(b.images[0]))


class _StopAt:
    """Interrupt or skip the job when its progress reaches a given step."""

    def __init__(self, job, step: int, action: str):
        self.job, self.step, self.action = job, step, action
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        version = 0
        while not self.job.finished:
            version, progress = self.job.watch(version, timeout=5)
            if progress.step >= self.step and progress.image_index == 0:
                getattr(self.job, self.action)()
                return


def test_interrupt_stops_early_and_keeps_what_was_made(services):
    job = services.generation.submit_txt2img(Txt2ImgRequest(prompt="x", seed=1, n_iter=5, width=64, height=64,
                                                            steps=40, save_images=False))
    _StopAt(job, 2, "interrupt")
    result = job.wait(timeout=120)
    assert result.interrupted
    assert len(result.images) == 1  # the batch in flight is returned, the other four never start
    assert job.progress.state is JobState.DONE


def test_skip_ends_the_current_batch_keeps_it_and_continues(services):
    job = services.generation.submit_txt2img(Txt2ImgRequest(prompt="x", seed=1, n_iter=2, width=64, height=64,
                                                            steps=30, save_images=False))
    _StopAt(job, 2, "skip")
    result = job.wait(timeout=120)
    assert not result.interrupted
    assert result.seeds == [1, 2]  # A1111: the skipped batch's images come back, decoded where it stopped
    assert result.images[0].size == (64, 64)


def test_progress_reports_steps_and_previews(services):
    services.options.update({"show_progress_every_n_steps": 1})
    job = services.generation.submit_txt2img(Txt2ImgRequest(prompt="x", seed=1, save_images=False,
                                                            width=64, height=64, steps=4))
    seen = []
    version = 0
    while not job.finished:
        version, progress = job.watch(version, timeout=5)
        seen.append(progress)
    job.wait()
    assert {p.step for p in seen if p.state is JobState.RUNNING} >= {1, 2, 3}
    assert any(p.preview is not None for p in seen)


def test_no_checkpoint_gives_a_clear_error(data_dir):
    services = build_services(make_settings(data_dir))
    try:
        with pytest.raises(NoModelAvailable, match="No checkpoint found"):
            services.generation.txt2img(Txt2ImgRequest(**SMALL))
    finally:
        services.queue.shutdown()


def test_instruct_pix2pix_checkpoint_is_refused_for_txt2img(data_dir, model_files, tiny_loader):
    """It needs an image to edit (an inpainting checkpoint paints a blank one: tests/test_blank_inpaint.py)."""
    install(model_files["ip2p"], data_dir)
    services = build_services(make_settings(data_dir), load=tiny_loader)
    try:
        with pytest.raises(InvalidRequest, match="instruct-pix2pix model; use it from img2img"):
            services.generation.txt2img(Txt2ImgRequest(**SMALL))
    finally:
        services.queue.shutdown()


def test_jobs_keep_the_loaded_precision(data_dir, model_files, tiny_loader):
    """A per-job pipeline shares the weights; it must not cast them (diffusers' from_pipe defaults to fp32)."""
    import torch

    install(model_files["single"], data_dir)
    services = build_services(make_settings(data_dir, precision="bf16"), load=tiny_loader)
    try:
        services.generation.txt2img(Txt2ImgRequest(prompt="x", save_images=False, width=64, height=64, steps=2))
        with services.manager.lease() as model:
            assert model.pipe.unet.dtype == torch.bfloat16
            assert model.pipe.vae.dtype == torch.bfloat16
            assert model.pipe.text_encoder.dtype == torch.bfloat16
    finally:
        services.queue.shutdown()
