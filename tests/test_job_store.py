"""The job history in SQLite: what is recorded, what survives a restart, and a damaged file."""

from __future__ import annotations

import io
import logging
import sqlite3
import threading

import pytest
from PIL import Image

from tests.conftest import install, make_settings
from webui.services.container import build_services
from webui.services.job_store import SCHEMA_VERSION, JobStore
from webui.types import CheckpointInfo, Img2ImgRequest, Txt2ImgRequest
from tests.job_helpers import submit_work

SMALL = dict(width=64, height=64, steps=2)


@pytest.fixture
def store(tmp_path):
    job_store = JobStore(tmp_path / "studio.sqlite3", tmp_path / "history" / "inputs")
    yield job_store
    job_store.close()


def test_a_job_round_trips_with_its_settings(store):
    request = Txt2ImgRequest(prompt="a red fox", negative_prompt="blur", seed=42, cfg_scale=5.5, **SMALL)
    store.submitted("job1", "txt2img", request, priority=3, created_at=1000.0)
    queued = store.get("job1")
    assert (queued.status, queued.kind, queued.priority, queued.created_at) == ("queued", "txt2img", 3, 1000.0)
    assert queued.request == request.model_dump()
    assert Txt2ImgRequest(**queued.request) == request  # every field comes back as it went in

    store.started("job1", 1001.0, "cpu")
    assert (store.get("job1").status, store.get("job1").device) == ("running", "cpu")
    store.set_status("job1", "paused")
    assert store.get("job1").status == "paused"
    store.finished("job1", "failed", 1002.5, error="boom: the disk is full")
    done = store.get("job1")
    assert (done.status, done.finished_at, done.error) == ("failed", 1002.5, "boom: the disk is full")
    assert store.get("nope") is None


def test_list_is_newest_first_paginated_and_filtered_by_kind(store):
    for i, kind in enumerate(["txt2img", "img2img", "txt2img", "style-transfer"]):
        store.submitted(f"j{i}", kind, None, 0, created_at=100.0 + i)
    assert [r.id for r in store.list()] == ["j3", "j2", "j1", "j0"]
    assert [r.id for r in store.list(limit=2, offset=1)] == ["j2", "j1"]
    assert [r.id for r in store.list(kinds=("txt2img",))] == ["j2", "j0"]


def test_wal_mode_and_schema_version_are_set(store):
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 1
        indexes = {row[1] for row in db.execute("PRAGMA index_list(jobs)")}
    assert "jobs_created_at" in indexes


def test_restart_lists_previous_jobs_and_marks_unfinished_ones_interrupted(tmp_path):
    first = JobStore(tmp_path / "studio.sqlite3", tmp_path / "inputs")
    first.submitted("done", "txt2img", Txt2ImgRequest(prompt="kept", **SMALL), 0, 1.0)
    first.started("done", 2.0, "cpu")
    first.finished("done", "done", 3.0, result=None)
    first.submitted("running", "txt2img", Txt2ImgRequest(prompt="killed", **SMALL), 0, 4.0)
    first.started("running", 5.0, "cpu")
    first.submitted("waiting", "img2img", None, 0, 6.0)
    first.close()  # the process dies here, as far as the file knows

    second = JobStore(tmp_path / "studio.sqlite3", tmp_path / "inputs")
    assert second.mark_unfinished_interrupted() == 2
    records = {r.id: r for r in second.list()}
    assert records["done"].status == "done" and records["done"].request["prompt"] == "kept"
    assert records["running"].status == "interrupted" and records["running"].finished_at is not None
    assert records["waiting"].status == "interrupted"
    assert "stopped before this job finished" in records["running"].error
    assert second.mark_unfinished_interrupted() == 0
    second.close()


def test_img2img_inputs_are_saved_and_the_request_keeps_no_images(store, tmp_path):
    init = Image.new("RGB", (64, 64), (200, 10, 10))
    mask = Image.new("L", (64, 64), 255)
    request = Img2ImgRequest(prompt="winter", init_images=[init], mask=mask, denoising_strength=0.4, **SMALL)
    store.submitted("i1", "img2img", request, 0, 1.0)
    record = store.get("i1")
    assert "init_images" not in record.request and "mask" not in record.request
    assert record.request["denoising_strength"] == 0.4
    names = sorted(p.rsplit("/", 1)[1] for p in record.input_images)
    assert names == ["init_images-0.png", "mask.png"]
    saved = {p.rsplit("/", 1)[1]: Image.open(p) for p in record.input_images}
    assert saved["init_images-0.png"].getpixel((3, 3)) == (200, 10, 10)
    assert not list((tmp_path / "history" / "inputs").rglob("*.tmp"))  # atomic writes leave no temp files


def test_other_results_are_kept_as_a_short_dict(store, tmp_path):
    info = CheckpointInfo(path=tmp_path / "a.safetensors", name="a.safetensors", model_name="a",
                          kind="safetensors", short_hash="0123456789", sha256="01" * 32)
    store.submitted("c1", "checkpoint", None, 0, 1.0)
    store.finished("c1", "done", 2.0, result=info)
    assert store.get("c1").result == {"checkpoint": "a.safetensors [0123456789]", "model": "a",
                                      "model_hash": "0123456789"}


def test_a_corrupt_file_is_moved_aside_and_a_fresh_history_starts(tmp_path, caplog):
    path = tmp_path / "studio.sqlite3"
    path.write_bytes(b"this is not a database, just junk " * 200)
    with caplog.at_level(logging.ERROR, logger="webui.services.job_store"):
        store = JobStore(path, tmp_path / "inputs")
    assert "moved it to" in caplog.text
    aside = list(tmp_path.glob("studio.sqlite3.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    store.submitted("j", "txt2img", None, 0, 1.0)
    assert [r.id for r in store.list()] == ["j"]
    store.close()


def test_an_unwritable_history_never_fails_a_job(tmp_path, caplog):
    store = JobStore(tmp_path / "studio.sqlite3", tmp_path / "inputs")
    store.close()  # every later call hits a closed store: logged, never raised
    store.submitted("j", "txt2img", None, 0, 1.0)
    store.finished("j", "done", 2.0)
    assert store.list() == [] and store.get("j") is None


def test_server_starts_over_a_corrupt_history(data_dir, model_files):
    install(model_files["single"], data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "studio.sqlite3").write_bytes(b"\x00garbage" * 512)
    services = build_services(make_settings(data_dir))
    try:
        result = services.generation.txt2img(Txt2ImgRequest(prompt="after the crash", seed=5, **SMALL), timeout=120)
        assert len(result.images) == 1
        assert [r.request["prompt"] for r in services.jobs_store.list()] == ["after the crash"]
        assert list(data_dir.glob("studio.sqlite3.corrupt-*"))
    finally:
        services.queue.shutdown()
        services.jobs_store.close()


def test_record_from_a_real_generation(services):
    request = Txt2ImgRequest(prompt="a lighthouse at dusk", seed=1234, batch_size=2, sampler_name="Euler a",
                             **SMALL)
    job = services.generation.submit_txt2img(request)
    result = job.wait(120)
    record = services.jobs_store.get(job.id)
    assert (record.kind, record.status, record.device) == ("txt2img", "done", "cpu")
    assert record.created_at <= record.started_at <= record.finished_at
    assert Txt2ImgRequest(**record.request) == request
    assert record.result["seeds"] == [1234, 1235] == result.seeds
    assert record.result["infotexts"] == result.infotexts and "Seed: 1234" in record.result["infotexts"][0]
    assert record.result["paths"] == [str(p) for p in result.paths] and len(result.paths) == 2
    assert record.result["model"] in ("tiny-sd15", "other-sd15")
    thumb = Image.open(io.BytesIO(record.thumbnail))
    assert thumb.size == (64, 64) and thumb.format == "PNG"
    assert thumb.convert("RGB").tobytes() == result.images[0].convert("RGB").tobytes()


def test_a_failed_and_a_cancelled_job_are_recorded(services):
    blocker_started, release = threading.Event(), threading.Event()

    def hold(ctx):
        blocker_started.set()
        release.wait(30)

    blocker = submit_work(services.queue, "test-hold", hold)
    assert blocker_started.wait(30)
    waiting = services.generation.submit_txt2img(Txt2ImgRequest(prompt="never runs", **SMALL))
    services.queue.interrupt(waiting.id)
    assert services.jobs_store.get(waiting.id).status == "cancelled"  # at once, though the worker is busy
    release.set()
    blocker.wait(30)

    failing = submit_work(services.queue, "test-fail", lambda ctx: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.wait(30)
    record = services.jobs_store.get(failing.id)
    assert record.status == "failed" and "division by zero" in record.error


def test_jobs_waiting_at_shutdown_are_interrupted_at_the_next_start(tmp_path):
    from webui.services.jobs import JobQueue

    store = JobStore(tmp_path / "studio.sqlite3", tmp_path / "inputs")
    queue = JobQueue(store=store)
    started, release = threading.Event(), threading.Event()
    running = submit_work(queue, "test-hold", lambda ctx: (started.set(), release.wait(30)))
    assert started.wait(30)
    waiting = submit_work(queue, "test-wait", lambda ctx: None)
    queue.shutdown()  # the server stops with one job running and one waiting
    store.close()
    release.set()
    running.wait_done(30)

    after = JobStore(tmp_path / "studio.sqlite3", tmp_path / "inputs")
    assert after.mark_unfinished_interrupted() == 2
    assert {after.get(running.id).status, after.get(waiting.id).status} == {"interrupted"}
    after.close()


def test_a_batch_folder_job_is_recorded_with_its_template_settings(services, data_dir):
    from PIL import Image

    from webui.types import Img2ImgRequest

    folder = data_dir / "in"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 64), (1, 2, 3)).save(folder / "a.png")
    job = services.generation.submit_img2img_batch(Img2ImgRequest(prompt="a batch fox", steps=3, width=64,
                                                                  height=64, save_images=False), folder)
    job.wait(120)
    record = services.jobs_store.get(job.id)
    assert record.kind == "img2img-batch" and record.prompt == "a batch fox"
    assert record.request["steps"] == 3 and record.request["input_dir"] == str(folder)
    assert "template" not in record.request
