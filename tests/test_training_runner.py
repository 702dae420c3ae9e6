"""The training runner on the shared queue: cancel stops at a step and keeps a resume state, pause holds the run
at a step boundary, generations run between steps (or wait, when the run says so), the device is freed at the end,
and a kill during a save leaves the previous state file loadable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.conftest import install, make_settings
from tests.training_helpers import colour_set, lora_request, train
from webui.services.container import build_services
from webui.training import state_file
from webui.training.protocol import TrainState
from webui.types import JobState, Txt2ImgRequest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def env(tmp_path_factory, model_files):
    root = tmp_path_factory.mktemp("training-runner")
    data = root / "data"
    install(model_files["single"], data)
    # The test's temp folders hold the training images: allowed like --batch-dirs folders.
    services = build_services(make_settings(data, batch_dirs=(tmp_path_factory.getbasetemp(),)))
    yield services, colour_set(root / "colours")
    services.queue.shutdown()


def _wait_for(job, condition, timeout=120):
    """Follow a job's progress until ``condition(progress)`` holds (no sleeping: progress notifies)."""
    version = 0
    while True:
        version, progress = job.watch(version, timeout)
        if condition(progress):
            return progress
        assert not job.finished, f"the job ended first: {progress.state} {progress.textinfo}"


def test_cancel_stops_at_a_step_and_keeps_a_resume_state(env):
    services, images = env
    job_id = services.training.start(lora_request(images, "cancelled", max_train_steps=500))
    job = services.queue.get(job_id)
    _wait_for(job, lambda p: p.step >= 2)
    services.training.cancel(job_id)
    assert job.wait_done(120)
    report = services.training.get(job_id)
    assert report["state"] == "cancelled" and "cancelled at step" in report["message"]
    stopped = int(report["history"][-1]["step"])
    assert 2 <= stopped < 500
    assert report["resume_states"][-1].endswith(f"step-{stopped:08d}.state.safetensors")
    assert state_file.load_state(Path(report["resume_states"][-1])).values["studio_runner_step"] == stopped
    assert not (services.settings.lora_dir / "cancelled.safetensors").exists(), "no result unless asked for"
    assert not services.queue.device_owners[0].names("training"), "the run's weights were not freed"


def test_save_on_cancel_writes_the_lora_as_it_stands(env):
    services, images = env
    job_id = services.training.start(lora_request(images, "kept", max_train_steps=500, save_on_cancel=True))
    job = services.queue.get(job_id)
    _wait_for(job, lambda p: p.step >= 1)
    services.training.cancel(job_id)
    job.wait_done(120)
    assert "kept.safetensors was saved" in services.training.get(job_id)["message"]
    assert (services.settings.lora_dir / "kept.safetensors").is_file()


def test_pause_holds_the_run_and_resume_finishes_it(env):
    services, images = env
    job_id = services.training.start(lora_request(images, "paused", max_train_steps=6))
    job = services.queue.get(job_id)
    _wait_for(job, lambda p: p.step >= 1)
    services.training.pause(job_id)
    paused = _wait_for(job, lambda p: p.state is JobState.PAUSED)
    held_at = paused.step
    # A generation asked for meanwhile runs at the paused run's safe point, and the run is still paused after.
    generation = services.generation.submit_txt2img(Txt2ImgRequest(prompt="x", steps=2, width=64, height=64))
    generation.wait(120)
    assert job.progress.state is JobState.PAUSED and job.progress.step == held_at
    services.training.resume(job_id)
    assert job.wait_done(120)
    report = services.training.get(job_id)
    assert report["state"] == "done" and report["step"] == 6
    assert [p["step"] for p in report["history"]] == [1, 2, 3, 4, 5, 6]


def test_generations_wait_when_the_run_keeps_the_device(env):
    services, images = env
    job_id = services.training.start(lora_request(images, "exclusive", max_train_steps=4,
                                                  allow_generation_between_steps=False))
    job = services.queue.get(job_id)
    _wait_for(job, lambda p: p.step >= 1)
    generation = services.generation.submit_txt2img(Txt2ImgRequest(prompt="x", steps=2, width=64, height=64))
    generation.wait(120)
    assert job.finished and generation.started_at >= job.finished_at


def test_generations_run_between_steps_when_allowed(env):
    services, images = env
    job_id = services.training.start(lora_request(images, "shared", max_train_steps=40))
    job = services.queue.get(job_id)
    _wait_for(job, lambda p: p.step >= 1)
    generation = services.generation.submit_txt2img(Txt2ImgRequest(prompt="x", steps=2, width=64, height=64))
    generation.wait(120)
    assert not job.finished, "the generation waited for the whole run"
    services.training.cancel(job_id)
    job.wait_done(120)


def test_a_finished_run_cannot_be_cancelled_and_unknown_ids_are_named(env):
    services, images = env
    report = train(services, lora_request(images, "short", max_train_steps=1))
    from webui.errors import InvalidRequest
    with pytest.raises(InvalidRequest, match="already ended"):
        services.training.cancel(report["id"])
    with pytest.raises(InvalidRequest, match="no training job"):
        services.training.get("nope")
    assert report["id"] in [run["id"] for run in services.training.list()]


WRITER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from webui.training import state_file
    from webui.training.protocol import TrainState
    path = Path(sys.argv[1])
    value = 0
    print("ready", flush=True)
    while True:  # rewrite the state over and over until killed
        value += 1
        state_file.save_state(path, TrainState({"w": torch.full((8_000_000,), float(value))}, {"step": value}))
""")


def test_a_kill_during_a_save_leaves_the_previous_state_loadable(tmp_path):
    path = tmp_path / "state.safetensors"
    state_file.save_state(path, TrainState({"w": torch.zeros(3)}, {"step": 0}))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE)
    try:
        assert writer.stdout.readline().strip() == b"ready"
        temp = None
        while temp is None:  # kill while a temp file is being written
            temp = next(iter(tmp_path.glob(".state.safetensors.*.tmp")), None)
        os.kill(writer.pid, signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    state = state_file.load_state(path)  # the last complete file, old or new, never half of one
    step = state.values["step"]
    assert torch.equal(state.tensors["w"], torch.full_like(state.tensors["w"], float(step)))
    leftovers = list(tmp_path.glob("*.tmp"))
    assert leftovers, "the kill did not land during a write; the test proved nothing"
    state_file.save_step(tmp_path, 1, state, keep=2)
    assert not list(tmp_path.glob("*.tmp")), "the next save sweeps the killed write's temp file"


def test_a_damaged_state_is_refused_with_its_name(tmp_path):
    from webui.errors import InvalidRequest
    path = tmp_path / "step-00000001.state.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(InvalidRequest, match="step-00000001.state.safetensors is not a readable resume state"):
        state_file.load_state(path)


class _LinearTrainer:
    """A real one-layer trainer that runs out of memory at a chosen step (what a too-large run does on a GPU)."""

    def __init__(self, fail_at: int):
        self.layer = torch.nn.Linear(4, 4)
        self.total_steps = 10
        self.steps_per_epoch = 5
        self._fail_at = fail_at

    def on_device(self, device):
        pass

    def step(self, step):
        if step == self._fail_at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return {"loss": 1.0 / (step + 1), "lr": 0.1}

    def state(self):
        return TrainState({"w": self.layer.weight.detach().clone()}, {})

    def load_state(self, state):
        pass

    def samples(self):
        return []

    def artifact(self):
        raise AssertionError("a failed run writes no artifact")


def test_out_of_memory_names_the_step_and_frees_the_device(tmp_path):
    from dataclasses import dataclass

    from webui.services.jobs import JobQueue
    from webui.services.training import TrainingService
    from webui.training.protocol import TrainingMethod, TrainingResources

    @dataclass(frozen=True)
    class Request:
        fail_at: int

    method = TrainingMethod("linear", "Linear", Request, lambda body: Request(**body), lambda r, res: None,
                            lambda r, res: _LinearTrainer(r.fail_at), uses_checkpoint=False)
    resources = TrainingResources(tmp_path, tmp_path, load_checkpoint=lambda t: None, checkpoint_hash=lambda t: None)
    queue = JobQueue()
    try:
        service = TrainingService([method], queue, resources, tmp_path / "training")
        job_id = service.start(Request(fail_at=2))
        assert queue.get(job_id).wait_done(60)
        report = service.get(job_id)
        assert report["state"] == "failed"
        assert report["message"] == ("out of memory at step 3: lower batch size or resolution, or enable gradient "
                                     "checkpointing")
        assert [p["step"] for p in report["history"]] == [1, 2]
        assert not queue.device_owners[0].names("training")
        frames, tb = [], queue.get(job_id).error.__traceback__
        while tb is not None:
            frames.append(tb.tb_frame)
            tb = tb.tb_next
        assert not any(isinstance(value, _LinearTrainer) for frame in frames for value in frame.f_locals.values()), \
            "the job's error keeps the trainer (and its device memory) alive"
    finally:
        queue.shutdown()


def test_resuming_with_another_rank_is_refused(env):
    services, images = env
    first = train(services, lora_request(images, "rank8", max_train_steps=1))
    again = train(services, lora_request(images, "rank4", max_train_steps=2, rank=4, resume_from=first["id"]))
    assert again["state"] == "failed" and again["message"].startswith("resume_from:")
    assert "same rank" in again["message"]


def test_the_job_history_keeps_the_runs_settings(env):
    services, images = env
    report = train(services, lora_request(images, "recorded", max_train_steps=1, rank=6))
    record = services.jobs_store.get(report["id"])
    assert record.kind == "train" and record.request["rank"] == 6 and record.request["output_name"] == "recorded"
