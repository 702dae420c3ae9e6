"""ScriptService: a script is ONE queue job that calls plain runs inside it and returns its grid first."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.script_fixtures import Recorder, make_extension, services_with
from webui.errors import InvalidRequest
from webui.infotext import parse_infotext, read_png_infotext
from webui.types import Img2ImgRequest, JobState, Txt2ImgRequest
from webui.ui.generation_form import progress_html

REQUEST = dict(prompt="a red fox", width=64, height=64, steps=2, seed=11)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def svc(data_dir, model_files, tiny_loader, recorder):
    services = services_with(data_dir, model_files, tiny_loader, make_extension(recorder))
    yield services
    services.queue.shutdown()


def test_grid_first_then_images_with_their_infotexts_in_one_job(svc, recorder):
    before = {job.id for job in svc.queue.jobs()} if hasattr(svc.queue, "jobs") else set()
    job = svc.scripts.submit("txt2img", "two seeds", Txt2ImgRequest.parse(**REQUEST), {"step": 3, "label": "L1"})
    result = job.wait(120)
    assert job.kind == "txt2img-script"
    # One job: the two runs happened inside it, nothing else was queued.
    assert [j.id for j in svc.queue.jobs() if j.id not in before] == [job.id]
    assert len(result.images) == 3
    grid, first, second = result.images
    assert grid.size == (128, 64) and first.size == second.size == (64, 64)
    assert result.seeds[1:] == [11, 14]
    assert len(result.infotexts) == len(result.pngs) == 3
    cell = parse_infotext(result.infotexts[2]).params
    assert cell["Seed"] == "14" and cell["Script"] == "Two seeds" and cell["Pair label"] == "L1"
    assert parse_infotext(result.infotexts[0]).params["Seed"] == "11"
    # The API's PNGs carry those infotexts.
    assert read_png_infotext(Image.open(__import__("io").BytesIO(result.pngs[0]))) == result.infotexts[0]
    # Saved: the grid in txt2img-grids/, each run's image in txt2img-images/.
    assert len(result.paths) == 3
    assert result.paths[0].parent.parent.name == "txt2img-grids"
    assert all(p.parent.parent.name == "txt2img-images" and p.is_file() for p in result.paths[1:])
    assert read_png_infotext(result.paths[0]) == result.infotexts[0]
    assert recorder.progress == [("Run 1 of 2", 0, 2), ("Run 2 of 2", 1, 2)]
    assert job.state is JobState.DONE


def test_values_checked_by_the_script_model_and_named(svc):
    request = Txt2ImgRequest.parse(**REQUEST)
    with pytest.raises(InvalidRequest) as err:
        svc.scripts.submit("txt2img", "Two seeds", request, {"step": 0})
    assert err.value.field == "script_args.step"
    with pytest.raises(InvalidRequest) as err:
        svc.scripts.submit("txt2img", "Two seeds", request, {"mode": "diagonal"})
    assert err.value.field == "script_args.mode"
    with pytest.raises(InvalidRequest) as err:
        svc.scripts.submit("txt2img", "No such script", request, {})
    assert err.value.field == "script_name" and "Two seeds" in str(err.value)
    with pytest.raises(InvalidRequest) as err:  # txt2img only
        svc.scripts.submit("img2img", "Plain red", Img2ImgRequest.parse(
            **REQUEST, init_images=[Image.new("RGB", (64, 64))]), {})
    assert err.value.field == "script_name"
    # The base request is checked like a plain run's, before anything is queued.
    with pytest.raises(InvalidRequest) as err:
        svc.scripts.submit("txt2img", "Two seeds", Txt2ImgRequest.parse(**{**REQUEST, "width": 4096}), {})
    assert err.value.field == "width"
    with pytest.raises(InvalidRequest) as err:
        svc.scripts.submit("img2img", "Two seeds", Img2ImgRequest.parse(
            **REQUEST, init_images=[Image.new("RGB", (64, 64))], mask=Image.new("L", (32, 32))), {})
    assert err.value.field == "mask"


def test_interrupt_between_runs_returns_what_is_done(svc, recorder):
    recorder.hold = True
    job = svc.scripts.submit("txt2img", "Two seeds", Txt2ImgRequest.parse(**REQUEST), {})
    assert recorder.between.wait(120)
    # Half the script's work is done: the job's fraction counts its runs, the text says which one.
    progress = job.progress
    assert progress.image_count == 2 and progress.fraction == 0.5
    assert progress.textinfo.startswith("Run 1 of 2")
    # The UI's progress line says where the script is, before the step of the run it made.
    assert progress.stage == "Run 1 of 2"
    assert "Run 1 of 2 · Step 2/2" in progress_html(progress)
    job.interrupt()
    recorder.go_on.set()
    result = job.wait(120)
    assert recorder.interrupted_after_first is True
    assert result.interrupted
    assert len(result.images) == 2  # the grid of one, and the one image
    assert result.seeds[1:] == [11]


def make_extension_error_fails_the_job_with_its_message(svc):
    job = svc.scripts.submit("txt2img", "Two seeds", Txt2ImgRequest.parse(**REQUEST), {"fail": True})
    with pytest.raises(Exception) as err:
        job.wait(120)
    assert str(err.value) == "the second run was refused on purpose"
    assert job.state is JobState.FAILED


def test_a_crashing_script_fails_its_job_and_the_server_goes_on(svc, caplog):
    job = svc.scripts.submit("txt2img", "Crashing script", Txt2ImgRequest.parse(**REQUEST), {})
    with pytest.raises(Exception) as err:
        job.wait(120)
    assert str(err.value) == "Script 'Crashing script' failed: KeyError: 'missing'"
    assert "Traceback" in caplog.text or any(r.exc_info for r in caplog.records)
    # The queue still runs jobs.
    assert svc.generation.txt2img(Txt2ImgRequest.parse(**REQUEST), timeout=120).images


def test_images_a_script_makes_itself_are_finished_and_saved(svc):
    result = svc.scripts.run("txt2img", "Plain red", Txt2ImgRequest.parse(**REQUEST), {}, timeout=120)
    assert len(result.images) == 1 and len(result.paths) == 1
    assert "Script: Plain red" in read_png_infotext(result.paths[0]) == result.infotexts[0]
    assert result.paths[0].parent.parent.name == "txt2img-images"


def test_without_save_images_nothing_is_written(svc, data_dir):
    request = Txt2ImgRequest.parse(**REQUEST, save_images=False)
    result = svc.scripts.run("txt2img", "Two seeds", request, {}, timeout=120)
    assert len(result.images) == 3 and result.paths == []
    assert not list((data_dir / "outputs").rglob("*.png"))


def test_upscale_upscalers_and_checkpoints_from_the_script_context(svc):
    request = Img2ImgRequest.parse(**REQUEST, init_images=[Image.new("RGB", (64, 64), "gray")])
    result = svc.scripts.run("img2img", "Upscaled", request, {}, timeout=120)
    assert result.images[0].size == (128, 128)
    params = parse_infotext(result.infotexts[0]).params
    assert params["Upscalers"].split("/")[:3] == ["None", "Lanczos", "Nearest"]
    assert params["Checkpoints"] == "other-sd15/tiny-sd15"
    # An upscaler that does not exist fails the job with the server's own message, naming the choices.
    job = svc.scripts.submit("img2img", "Upscaled", request, {"upscaler": "Nope"})
    with pytest.raises(Exception) as err:
        job.wait(120)
    assert str(err.value).startswith("upscale: upscaler: unknown upscaler 'Nope'. Available: None, Lanczos")
