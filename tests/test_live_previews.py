"""Live previews cost (almost) nothing: drawn only while someone watches the job, never a full VAE decode unless
"Full" was chosen, and with TAESD's tiny decoder from models/VAE-approx when its safetensors are there."""

from __future__ import annotations

import base64
import io
import logging
import threading

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from tests.conftest import install, make_settings
from webui.models.device import DeviceOwner
from webui.models.preview_decoders import KIND, PreviewDecoders
from webui.pipelines.preview import tiny_decode
from webui.server import create_app
from webui.services.container import build_services
from webui.services.jobs import WATCH_WINDOW_SECONDS, Job, JobKind
from webui.types import Txt2ImgRequest

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

DEFAULTS = {"live_previews_enable": True, "show_progress_every_n_steps": 10, "show_progress_type": "Approx cheap"}


@pytest.fixture(scope="module")
def app(tmp_path_factory, model_files, tiny_loader):
    """One app (services and API client) for the module; each test sets the preview options it needs."""
    data_dir = tmp_path_factory.mktemp("previews") / "data"
    install(model_files["single"], data_dir)
    services = build_services(make_settings(data_dir), load=tiny_loader)
    try:
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
            yield services, client
    finally:
        services.queue.shutdown()


@pytest.fixture
def services(app):
    services, _ = app
    services.options.update(DEFAULTS)
    yield services
    for path in sorted((services.settings.models_dir / "VAE-approx").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()


@pytest.fixture
def client(app, services):
    return app[1]


def _png(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def _wait_for_step(job: Job, step: int) -> None:
    """Wait until the job has passed ``step`` without watching it (Job.watch would count as watching)."""
    while job.progress.step < step and not job.finished:
        threading.Event().wait(0.02)
    assert not job.finished, "the job ended before the test could look at it"


def _request(**changes) -> Txt2ImgRequest:
    return Txt2ImgRequest(**{"prompt": "a red fox", "seed": 7, "width": 96, "height": 64, "steps": 5,
                             "save_images": False, **changes})


def _watched_previews(job: Job) -> list[Image.Image]:
    """Follow the job as the UI does (blocked in Job.watch), collecting each new preview."""
    previews, version, last = [], 0, 0
    while not job.finished:
        version, progress = job.watch(version, timeout=5)
        if progress.preview is not None and progress.preview_id != last:
            last = progress.preview_id
            previews.append(progress.preview)
    job.wait()
    return previews


# ------------------------------------------------------------------------------------ watched or not


def test_a_job_nobody_watches_draws_no_preview(client, services):
    services.options.update({"show_progress_every_n_steps": 1})
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 6})
    assert response.status_code == 200 and len(response.json()["images"]) == 1
    newest = client.get("/studio/v1/jobs", params={"limit": 1}).json()[0]
    assert newest["kind"] == "txt2img" and newest["status"] == "done"
    assert newest["preview_renders"] == 0


def test_previews_start_when_a_client_polls_progress_for_the_image(client, services):
    services.options.update({"show_progress_every_n_steps": 1})
    body = {"prompt": "x", "width": 64, "height": 64, "steps": 150, "n_iter": 3}
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(r=client.post("/sdapi/v1/txt2img", json=body)))
    worker.start()
    try:
        while services.queue.current is None:
            threading.Event().wait(0.02)
        job = services.queue.current
        _wait_for_step(job, 3)
        assert job.progress.preview_renders == 0  # previews every step, but nobody is looking

        # A client that does not want the image does not make the job draw it.
        assert client.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()["current_image"] is None
        _wait_for_step(job, job.progress.step + 3)
        assert job.progress.preview_renders == 0

        # A1111's web page polls without skip_current_image: from then on the job draws its preview.
        image = None
        while image is None:
            assert not job.finished
            image = client.get("/sdapi/v1/progress").json()["current_image"]
        assert _png(image).size == (64, 64)
        live = client.get(f"/studio/v1/jobs/{job.id}", params={"preview": True}).json()
        assert live["preview_renders"] >= 1 and live["progress"]["preview_renders"] >= 1
        assert live["preview"] is not None and _png(live["preview"]).size == (64, 64)
        assert "preview" not in client.get(f"/studio/v1/jobs/{job.id}").json()  # only when asked for
    finally:
        client.post("/sdapi/v1/interrupt")
        worker.join(timeout=120)
    assert outcome["r"].status_code == 200


def test_the_studio_job_endpoint_asking_for_the_preview_makes_the_job_draw_it(client, services):
    services.options.update({"show_progress_every_n_steps": 1})
    job = services.generation.submit_txt2img(_request(width=64, height=64, steps=150, n_iter=3))
    try:
        _wait_for_step(job, 2)
        assert job.progress.preview_renders == 0
        preview = None
        while preview is None:
            assert not job.finished
            preview = client.get(f"/studio/v1/jobs/{job.id}", params={"preview": True}).json()["preview"]
        assert _png(preview).size == (64, 64)
    finally:
        job.interrupt()
        job.wait_done(timeout=120)


def test_a_reader_keeps_a_job_watched_for_a_few_seconds():
    job = Job(JobKind("work", lambda ctx, request: None), None, 0, None, 0)
    assert not job.watched()
    job.mark_watched(now=100.0)
    assert job.watched(now=100.0 + WATCH_WINDOW_SECONDS - 0.1)
    assert not job.watched(now=100.0 + WATCH_WINDOW_SECONDS + 0.1)


# ------------------------------------------------------------------------------------ never a full decode by default


def _decoder_calls(services, request: Txt2ImgRequest) -> tuple[int, list[Image.Image]]:
    with services.manager.lease() as model:
        decoder = model.pipe.vae.decoder
    calls = []
    handle = decoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        previews = _watched_previews(services.generation.submit_txt2img(request))
    finally:
        handle.remove()
    return len(calls), previews


def test_the_default_preview_never_runs_the_vae(services):
    services.options.update({"show_progress_every_n_steps": 2})
    calls, previews = _decoder_calls(services, _request(steps=7))
    assert len(previews) == 3  # steps 2, 4 and 6, watched
    assert calls == 1  # the image's own decode, nothing for the previews

    services.options.update({"show_progress_type": "Full"})
    calls, previews = _decoder_calls(services, _request(steps=7))
    assert len(previews) == 3 and calls == 1 + 3


# ------------------------------------------------------------------------------------ TAESD


def _tiny_autoencoder():
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    return AutoencoderTiny(encoder_block_out_channels=(16, 16), decoder_block_out_channels=(16, 16),
                           num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1), latent_channels=4)


def _difference(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).mean())


def test_taesd_previews_come_from_the_tiny_decoder_in_vae_approx(services):
    services.options.update({"show_progress_every_n_steps": 2, "show_progress_type": "Approx cheap"})
    cheap = _watched_previews(services.generation.submit_txt2img(_request()))
    _tiny_autoencoder().save_pretrained(services.settings.models_dir / "VAE-approx" / "taesd",
                                        safe_serialization=True)
    services.options.update({"show_progress_type": "TAESD"})
    calls, taesd = _decoder_calls(services, _request())
    assert calls == 1  # TAESD is not the VAE
    assert len(taesd) == len(cheap) == 2
    assert {image.size for image in taesd} == {(96, 64)}  # the output's size, as every preview
    assert _difference(taesd[0], cheap[0]) > 5
    assert services.manager.owner.names(KIND) == [f"{KIND}:taesd"]  # loaded once, on the job's device


def test_without_taesd_files_the_preview_falls_back_to_approx_cheap(services):
    services.options.update({"show_progress_every_n_steps": 2, "show_progress_type": "Approx cheap"})
    cheap = _watched_previews(services.generation.submit_txt2img(_request()))
    services.options.update({"show_progress_type": "TAESD"})  # accepted: the Settings help says what happens
    fallback = _watched_previews(services.generation.submit_txt2img(_request()))
    assert len(fallback) == 2
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(fallback, cheap))


def _madebyollin_decoder() -> torch.nn.Sequential:
    """madebyollin's TAESD decoder as its repository builds it (taesd.py): the key layout of its files."""
    def conv(n_in, n_out, **kwargs):
        return torch.nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)

    class Clamp(torch.nn.Module):
        def forward(self, x):
            return torch.tanh(x / 3) * 3

    class Block(torch.nn.Module):
        def __init__(self, n_in, n_out):
            super().__init__()
            self.conv = torch.nn.Sequential(conv(n_in, n_out), torch.nn.ReLU(), conv(n_out, n_out),
                                            torch.nn.ReLU(), conv(n_out, n_out))
            self.skip = torch.nn.Identity()
            self.fuse = torch.nn.ReLU()

        def forward(self, x):
            return self.fuse(self.conv(x) + self.skip(x))

    def stage():
        return [Block(64, 64), Block(64, 64), Block(64, 64), torch.nn.Upsample(scale_factor=2),
                conv(64, 64, bias=False)]

    torch.manual_seed(1)
    return torch.nn.Sequential(Clamp(), conv(4, 64), torch.nn.ReLU(), *stage(), *stage(), *stage(),
                               Block(64, 64), conv(64, 3))


def test_a_madebyollin_decoder_file_loads_with_its_own_key_layout(tmp_path):
    reference = _madebyollin_decoder().eval()
    folder = tmp_path / "VAE-approx"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(folder / "taesd_decoder.safetensors"))
    decoders = PreviewDecoders(folder)
    assert decoders.problem("sd1") is None
    owner = DeviceOwner("cpu")
    decoder = decoders.decoder("sd1", owner)
    assert owner.names() == [f"{KIND}:taesd"]
    assert decoders.decoder("sd2", owner) is decoder  # built once, shared by the SD 1.x/2.x family
    latents = torch.randn(1, 4, 8, 12)
    with torch.no_grad():
        expected = reference(latents) * 2 - 1  # madebyollin's decoder gives [0, 1]
    assert torch.allclose(tiny_decode(decoder, latents), expected, atol=1e-5)
    assert tiny_decode(decoder, latents).shape == (1, 3, 64, 96)
    assert "taesdxl_decoder.safetensors" in decoders.problem("sdxl")  # SDXL has its own decoder


def test_pickle_files_are_refused_naming_the_safetensors_file(tmp_path, caplog):
    folder = tmp_path / "VAE-approx"
    folder.mkdir()
    # A pickle that would write a file when loaded: it must never be.
    marker = tmp_path / "pwned"
    payload = (b"cposix\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    (folder / "taesd_decoder.pth").write_bytes(payload)
    decoders = PreviewDecoders(folder)
    problem = decoders.problem("sd1")
    assert "taesd_decoder.pth" in problem and "taesd_decoder.safetensors" in problem and "pickle" in problem
    owner = DeviceOwner("cpu")
    with caplog.at_level(logging.WARNING, logger="webui.models.preview_decoders"):
        assert decoders.decoder("sd1", owner) is None
        assert decoders.decoder("sd1", owner) is None
    warnings = [r.getMessage() for r in caplog.records if "Approx cheap" in r.getMessage()]
    assert len(warnings) == 1 and "taesd_decoder.safetensors" in warnings[0]  # said once, not every step
    assert not marker.exists() and owner.names() == []


def test_a_file_that_is_not_a_taesd_decoder_falls_back_with_a_reason(tmp_path):
    folder = tmp_path / "VAE-approx"
    folder.mkdir()
    save_file({"weight": torch.zeros(3)}, str(folder / "taesd_decoder.safetensors"))
    (folder / "taesdxl_decoder.safetensors").write_bytes(b"not a safetensors file")
    decoders = PreviewDecoders(folder)
    owner = DeviceOwner("cpu")
    assert decoders.decoder("sd1", owner) is None
    assert decoders.decoder("sdxl", owner) is None
    assert owner.names() == []


def test_approx_nn_is_refused_naming_the_option(client, services):
    response = client.post("/sdapi/v1/options", json={"show_progress_type": "Approx NN"})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error.startswith("show_progress_type: ") and "TAESD" in error
    assert client.get("/sdapi/v1/options").json()["show_progress_type"] == "Approx cheap"
