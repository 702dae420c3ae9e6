"""Acceptance: many HTTP clients at once against a real server; one queue keeps every request's settings its own."""

from __future__ import annotations

import base64
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from tests.live_server import LiveServer, live_server
from webui.config import Limits

SIZE = {"width": 64, "height": 64}  # the tiny model is slow at larger sizes
CHECKPOINTS = ("tiny-sd15", "other-sd15")
SAMPLERS = ("Euler a", "DPM++ 2M", "Euler", "DDIM")


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_files, tiny_loader):
    with live_server(tmp_path_factory.mktemp("concurrency") / "data", model_files, load=tiny_loader) as live:
        yield live


def request_body(index: int) -> dict:
    """Eight requests, no two alike: own seed and prompt; checkpoint, sampler and clip skip (1 or 2) all vary."""
    return {"prompt": f"request number {index}, a {('red', 'green', 'blue', 'gold')[index % 4]} boat",
            "negative_prompt": f"not {index}", "seed": 1000 + 17 * index, "steps": 4,
            "sampler_name": SAMPLERS[index % len(SAMPLERS)],
            "override_settings": {"sd_model_checkpoint": CHECKPOINTS[index % 2],
                                  "CLIP_stop_at_last_layers": 1 + (index + index // 4) % 2},
            **SIZE}


def post_txt2img(server: LiveServer, body: dict) -> dict:
    response = requests.post(f"{server.api}/txt2img", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def pixels(data: dict) -> np.ndarray:
    (encoded,) = data["images"]
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"))


def infotext(data: dict) -> str:
    return Image.open(io.BytesIO(base64.b64decode(data["images"][0]))).info["parameters"]


def test_concurrent_requests_match_their_sequential_twins(server):
    bodies = [request_body(i) for i in range(8)]
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        concurrent = list(pool.map(lambda body: post_txt2img(server, body), bodies))
    sequential = [post_txt2img(server, body) for body in bodies]

    for body, together, alone in zip(bodies, concurrent, sequential):
        seed, overrides = body["seed"], body["override_settings"]
        model, clip_skip = overrides["sd_model_checkpoint"], overrides["CLIP_stop_at_last_layers"]
        text = infotext(together)
        assert text.startswith(body["prompt"] + "\n"), text
        assert f"Seed: {seed}," in text and f"Model: {model}," in text, text
        assert f"Sampler: {body['sampler_name']}," in text, text
        assert ("Clip skip: 2" in text) == (clip_skip == 2), text
        info = json.loads(together["info"])
        assert info["all_seeds"] == [seed] and info["prompt"] == body["prompt"]
        assert info["sd_model_name"] == model and info["clip_skip"] == clip_skip
        assert info["sampler_name"] == body["sampler_name"]
        # Same request, same image, whether it queued behind seven others or ran alone.
        assert text == infotext(alone)
        np.testing.assert_array_equal(pixels(together), pixels(alone), err_msg=f"seed {seed}")

    # Not trivially equal: every request made its own image.
    images = [pixels(data).tobytes() for data in concurrent]
    assert len(set(images)) == len(images)


def test_a_burst_past_the_queue_limit_gets_503_with_retry_after(tmp_path_factory, model_files, tiny_loader):
    limits = Limits(queue_size=2, max_width=512, max_height=512)
    with live_server(tmp_path_factory.mktemp("burst") / "data", model_files, limits=limits,
                     load=tiny_loader) as server:
        # Long enough that all six arrive while the first is still running: 1 runs, 2 wait, the rest are refused.
        body = {"prompt": "burst", "steps": 12, "seed": 1, **SIZE}

        def post(index: int) -> requests.Response:
            return requests.post(f"{server.api}/txt2img", json={**body, "seed": index}, timeout=120)

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=6) as pool:
            responses = list(pool.map(post, range(6)))
        elapsed = time.monotonic() - started

        codes = sorted(r.status_code for r in responses)
        assert set(codes) <= {200, 503}, [(r.status_code, r.text[:300]) for r in responses]
        refused = [r for r in responses if r.status_code == 503]
        accepted = [r for r in responses if r.status_code == 200]
        assert refused, f"no request was refused: {codes} in {elapsed:.1f}s"
        assert accepted, codes
        for response in refused:
            assert int(response.headers["Retry-After"]) > 0
            assert "queue" in response.json()["error"].lower()
            assert "Traceback" not in response.text
        for response in accepted:
            assert len(response.json()["images"]) == 1

        # Still answering, and with room in the queue again.
        progress = requests.get(f"{server.api}/progress", timeout=10).json()
        assert progress["state"]["job_count"] == 0
        after = requests.post(f"{server.api}/txt2img", json={**body, "steps": 2}, timeout=60)
        assert after.status_code == 200, after.text
