"""Out of memory on an over-large request: a clear answer naming what to do, and the next request still works.

The CPU cannot run out of GPU memory, so the tiny model's UNet is made to raise torch.OutOfMemoryError (what
PyTorch raises on CUDA) for one job, through a forward hook this test registers and removes.
"""

from __future__ import annotations

import base64
import io

import torch
from fastapi.testclient import TestClient
from PIL import Image

from webui.server import create_app

REQUEST = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "batch_size": 2, "seed": 5}


def test_out_of_memory_is_explained_and_the_next_job_succeeds(services):
    with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
        with services.manager.lease() as model:
            unet = model.pipe.unet
        failures = []

        def run_out_of_memory_once(_module, _args):
            if not failures:
                failures.append(True)
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        handle = unet.register_forward_pre_hook(run_out_of_memory_once)
        try:
            response = client.post("/sdapi/v1/txt2img", json=REQUEST)
            assert response.status_code == 503  # OutOfMemory's status (webui/api/sdapi.py)
            message = response.json()["error"]
            assert "Out of GPU memory" in message and "64x64" in message
            assert "size or batch size" in message and "--memory-profile" in message

            again = client.post("/sdapi/v1/txt2img", json=REQUEST)
        finally:
            handle.remove()
        assert again.status_code == 200, again.text
        images = [Image.open(io.BytesIO(base64.b64decode(b64))) for b64 in again.json()["images"]]
        assert [image.size for image in images] == [(64, 64), (64, 64)]
        # The failed job is recorded as failed with the same message; the queue went on to the next one.
        jobs = client.get("/studio/v1/jobs").json()
        assert any(job.get("status") == "failed" and "Out of GPU memory" in (job.get("error") or "")
                   for job in (jobs if isinstance(jobs, list) else jobs.get("jobs", [])))


def test_the_ui_shows_the_out_of_memory_message_and_generates_next(services):
    from tests import gradio_events

    with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
        with services.manager.lease() as model:
            unet = model.pipe.unet
        failures = []

        def run_out_of_memory_once(_module, _args):
            if not failures:
                failures.append(True)
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

        config = client.get("/config").json()
        by_label = {"Prompt": "a lighthouse", "Negative prompt": "", "Sampling steps": 2, "Width": 64,
                    "Height": 64}
        inputs = gradio_events.inputs_by_label(config, "txt2img", by_label)
        handle = unet.register_forward_pre_hook(run_out_of_memory_once)
        try:
            failed = gradio_events.call(client, "txt2img", inputs)
            again = gradio_events.call(client, "txt2img", inputs)
        finally:
            handle.remove()
        assert "Out of GPU memory while sampling 1 image(s) of 64x64" in failed, failed[-2000:]
        assert "studio-error" in failed  # the red error box (generation_form.error_html)
        # the next job from the UI made its image (its infotext is in the stream) with no error
        assert "Out of GPU memory" not in again and "Size: 64x64, Model hash" in again, again[-2000:]
