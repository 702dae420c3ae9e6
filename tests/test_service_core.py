"""The service core: reads never wait on a job, checkpoint switches are queued jobs, one worker per device with
checkpoint affinity, long jobs pause and let interactive ones through. Orderings are asserted with events, never
with wall-clock limits."""

from __future__ import annotations

import threading
from typing import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.conftest import install, make_settings
from webui.errors import ModelLoadError
from webui.server import create_app
from webui.services.container import Services, build_services
from webui.services.jobs import LONG, JobKind
from webui.types import JobState, Txt2ImgRequest

SMALL = dict(width=64, height=64, steps=3, save_images=False)


class Blocker:
    """A job that holds its device (and a model lease) until the test lets it go."""

    def __init__(self, services: Services, kind: str = "test-block"):
        self.started = threading.Event()
        self.release = threading.Event()
        self.devices: list[str] = []
        services.queue.register(JobKind(kind, self._run, uses_checkpoint=True))
        self.kind = kind

    def _run(self, ctx, _request) -> str:
        with ctx.models.lease():
            self.devices.append(ctx.device.name)
            self.started.set()
            assert self.release.wait(120), "the test never released the blocker"
        return "released"


@pytest.fixture
def blocked(services) -> Iterator[tuple[Services, Blocker]]:
    blocker = Blocker(services)
    yield services, blocker
    blocker.release.set()


def wait_state(job, state: JobState) -> None:
    version = 0
    while job.progress.state is not state:
        assert not job.finished, job.progress
        version, _ = job.watch(version, timeout=5)


# --- reads never wait ---------------------------------------------------------------------------------------------

def test_reads_answer_while_a_job_holds_the_device(blocked):
    services, blocker = blocked
    client = TestClient(create_app(services), base_url="http://127.0.0.1:7860")
    job = services.queue.submit(blocker.kind)
    assert blocker.started.wait(60)
    for path in ("/sdapi/v1/options", "/sdapi/v1/memory", "/sdapi/v1/progress", "/sdapi/v1/sd-models"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.text)
        assert job.progress.state is JobState.RUNNING  # answered while the job still held the device
    progress = client.get("/sdapi/v1/progress").json()
    assert progress["current_task"] == job.id and progress["state"]["job"] == blocker.kind
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == services.manager.selected.title
    blocker.release.set()
    assert job.wait(60) == "released"


# --- checkpoint switches are jobs ---------------------------------------------------------------------------------

def test_a_switch_during_a_job_waits_its_turn_and_is_reported_as_queued(blocked):
    services, blocker = blocked
    before = services.manager.selected
    target = next(i for i in services.registry.list() if i.title != before.title)
    running = services.queue.submit(blocker.kind)
    assert blocker.started.wait(60)
    switch = services.checkpoints.submit_switch(target.name)
    assert switch.kind == "checkpoint-switch" and switch.progress.state is JobState.QUEUED
    assert services.queue.position(switch) == 1
    assert services.manager.selected == before  # nothing changes until it runs
    follower = services.generation.submit_txt2img(Txt2ImgRequest(prompt="a cat", seed=1, **SMALL))
    assert services.queue.position(follower) == 2
    blocker.release.set()
    assert switch.wait(120) == target and services.manager.selected == target
    result = follower.wait(120)
    assert f"Model: {target.model_name}" in result.infotexts[0]  # queued after the switch: runs on the new model
    assert switch.device == "cpu" and switch.started_at >= running.finished_at - 1e-3


@pytest.fixture
def counted(data_dir, model_files) -> Iterator[tuple[Services, list[str]]]:
    from webui.models import loader

    loads: list[str] = []

    def counting_load(info, dtype, allow_pickle):
        loads.append(info.name)
        return loader.load(info, dtype, allow_pickle)

    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    svc = build_services(make_settings(data_dir), load=counting_load)
    yield svc, loads
    svc.queue.shutdown()


def test_a_failed_switch_keeps_the_working_model_loaded(counted, data_dir):
    services, loads = counted
    working = services.manager.selected
    services.generation.txt2img(Txt2ImgRequest(prompt="warm up", seed=1, **SMALL), timeout=120)
    assert services.manager.loaded_titles() == [working.title]
    broken = data_dir / "models" / "Stable-diffusion" / "broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    services.registry.refresh()
    switch = services.checkpoints.submit_switch("broken")
    with pytest.raises(ModelLoadError, match="broken"):
        switch.wait(60)
    assert switch.progress.state is JobState.FAILED and "broken" in switch.progress.textinfo
    assert services.manager.selected == working
    assert services.manager.loaded_titles() == [working.title]  # loaded first, so nothing was evicted
    result = services.generation.txt2img(Txt2ImgRequest(prompt="after", seed=2, **SMALL), timeout=120)
    assert f"Model: {working.model_name}" in result.infotexts[0]
    assert loads == [working.name, "broken.safetensors"]  # the working model was never reloaded


def test_the_api_switch_runs_on_the_queue_and_names_a_file_that_fails(services, data_dir):
    client = TestClient(create_app(services), base_url="http://127.0.0.1:7860")
    target = next(i for i in services.registry.list() if i.title != services.manager.selected.title)
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": target.title}).status_code == 200
    assert services.manager.selected == target
    switches = [j for j in services.queue.jobs() if j.kind == "checkpoint-switch"]
    assert [j.progress.state for j in switches] == [JobState.DONE] and switches[0].device == "cpu"
    (data_dir / "models" / "Stable-diffusion" / "zz-broken.safetensors").write_bytes(b"not a model at all")
    client.post("/sdapi/v1/refresh-checkpoints")
    response = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "zz-broken"})
    assert response.status_code == 422 and response.json()["error"].startswith("sd_model_checkpoint: ")
    assert services.manager.selected == target
    unknown = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope", "samples_save": True})
    assert unknown.status_code == 422 and "nope" in unknown.json()["error"]


# --- several devices ----------------------------------------------------------------------------------------------

@pytest.fixture
def two_devices(tmp_path, model_files) -> Iterator[Services]:
    data_dir = tmp_path / "two"
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    svc = build_services(make_settings(data_dir, device="cpu:0,cpu:1"))
    yield svc
    svc.queue.shutdown()


def test_two_devices_run_two_jobs_at_once(two_devices):
    services = two_devices
    assert services.queue.devices == ["cpu:0", "cpu:1"]
    meeting = threading.Barrier(2, timeout=60)  # passes only when both jobs are running at the same time
    events: list[tuple[str, str]] = []

    def meet(ctx, name):
        events.append(("start", name))
        meeting.wait()
        events.append(("end", name))
        return ctx.device.name

    services.queue.register(JobKind("test-meet", meet))
    first, second = services.queue.submit("test-meet", "a"), services.queue.submit("test-meet", "b")
    assert sorted([first.wait(60), second.wait(60)]) == ["cpu:0", "cpu:1"]
    assert [kind for kind, _ in events[:2]] == ["start", "start"]  # both started before either ended


def test_results_on_two_devices_equal_their_single_device_twins(two_devices, services):
    requests = [Txt2ImgRequest(prompt=f"a boat {i}", seed=40 + i, checkpoint=name, **SMALL)
                for i, name in enumerate(("tiny-sd15", "other-sd15", "tiny-sd15", "other-sd15"))]
    jobs = [two_devices.generation.submit_txt2img(r) for r in requests]
    parallel = [job.wait(180) for job in jobs]
    assert {job.device for job in jobs} <= {"cpu:0", "cpu:1"}
    for request, result in zip(requests, parallel):
        twin = services.generation.txt2img(request, timeout=180)
        assert np.array_equal(np.asarray(result.images[0]), np.asarray(twin.images[0]))


def test_a_job_goes_to_the_device_that_has_its_checkpoint(two_devices):
    services = two_devices
    first, second = services.devices
    with first.lease("tiny-sd15"):
        pass
    with second.lease("other-sd15"):
        pass
    assert first.loaded_titles() == [services.registry.find("tiny-sd15").title]
    assert second.loaded_titles() == [services.registry.find("other-sd15").title]
    for name, device in (("other-sd15", "cpu:1"), ("tiny-sd15", "cpu:0"), ("other-sd15", "cpu:1")):
        job = services.generation.submit_txt2img(Txt2ImgRequest(prompt="x", seed=1, checkpoint=name, **SMALL))
        job.wait(120)
        assert job.device == device, name
    # Nothing was loaded twice: each device still holds only its own checkpoint.
    assert len(first.loaded_titles()) == 1 and len(second.loaded_titles()) == 1


def test_device_flag_is_checked():
    from webui.cli import parse_settings
    from webui.models.memory import resolve_devices

    assert parse_settings(["--device", "cpu:0, cpu:1"]).device == "cpu:0,cpu:1"
    with pytest.raises(SystemExit):
        parse_settings(["--device", "gpu0"])
    with pytest.raises(ValueError, match="listed twice"):
        resolve_devices("cpu:0,cpu:0")
    with pytest.raises(ValueError, match="CUDA device"):
        resolve_devices("cuda:7")


# --- long jobs: priorities, pause and resume ----------------------------------------------------------------------

class Units:
    """A long, pausable job of three units; each unit waits for the test to let it finish."""

    def __init__(self, services: Services):
        self.gates = [threading.Event() for _ in range(3)]
        self.events: list[str] = []
        self.first_started = threading.Event()
        services.queue.register(JobKind("test-long", self._run, pausable=True, priority=LONG))

    def _run(self, ctx, _request) -> int:
        done = 0
        for index, gate in enumerate(self.gates):
            ctx.safe_point()
            if ctx.interrupted:
                break
            self.events.append(f"unit {index} started")
            self.first_started.set()
            assert gate.wait(120)
            done += 1
        return done


def paused_after_first_unit(services: Services, units: Units):
    """A long job, paused while its first unit runs; returned once it has stopped at the next safe point."""
    long_job = services.queue.submit("test-long")
    assert units.first_started.wait(60)
    services.queue.pause(long_job.id)
    units.gates[0].set()
    wait_state(long_job, JobState.PAUSED)
    return long_job


def test_interactive_jobs_run_between_the_steps_of_a_long_job(services):
    units = Units(services)
    long_job = services.queue.submit("test-long")
    wait_state(long_job, JobState.RUNNING)
    quick = services.generation.submit_txt2img(Txt2ImgRequest(prompt="between", seed=3, **SMALL))
    assert units.first_started.wait(60)
    units.gates[0].set()  # unit 0 ends; at the safe point the waiting txt2img runs first
    quick.wait(120)
    assert quick.device == long_job.device and not long_job.finished
    for gate in units.gates[1:]:
        gate.set()
    assert long_job.wait(60) == 3
    assert quick.finished_at < long_job.finished_at


def test_a_long_job_pauses_at_a_safe_point_lets_others_run_and_resumes(services):
    units = Units(services)
    long_job = paused_after_first_unit(services, units)
    # While paused, other work (of any priority) uses the device.
    result = services.generation.txt2img(Txt2ImgRequest(prompt="while paused", seed=4, **SMALL), timeout=120)
    assert len(result.images) == 1 and long_job.progress.state is JobState.PAUSED
    assert units.events == ["unit 0 started"]
    services.queue.resume(long_job.id)
    for gate in units.gates[1:]:
        gate.set()
    assert long_job.wait(60) == 3 and long_job.progress.state is JobState.DONE


def test_a_paused_job_can_be_cancelled_and_only_long_jobs_pause(services):
    units = Units(services)
    long_job = paused_after_first_unit(services, units)
    long_job.interrupt()
    assert long_job.wait(60) == 1  # stopped at the safe point, after its first unit
    quick = services.generation.submit_txt2img(Txt2ImgRequest(prompt="x", seed=1, **SMALL))
    from webui.errors import InvalidRequest
    with pytest.raises(InvalidRequest, match="^job_id: a txt2img job cannot be paused"):
        services.queue.pause(quick.id)
    quick.wait(120)


def test_a_batch_folder_paused_in_the_queue_waits_while_others_run(blocked, data_dir):
    from PIL import Image

    services, blocker = blocked
    folder = data_dir / "batch-in"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(folder / f"{i}.png")
    from webui.types import Img2ImgRequest
    template = Img2ImgRequest(prompt="batch", seed=9, **SMALL)
    services.queue.submit(blocker.kind)
    assert blocker.started.wait(60)
    batch = services.generation.submit_img2img_batch(template, folder)
    assert batch.kind == "img2img-batch" and batch.priority == LONG
    services.queue.pause(batch.id)
    assert batch.progress.state is JobState.PAUSED
    quick = services.generation.submit_txt2img(Txt2ImgRequest(prompt="x", seed=1, **SMALL))
    blocker.release.set()
    quick.wait(120)
    assert batch.progress.state is JobState.PAUSED and services.queue.position(batch) == 1
    services.queue.resume(batch.id)
    assert len(batch.wait(180).images) == 2


def test_the_devices_route_lists_each_worker_and_its_job(two_devices):
    services = two_devices
    blocker = Blocker(services)
    client = TestClient(create_app(services), base_url="http://127.0.0.1:7860")
    job = services.queue.submit(blocker.kind)
    assert blocker.started.wait(60)
    devices = client.get("/studio/v1/devices").json()
    assert [d["name"] for d in devices] == ["cpu:0", "cpu:1"]
    busy = next(d for d in devices if d["job"])
    assert busy["job"] == {"id": job.id, "kind": blocker.kind} and busy["name"] == blocker.devices[0]
    assert busy["checkpoints"] == [services.manager.selected.title]
    assert busy["residents"][0]["kind"] == "checkpoint" and busy["residents"][0]["in_use"] is True
    blocker.release.set()
    job.wait(60)


def test_pause_and_resume_routes(blocked, data_dir):
    from PIL import Image

    from webui.types import Img2ImgRequest

    services, blocker = blocked
    client = TestClient(create_app(services), base_url="http://127.0.0.1:7860")
    folder = data_dir / "batch-in"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64), (10, 90, 200)).save(folder / "a.png")
    services.queue.submit(blocker.kind)
    assert blocker.started.wait(60)
    batch = services.generation.submit_img2img_batch(Img2ImgRequest(prompt="b", seed=1, **SMALL), folder)
    quick = services.generation.submit_txt2img(Txt2ImgRequest(prompt="q", seed=1, **SMALL))
    paused = client.post(f"/studio/v1/jobs/{batch.id}/pause")
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    listed = {j["id"]: j for j in client.get("/studio/v1/jobs").json()}
    assert listed[batch.id]["status"] == "paused" and listed[quick.id]["status"] == "queued"
    refused = client.post(f"/studio/v1/jobs/{quick.id}/pause")
    assert refused.status_code == 422 and refused.json()["error"].startswith("job_id: a txt2img job cannot be paused")
    assert client.post("/studio/v1/jobs/nope/pause").status_code == 404
    assert client.post(f"/studio/v1/jobs/{batch.id}/resume").json()["status"] == "queued"
    blocker.release.set()
    assert len(batch.wait(180).images) == 1 and quick.wait(180).images
    assert client.post(f"/studio/v1/jobs/{batch.id}/resume").status_code == 422  # it has ended
