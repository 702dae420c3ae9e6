"""Scale-out on a real Ray cluster: a local CPU cluster this module starts (``ray start --head``) and stops.

The front is the app's own services (``build_services`` with ``--ray-address``), served over HTTP like the real
app; two CPU replicas run the tiny checkpoints. The replicas get an empty shared models folder, so they fetch each
checkpoint from the front by sha256, as replicas on other hosts without a network mount do.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil
import pytest
import requests
import webuiapi
from PIL import Image

from tests.browser_support import (  # noqa: F401 (browser, chromium_binary: fixtures)
    ARTIFACTS, browser, chromium_binary, expect, free_port, screenshot, set_slider)
from tests.conftest import install, make_settings
from tests.live_server import LiveServer, live_server
from webui.errors import ModelLoadError
from webui.extensions.api import infotext_fields
from webui.scaleout.config import ScaleOutConfig
from webui.cli import parse_settings
from webui.services.container import build_services
from webui.types import Img2ImgRequest, JobState, Txt2ImgRequest

pytestmark = pytest.mark.ray
TOKEN = secrets.token_hex(32)  # this module's cluster requires it (Ray's token authentication)
# Ray reads its authentication mode once, when imported: the front (this process) must have it before that.
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}
SAVED_AUTH = {key: os.environ.get(key) for key in AUTH}
os.environ.update(AUTH)
serve = pytest.importorskip("ray.serve", reason="scale-out needs requirements-ray.txt")

RAY = Path(sys.executable).with_name("ray")  # the venv's CLI: its workers run this same Python
SIZE = {"width": 64, "height": 64}
START_SECONDS = 240  # two replicas importing torch and diffusers at once on a loaded 2-core machine


@dataclass
class Cluster:
    address: str
    temp: Path
    processes: list[psutil.Process]  # the head's processes and their children, found once it started

    def stop(self) -> None:
        """Stop this cluster's processes only (``ray stop`` would stop every Ray cluster of this user)."""
        processes = _cluster_processes(self.temp)
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        _, alive = psutil.wait_procs(processes, timeout=15)
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        psutil.wait_procs(alive, timeout=15)




def _ray_env() -> dict[str, str]:
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", **AUTH}


def _cluster_processes(temp: Path) -> list[psutil.Process]:
    """The head's processes (their command lines name our temp dir) and everything they started."""
    found: list[psutil.Process] = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if str(temp) in " ".join(process.info["cmdline"] or []):
                found.append(process)
                found.extend(process.children(recursive=True))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # short: Ray's socket paths must stay short
    port = free_port()
    started = subprocess.run(
        [str(RAY), "start", "--head", f"--port={port}", "--num-cpus=4", "--num-gpus=0",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        capture_output=True, text=True, timeout=180, env=_ray_env())
    assert started.returncode == 0, started.stdout + started.stderr
    running = Cluster(f"127.0.0.1:{port}", temp, [])
    try:
        yield running
    finally:
        running.stop()
        for key, value in SAVED_AUTH.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def front(cluster, model_files, tmp_path_factory) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("scale-out")
    shared = root / "shared-models"  # the replicas' "network mount": empty, so they fetch by hash
    shared.mkdir()
    config = ScaleOutConfig(address=cluster.address, min_replicas=2, max_replicas=2, replica_cpus=1,
                            models_dir=shared, replica_cache=str(root / "replica-cache"))
    with live_server(root / "data", model_files, scale_out=config) as live:
        cluster.processes = _cluster_processes(cluster.temp)
        yield live


@pytest.fixture(scope="module")
def single(model_files, tmp_path_factory):
    """The same checkpoints in a plain single-process app (no Ray), for comparing results."""
    data = tmp_path_factory.mktemp("single") / "data"
    install(model_files["single"], data)
    install(model_files["other"], data)
    services = build_services(make_settings(data))
    yield services
    services.queue.shutdown()


def _titles(front: LiveServer) -> list[str]:
    return sorted(info.title for info in front.services.registry.list())


def _replica_of(front: LiveServer, job_id: str, timeout: float = 60) -> tuple[str, int]:
    """(replica id, pid) of the replica running the front's job ``job_id``, from the replicas' own reports."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for replica in front.services.scaleout.status().replicas:
            if replica.job_id == job_id:
                return replica.replica_id, replica.pid
        time.sleep(0.1)
    raise AssertionError(f"no replica reported running job {job_id}")


def test_two_checkpoints_run_at_once_on_the_replicas_that_hold_them(front):
    generation = front.services.generation
    first, second = _titles(front)

    def run_both():
        jobs = [generation.submit_txt2img(Txt2ImgRequest(prompt="a lighthouse", steps=4, seed=7, checkpoint=title,
                                                         **SIZE)) for title in (first, second)]
        return jobs, [job.wait(START_SECONDS) for job in jobs]

    _, warm = run_both()  # each checkpoint lands on its own replica (one job at a time per replica)
    assert warm[0].replica and warm[1].replica and warm[0].replica != warm[1].replica
    jobs, again = run_both()
    assert [result.replica for result in again] == [result.replica for result in warm]  # checkpoint affinity
    a, b = jobs
    assert a.started_at < b.finished_at and b.started_at < a.finished_at  # the two ran at the same time
    loaded = {replica.replica_id: replica.loaded for replica in front.services.scaleout.status().replicas}
    assert loaded[again[0].replica] == (first,) and loaded[again[1].replica] == (second,)
    # The replicas had no shared copy: each fetched its checkpoint from the front and kept it under its sha256.
    cache = front.services.settings.scale_out.replica_cache
    fetched = sorted(path.stem for path in Path(cache, "checkpoints").glob("*.safetensors"))
    assert fetched == sorted(info.sha256 for info in front.services.registry.list())
    # The front saved every image (outputs/ and the history are only here).
    assert all(len(result.paths) == 1 and result.paths[0].is_file() for result in warm + again)
    assert front.services.jobs_store.get(a.id).status == JobState.DONE.value
    assert not serve.status().proxies  # no Serve HTTP proxy: the front is the only entry


def test_results_equal_the_single_process_app_pixel_for_pixel(front, single):
    for title in _titles(front):
        request = Txt2ImgRequest(prompt="a red barn, (snow:1.2)", negative_prompt="blurry", steps=5, seed=1234,
                                 batch_size=2, checkpoint=title, **SIZE)
        remote = front.services.generation.txt2img(request, timeout=START_SECONDS)
        local = single.generation.txt2img(request, timeout=120)
        assert remote.replica and local.replica is None
        assert remote.seeds == local.seeds
        assert [image.tobytes() for image in remote.images] == [image.tobytes() for image in local.images]
        assert remote.infotexts == local.infotexts  # provenance marks included (the front applies them)


def test_img2img_with_a_mask_equals_the_single_process_app(front, single):
    init = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    request = Img2ImgRequest(prompt="a stone wall", steps=4, seed=21, denoising_strength=0.6, init_images=[init],
                             mask=mask, **SIZE)
    remote = front.services.generation.img2img(request, timeout=START_SECONDS)
    local = single.generation.img2img(request, timeout=120)
    assert remote.replica and remote.images[0].tobytes() == local.images[0].tobytes()
    assert remote.infotexts == local.infotexts and "Denoising strength: 0.6" in remote.infotexts[0]


def test_a_script_runs_on_the_front_and_its_generations_on_the_replicas(front):
    # A1111 clients' X/Y/Z plot: Steps 2,3 x the two checkpoints; the grid is made and saved by the front.
    args = [4, "2,3", [], 11, "", ["tiny-sd15", "other-sd15"], 0, "", [], True, True, False, False, 0, False, False]
    response = requests.post(f"{front.api}/txt2img", json={"prompt": "a fox", "seed": 5, "steps": 2, **SIZE,
                                                           "save_images": True, "script_name": "x/y/z plot",
                                                           "script_args": args},
                             timeout=START_SECONDS)
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 1 + 4
    models = [infotext_fields(text)["Model"] for text in info["infotexts"][1:]]
    assert models == ["tiny-sd15", "tiny-sd15", "other-sd15", "other-sd15"]
    job = next(j for j in reversed(front.services.queue.jobs()) if j.kind == "txt2img-script")
    assert job.device.startswith("ray-") and job.result.grid_path is not None and job.result.grid_path.is_file()


def test_a_checkpoint_no_replica_can_load_fails_naming_each_replicas_reason(front):
    folder = front.services.settings.checkpoints_dir
    broken = folder / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a safetensors header}" + bytes(4096))
    front.services.registry.refresh()
    title = front.services.registry.find("broken").title
    try:
        job = front.services.generation.submit_txt2img(Txt2ImgRequest(prompt="x", steps=3, checkpoint=title,
                                                                      **SIZE))
        with pytest.raises(ModelLoadError) as failed:
            job.wait(START_SECONDS)
        message = str(failed.value)
        replicas = [r.replica_id for r in front.services.scaleout.status().replicas]
        # Tried on one replica, then the other (the first declines it), then given up with both reasons.
        assert message.startswith(f"No replica could load {title}: replica ")
        assert all(f"replica {replica}:" in message for replica in replicas), message
        errors = [r.error or "" for r in front.services.scaleout.status().replicas]
        assert all("broken" in error for error in errors), errors  # the replicas table says why
        assert front.services.jobs_store.get(job.id).status == JobState.FAILED.value
    finally:
        broken.unlink()
        front.services.registry.refresh()
    # The other checkpoints still run.
    assert front.services.generation.txt2img(Txt2ImgRequest(prompt="fine", steps=3, seed=2, **SIZE),
                                             timeout=START_SECONDS).images


def _wait_for(job, predicate, what: str):
    deadline = time.monotonic() + START_SECONDS
    while not predicate(job.progress):
        assert not job.finished, f"the job ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {START_SECONDS} s"
        job.mark_watched()  # as a reader polling the preview does: the replica draws previews meanwhile
        time.sleep(0.05)


def test_previews_skip_and_interrupt_reach_the_replica(front):
    job = front.services.generation.submit_txt2img(Txt2ImgRequest(prompt="long", steps=150, n_iter=3, seed=3,
                                                                  **SIZE))
    _wait_for(job, lambda p: p.preview is not None, "live preview")  # drawn there, shown here
    assert job.progress.steps == 150 and job.progress.preview_renders >= 1
    job.skip()  # ends the first image early; the job goes on with the next
    _wait_for(job, lambda p: p.image_index == 1 and p.step >= 2, "second image")
    job.interrupt()
    result = job.wait(START_SECONDS)
    assert result.interrupted and len(result.images) == 2  # the skipped image and the interrupted one are kept
    assert len(result.paths) == 2


def test_a_replica_killed_mid_job_is_retried_once_and_saved_once(front):
    outputs = front.services.settings.outputs_dir
    before = set(outputs.rglob("*.png"))
    job = front.services.generation.submit_txt2img(Txt2ImgRequest(prompt="survivor", steps=60, seed=11, **SIZE))
    replica, pid = _replica_of(front, job.id)
    deadline = time.monotonic() + START_SECONDS
    while job.progress.step < 2 and not job.finished and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not job.finished, "the job ended before its replica could be killed"
    os.kill(pid, signal.SIGKILL)
    result = job.wait(START_SECONDS)
    assert result.replica != replica
    assert any("stopped" in warning and "ran again" in warning for warning in result.warnings)
    new = set(outputs.rglob("*.png")) - before
    assert len(new) == 1 and new == set(result.paths)  # one run's image saved, once
    record = front.services.jobs_store.get(job.id)
    assert record.status == JobState.DONE.value
    # The front kept serving: the next job runs normally.
    assert front.services.generation.txt2img(Txt2ImgRequest(prompt="next", steps=3, seed=1, **SIZE),
                                             timeout=START_SECONDS).images


def test_the_api_works_unchanged_with_webuiapi(front):
    api = webuiapi.WebUIApi(host=front.host, port=front.port, sampler="Euler a", steps=3)
    result = api.txt2img(prompt="a lighthouse at dusk", seed=99, **SIZE)
    assert result.image.size == (64, 64)
    assert result.info["seed"] == 99 and "Seed: 99" in result.info["infotexts"][0]
    models = {model["title"] for model in api.get_sd_models()}
    assert models == set(_titles(front))
    progress = requests.get(f"{front.api}/progress", timeout=10).json()
    assert progress["state"]["interrupted"] is False


    def recovered():  # Serve replaces the replica killed earlier: the cluster is whole again
        cluster = requests.get(f"{front.url}/studio/v1/replicas", timeout=10).json()
        fresh = [r for r in cluster["replicas"] if r["health"] in ("idle", "busy")]
        return cluster if cluster["application"] == "RUNNING" and len(fresh) == 2 else None

    deadline = time.monotonic() + START_SECONDS
    while (cluster := recovered()) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert cluster is not None, requests.get(f"{front.url}/studio/v1/replicas", timeout=10).json()
    assert cluster["enabled"] is True
    assert all(r["pid"] > 0 and r["device"].startswith("CPU") for r in cluster["replicas"]
               if r["health"] != "unreachable")


@pytest.mark.browser
def test_the_ui_generates_through_the_replicas(front, browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(45_000)
    page = context.new_page()
    try:
        page.goto(front.url + "/")
        page.locator("#txt2img_prompt textarea").fill("a windmill")
        expect(page.locator("#txt2img_generate")).to_be_visible(timeout=30_000)
        for label, value in (("Width", 64), ("Height", 64), ("Sampling steps", 3)):
            set_slider(page, label, value)
        page.locator("#txt2img_generate").click()
        expect(page.locator("#txt2img_gallery img").first).to_be_visible(timeout=START_SECONDS * 1000)
        expect(page.locator("#txt2img_info textarea")).to_have_value(re.compile(r"a windmill[\s\S]*Steps: 3"))
        screenshot(page, "scale-out-txt2img.png")
        page.get_by_role("tab", name="Settings", exact=True).click()
        expect(page.locator("#cluster_summary")).to_contain_text(f"Ray cluster {front.services.settings.scale_out.address}",
                                                                 timeout=60_000)
        # The two live replicas (the one killed earlier stays listed as unreachable for a while).
        live = page.locator("#cluster_replicas tr.replica-idle, #cluster_replicas tr.replica-busy")
        expect(live).to_have_count(2)
        expect(live.first).to_contain_text("CPU")
        page.locator("#settings_section_cluster").screenshot(path=str(ARTIFACTS / "scale-out-cluster.png"))
    finally:
        context.close()
    job = front.services.queue.jobs()[-1]
    assert job.kind == "txt2img" and job.device.startswith("ray-") and job.result.replica


DEPLOY_AS_KUBERAY = """
import json, sys
import ray
from ray import serve
from webui.scaleout import serve_app
from webui.scaleout.config import APP_NAME
flags = json.loads(sys.argv[1])
ray.init(address=flags[flags.index("--ray-address") + 1])
serve.start(proxy_location="Disabled")
serve.run(serve_app.app({"flags": flags}), name=APP_NAME, route_prefix=None)
"""
SERVE_STATUS = """
import sys
import ray
from ray import serve
from webui.scaleout.config import APP_NAME
ray.init(address=sys.argv[1])
app = serve.status().applications.get(APP_NAME)
print(getattr(app.status, "value", app.status) if app else "absent")
serve.delete(APP_NAME)
"""


def test_a_front_attaches_to_replicas_the_cluster_deployed(cluster, front, model_files, tmp_path):
    front.services.scaleout.close()  # one front per cluster: the module's front leaves (its replicas with it)
    data = tmp_path / "data"
    install(model_files["single"], data)
    flags = ["--data-dir", str(data), "--ray-address", cluster.address, "--ray-replicas", "1",
             "--ray-replica-gpus", "0", "--device", "cpu", "--precision", "fp32", "--no-download"]
    # What a KubeRay RayService does with serveConfigV2: another driver deploys the import path and goes away.
    deployed = subprocess.run([sys.executable, "-c", DEPLOY_AS_KUBERAY, json.dumps(flags)], capture_output=True,
                              text=True, env=_ray_env(), timeout=START_SECONDS, cwd=Path(__file__).parents[1])
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    services = build_services(parse_settings([*flags, "--ray-attach"]))
    try:
        result = services.generation.txt2img(Txt2ImgRequest(prompt="attached", steps=3, seed=8, **SIZE),
                                             timeout=START_SECONDS)
        assert result.replica and len(result.paths) == 1 and result.paths[0].is_relative_to(data)
    finally:
        services.queue.shutdown()
        services.scaleout.close()
    # The front left; the replicas it attached to stay, as their owner (the RayService) deployed them.
    status = subprocess.run([sys.executable, "-c", SERVE_STATUS, cluster.address], capture_output=True, text=True,
                            env=_ray_env(), timeout=120, cwd=Path(__file__).parents[1])
    assert status.stdout.strip().splitlines()[-1] == "RUNNING", status.stderr[-3000:]


def test_the_cluster_stops_and_leaves_no_processes(cluster, front):
    processes = list(cluster.processes)
    assert processes, "the cluster's processes were not found"
    front.services.scaleout.close()  # the app's own shutdown (again: it is idempotent)
    cluster.stop()
    deadline = time.monotonic() + 60
    alive = processes
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    assert not alive, [p.pid for p in alive]
    assert not threading.active_count() > 200  # no thread leak from the Ray client either
