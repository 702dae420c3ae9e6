"""Jobs a person watches and stops: the live preview at the output's size, Interrupt inside a step, Skip keeping
what it stopped (A1111), with the tiny SD model."""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.job_helpers import QuietListener
from webui.errors import InvalidRequest
from webui.pipelines import txt2img
from webui.pipelines.preview import PreviewSettings
from webui.server import create_app
from webui.services.job_estimate import DEFAULT_SPEED, JobSpeed, LongJobWarning, duration
from webui.types import Img2ImgRequest, JobState, Txt2ImgRequest

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]


class Previews(QuietListener):
    """Records each step that brought a preview, and the preview itself."""

    def __init__(self):
        self.shown: list[tuple[int, Image.Image]] = []

    def on_step(self, step, steps, preview) -> None:
        if preview is not None:
            self.shown.append((step, preview()))


class StopFlag(QuietListener):
    def __init__(self):
        self.stop = False

    def should_stop(self) -> bool:
        return self.stop


@contextmanager
def counting(module, on_call=None):
    """Count forward calls of ``module``; ``on_call(n)`` runs after the n-th."""
    calls = []

    def hook(_module, _args, _output):
        calls.append(1)
        if on_call is not None:
            on_call(len(calls))

    handle = module.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def _request(**changes) -> Txt2ImgRequest:
    return Txt2ImgRequest(**{"prompt": "a red fox", "seed": 7, "width": 96, "height": 64, "steps": 6,
                             "save_images": False, **changes})


# ------------------------------------------------------------------------------------ live preview


@pytest.mark.parametrize("method", ["Approx cheap", "Full"])
def test_the_preview_has_the_output_size_not_the_latent_size(tiny_model, method):
    listener = Previews()
    out = txt2img.run_batch(tiny_model, _request(), [7], listener, PreviewSettings(every=1, method=method))
    assert out.images[0].size == (96, 64)
    assert [step for step, _ in listener.shown] == [1, 2, 3, 4, 5]  # never the last step: the image follows
    assert {image.size for _, image in listener.shown} == {(96, 64)}


def test_full_preview_is_a_real_decode_and_the_cheap_one_is_not(tiny_model):
    full, cheap = Previews(), Previews()
    txt2img.run_batch(tiny_model, _request(), [7], full, PreviewSettings(every=5, method="Full"))
    txt2img.run_batch(tiny_model, _request(), [7], cheap, PreviewSettings(every=5, method="Approx cheap"))
    full_pixels = np.asarray(full.shown[0][1], dtype=np.int16)
    cheap_pixels = np.asarray(cheap.shown[0][1], dtype=np.int16)
    assert np.abs(full_pixels - cheap_pixels).mean() > 5


def test_previews_come_only_every_n_steps(tiny_model):
    listener = Previews()
    txt2img.run_batch(tiny_model, _request(steps=7), [7], listener, PreviewSettings(every=3))
    assert [step for step, _ in listener.shown] == [3, 6]


def test_hires_previews_the_final_size_in_both_passes(tiny_model):
    listener = Previews()
    request = _request(steps=3, enable_hr=True, hr_scale=2, denoising_strength=0.5, hr_upscaler="Latent")
    from webui.pipelines import hires

    out = hires.run_batch(tiny_model, request, [7], listener, PreviewSettings(every=1), [7])
    assert out.images[0].size == (192, 128)
    assert len(listener.shown) >= 3
    assert {image.size for _, image in listener.shown} == {(192, 128)}


def _watch(job) -> list:
    seen, version = [], 0
    while not job.finished:
        version, progress = job.watch(version, timeout=5)
        seen.append(progress)
    return seen


def test_the_options_decide_the_jobs_preview(services):
    services.options.update({"show_progress_every_n_steps": 2})
    job = services.generation.submit_txt2img(_request(steps=5))
    previews = {p.preview_id: p.preview for p in _watch(job) if p.preview is not None}
    assert job.wait().images[0].size == (96, 64)
    assert {image.size for image in previews.values()} == {(96, 64)}
    assert len(previews) == 2  # steps 2 and 4 of 5

    services.options.update({"live_previews_enable": False})
    job = services.generation.submit_txt2img(_request(steps=5))
    assert not any(p.preview is not None for p in _watch(job))

    # -1: A1111's "only show after completion of batch".
    services.options.update({"live_previews_enable": True, "show_progress_every_n_steps": -1})
    job = services.generation.submit_txt2img(_request(steps=3, n_iter=2))
    ids = {p.preview_id for p in _watch(job) if p.preview is not None}
    assert len(ids) == 2


def test_img2img_and_inpaint_previews_have_the_output_size(services):
    services.options.update({"show_progress_every_n_steps": 1})
    init = Image.new("RGB", (96, 64), (40, 120, 200))
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (24, 16, 72, 48))
    for extra in ({}, {"mask": mask}):
        request = Img2ImgRequest(prompt="a lake", init_images=[init], denoising_strength=0.8, seed=3, steps=5,
                                 width=96, height=64, save_images=False, **extra)
        job = services.generation.submit_img2img(request)
        previews = {p.preview_id: p.preview for p in _watch(job) if p.preview is not None}
        assert job.wait().images[0].size == (96, 64)
        assert previews and {image.size for image in previews.values()} == {(96, 64)}


@pytest.mark.parametrize("key, value", [("show_progress_type", "Approx NN"),
                                        ("live_preview_content", "Prompt"),
                                        ("show_progress_every_n_steps", 33)])
def test_preview_options_this_server_cannot_honour_are_refused(services, key, value):
    with pytest.raises(InvalidRequest) as refused:
        services.options.update({key: value})
    assert refused.value.field == key
    client = TestClient(create_app(services), base_url="http://127.0.0.1:7860")
    response = client.post("/sdapi/v1/options", json={key: value})
    assert response.status_code == 422
    assert response.json()["error"].startswith(f"{key}: ")
    assert client.get("/sdapi/v1/options").json()[key] != value


# ------------------------------------------------------------------------------------ interrupt inside a step


def test_an_interrupt_mid_step_stops_inside_the_unet(tiny_model):
    unet = tiny_model.pipe.unet
    listener = StopFlag()
    # cond and uncond run as one batch: one call of each block per step.

    def interrupt_in_step_3(n):
        if n == 3:  # the first down block of the third step's UNet call
            listener.stop = True

    with counting(unet.down_blocks[0], interrupt_in_step_3) as first, counting(unet.up_blocks[-1]) as last:
        out = txt2img.run_batch(tiny_model, _request(steps=6), [7], listener, 0)
    assert len(first) == 3
    assert len(last) == 2, "the up blocks of the interrupted step must not run"
    assert out.stopped_early
    assert [image.size for image in out.images] == [(96, 64)]  # the step finished before is returned


def test_the_stop_hooks_leave_with_the_run(tiny_model):
    """An interrupted run leaves the shared UNet as it was: the next run is the same as a fresh one."""
    fresh = txt2img.run_batch(tiny_model, _request(), [7], QuietListener(), 0).images[0]
    listener = StopFlag()
    with counting(tiny_model.pipe.unet.down_blocks[0], lambda n: setattr(listener, "stop", n == 2)):
        txt2img.run_batch(tiny_model, _request(), [7], listener, 0)
    again = txt2img.run_batch(tiny_model, _request(), [7], QuietListener(), 0).images[0]
    assert np.array_equal(np.asarray(fresh), np.asarray(again))


def _outputs_are_whole(data_dir) -> list:
    files = sorted((data_dir / "outputs").rglob("*.png"))
    for path in files:
        with Image.open(path) as image:
            image.load()  # raises on a truncated file
    assert not list((data_dir / "outputs").rglob("*.tmp*"))
    return files


def test_interrupting_a_job_from_inside_its_unet_ends_it_at_once_and_the_server_goes_on(services, data_dir):
    with services.manager.lease() as model:
        unet = model.pipe.unet
    job_box = {}

    def interrupt(n):
        if n == 2:
            services.queue.interrupt(job_box["job"].id)

    with counting(unet.down_blocks[0], interrupt) as first, counting(unet.up_blocks[-1]) as last:
        job = job_box["job"] = services.generation.submit_txt2img(_request(steps=20, n_iter=3, save_images=True))
        result = job.wait(timeout=120)
    assert result.interrupted and job.progress.state is JobState.DONE
    assert (len(first), len(last)) == (2, 1)  # one whole step, then nothing after the interrupt
    assert len(result.images) == 1 and result.images[0].size == (96, 64)
    assert len(_outputs_are_whole(data_dir)) == 1
    follow_up = services.generation.txt2img(_request(steps=2), timeout=120)
    assert len(follow_up.images) == 1 and not follow_up.interrupted


def test_an_interrupt_before_the_first_step_ends_returns_no_image_and_no_error(services, data_dir):
    with services.manager.lease() as model:
        unet = model.pipe.unet
    job_box = {}
    with counting(unet.down_blocks[0], lambda n: services.queue.interrupt(job_box["job"].id)):
        job = job_box["job"] = services.generation.submit_txt2img(_request(steps=20, save_images=True))
        result = job.wait(timeout=120)
    assert result.interrupted and result.images == []
    assert _outputs_are_whole(data_dir) == []


# ------------------------------------------------------------------------------------ skip


def test_skip_with_batch_count_1_returns_the_image_where_it_stopped(services, data_dir):
    with services.manager.lease() as model:
        unet = model.pipe.unet
    job_box = {}

    def skip(n):
        if n == 3:
            services.queue.skip(job_box["job"].id)

    with counting(unet.down_blocks[0], skip) as first:
        job = job_box["job"] = services.generation.submit_txt2img(_request(steps=20, save_images=True))
        result = job.wait(timeout=120)
    assert len(first) == 3
    assert not result.interrupted
    assert result.seeds == [7] and result.images[0].size == (96, 64)
    assert "Seed: 7" in result.infotexts[0]
    assert len(_outputs_are_whole(data_dir)) == 1


# ------------------------------------------------------------------------------------ the long-job warning


def _huge(**changes) -> Txt2ImgRequest:
    return _request(**{"width": 512, "height": 512, "batch_size": 8, "n_iter": 16, "steps": 150, **changes})


def test_a_job_estimated_past_the_threshold_is_not_started_unless_confirmed(services):
    asked = []
    with pytest.raises(LongJobWarning) as warned:
        services.generation.submit_txt2img(_huge(), confirm=lambda estimate: asked.append(estimate) or False)
    message = str(warned.value)
    assert re.search(r"^This job is estimated to take about \d+ h( \d+ min)? on cpu \(512x512, 8 x 16 images, "
                     r"150 steps\)\. Press Generate again to start it\.$", message), message
    assert asked == [warned.value.estimate]
    assert services.queue.pending_count == 0 and services.queue.running() == []

    job = services.generation.submit_txt2img(_huge(), confirm=lambda estimate: estimate.key == asked[0].key)
    job.interrupt()  # queued (or started): it was accepted
    assert job.wait_done(timeout=120)


def test_the_api_is_not_asked_but_the_estimate_is_logged(services, caplog):
    with caplog.at_level(logging.WARNING, logger="webui.services.generation"):
        job = services.generation.submit_txt2img(_huge())
        job.interrupt()
    assert job.wait_done(timeout=120)
    assert any("estimated to take about" in record.getMessage() for record in caplog.records)


def test_the_threshold_is_an_option_and_0_never_asks(services):
    services.options.update({"confirm_long_jobs_seconds": 0})
    job = services.generation.submit_txt2img(_huge(), confirm=lambda estimate: False)
    job.interrupt()
    assert job.wait_done(timeout=120)
    with pytest.raises(InvalidRequest, match="confirm_long_jobs_seconds"):
        services.options.update({"confirm_long_jobs_seconds": -5})


def test_a_small_job_does_not_pass_its_fixed_costs_for_slow_sampling(services):
    before = services.generation.estimate(_huge()).seconds
    services.generation.txt2img(_request(steps=4), timeout=120)
    assert services.generation.estimate(_huge()).seconds == before


def test_the_estimate_follows_the_speed_measured_on_this_device_kind():
    speed = JobSpeed()
    default = speed.estimate(_huge(), "cuda:0").seconds
    speed.record("cuda:1", megapixel_steps=4.0, seconds=1.0)  # 4 MP-steps/s measured on another GPU
    assert speed.estimate(_huge(), "cuda:0").seconds == pytest.approx(512 * 512 * 150 * 128 / 1e6 / 4.0)
    assert speed.estimate(_huge(), "cuda:0").seconds != default
    assert speed.estimate(_huge(), "cpu").seconds == pytest.approx(512 * 512 * 150 * 128 / 1e6 / DEFAULT_SPEED["cpu"])


def test_hires_counts_in_the_estimate(services):
    plain = services.generation.estimate(_request(width=256, height=256))
    hires = services.generation.estimate(_request(width=256, height=256, enable_hr=True, hr_scale=2))
    assert hires.seconds == pytest.approx(plain.seconds * 5)  # 256² x 6 steps + 512² x 6 steps
    assert hires.steps == 12


@pytest.mark.parametrize("seconds, text", [(5, "5 s"), (89, "89 s"), (600, "10 min"), (12_000, "3 h 20 min"),
                                           (7200, "2 h"), (14_342_000, "166 days")])
def test_durations_read_as_people_say_them(seconds, text):
    assert duration(seconds) == text
