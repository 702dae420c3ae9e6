"""The actions under a result gallery, in process: Save and Zip files, Open folder, the selected image's own
infotext and saved path, and "Send to" filling img2img from the selected image."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from tests.conftest import install, make_settings
from webui.errors import InvalidRequest
from webui.services.container import build_services
from webui.services.gallery_files import GalleryFiles, GalleryImage, open_folder
from webui.types import GenerationResult, Txt2ImgRequest
from webui.ui import gallery_actions
from webui.ui.app import build_ui


def png_with(infotext: str, colour=(10, 20, 30)) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", infotext)
    out = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def image(seed: int, prompt: str = "a boat", path=None) -> GalleryImage:
    text = f"{prompt}\nNegative prompt: fog\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: {seed}, Size: 8x8, Model: m"
    return GalleryImage(png=png_with(text, (seed % 256, 0, 0)), infotext=text, path=path)


def test_zip_holds_every_image_of_the_batch_byte_for_byte(tmp_path):
    files = GalleryFiles(tmp_path / "outputs", temp_dir=tmp_path / "zips")
    saved = image(9)
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "00003-9.png").write_bytes(saved.png)
    # A saved image is read back from its file (a session keeps only the bytes of unsaved ones).
    batch = [image(7), image(8), GalleryImage(None, saved.infotext, tmp_path / "outputs" / "00003-9.png")]
    path = files.zip(batch)
    assert path.name == "images-7-9.zip" and path.is_relative_to(tmp_path / "zips")
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["7.png", "8.png", "00003-9.png"]
        assert [archive.read(n) for n in archive.namelist()] == [i.data() for i in batch]
    assert not [p for p in path.parent.iterdir() if p != path]  # no temp file left beside it
    with pytest.raises(Exception, match="no image to zip"):
        files.zip([])


def test_save_writes_only_inside_outputs_save_with_a_log_line(tmp_path):
    outputs = tmp_path / "outputs"
    files = GalleryFiles(outputs)
    hostile = image(5, prompt="../../../../etc/passwd /tmp/x")
    [first] = files.save([hostile])
    [second] = files.save([image(6, path=outputs / "txt2img-images" / "00009-6.png")])
    assert first == outputs / "save" / "00000-5.png" and second == outputs / "save" / "00001-6.png"
    assert first.read_bytes() == hostile.png  # as made: re-encoding would drop the C2PA manifest
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["00000-5.png", "00001-6.png", "log.csv"]
    with open(outputs / "save" / "log.csv", newline="") as log:
        rows = list(csv.DictReader(log))
    assert [(r["prompt"], r["seed"], r["filename"], r["negative_prompt"], r["width"]) for r in rows] == [
        ("../../../../etc/passwd /tmp/x", "5", "00000-5.png", "fog", "8"), ("a boat", "6", "00001-6.png", "fog", "8")]


def test_open_folder_without_an_opener_says_which_program_is_missing(tmp_path):
    message = open_folder(tmp_path / "outputs", command="xdg-open", search_path=str(tmp_path))
    assert message.startswith(f"Cannot open {tmp_path / 'outputs'}: `xdg-open` is not installed on the server")


def _ids(demo) -> set[str]:
    return {b.elem_id for b in demo.blocks.values() if getattr(b, "elem_id", None)}


def test_open_folder_only_on_a_server_not_exposed(data_dir, model_files, tiny_loader):
    install(model_files["single"], data_dir)
    for host, shown in (("127.0.0.1", True), ("0.0.0.0", False)):
        services = build_services(make_settings(data_dir, host=host), load=tiny_loader)
        try:
            ids = _ids(build_ui(services))
        finally:
            services.queue.shutdown()
        assert {"txt2img_save", "txt2img_zip", "img2img_save", "txt2img_send_inpaint"} <= ids
        assert ("txt2img_open_folder" in ids) is shown and ("img2img_open_folder" in ids) is shown


def test_a_batch_keeps_each_images_infotext_and_send_to_img2img_uses_the_selected_one(services):
    request = Txt2ImgRequest.parse(prompt="two boats", width=64, height=64, steps=2, batch_size=2, seed=40)
    result = services.generation.submit_txt2img(request).wait()
    grid, *images = gallery_actions.gallery_images(result)  # the grid comes first, as the gallery shows it
    assert grid.grid and grid.path == result.grid_path and "Seed: 40" in grid.infotext
    assert [("Seed: 40" in i.infotext, "Seed: 41" in i.infotext) for i in images] == [(True, False), (False, True)]
    assert [i.path for i in images] == result.paths and all(p.is_file() for p in result.paths)
    line = gallery_actions.saved_html(images, 1, services.settings.data_dir)
    assert f"outputs/txt2img-images/{result.paths[1].parent.name}/" in line and result.paths[1].name in line
    both = gallery_actions.saved_html(images, None, services.settings.data_dir)  # none selected yet
    assert f"{result.paths[0].name} … {result.paths[1].name} (2 images)" in both
    unsaved = gallery_actions.gallery_images(GenerationResult(images=result.images, seeds=result.seeds,
                                                              infotexts=result.infotexts, pngs=result.pngs))
    assert "not saved to the outputs folder" in gallery_actions.saved_html(unsaved, 0, services.settings.data_dir)

    demo = build_ui(services)
    # The first of the two (txt2img's gallery, then img2img's) that send to the img2img mode: the settings and
    # the tab, then the image.
    send = next(d for d in demo.fns.values() if getattr(d.fn, "__name__", None) == "send_to_target"
                and any(getattr(o, "elem_id", None) == "img2img_mode" for o in d.outputs))
    updates = send.fn(images, 1)
    shown = {getattr(c, "elem_id", None) or getattr(c, "label", None): u for c, u in zip(send.outputs, updates)}
    assert shown["img2img_mode"]["value"] == "img2img"
    assert shown["img2img_seed"]["value"] == 41
    assert shown["img2img_prompt"]["value"] == "two boats"
    assert updates[-1].selected == "img2img"
    image = next(d for d in demo.fns.values() if getattr(d.fn, "__name__", None) == "send_image"
                 and [getattr(o, "elem_id", None) for o in d.outputs] == ["img2img_image"])
    assert image.fn(images, 1)["value"] == str(result.paths[1])

    # Save: the selected image, or all of them while none is selected (A1111's Save).
    save = next(d for d in demo.fns.values() if getattr(d.fn, "__name__", None) == "save"
                and [getattr(o, "elem_id", None) for o in d.outputs][0] == "txt2img_download")
    save_dir = services.settings.outputs_dir / "save"
    save.fn(images, 1)
    assert sorted(p.name for p in save_dir.glob("*.png")) == ["00000-41.png"]
    download, message = save.fn(images, None)
    assert sorted(p.name for p in save_dir.glob("*.png")) == ["00000-41.png", "00001-40.png", "00002-41.png"]
    assert [Path(p).name for p in download["value"]] == ["00001-40.png", "00002-41.png"]
    assert "outputs/save" in message


def test_generate_streams_then_hands_the_gallery_every_image_of_the_job(services):
    """What Generate's event yields: first the previous job's images cleared, last this job's, none selected."""
    from webui.ui.generation_form import stream_job

    submitted = []

    def submit():
        submitted.append(services.generation.submit_txt2img(
            Txt2ImgRequest.parse(prompt="boats", width=64, height=64, steps=2, batch_size=2, seed=7)))
        return submitted[-1]

    updates = list(gallery_actions.with_results(stream_job(submit), lambda: submitted[-1] if submitted else None,
                                                services.settings.data_dir))
    assert updates[0][-4:-1] == ([], None, "") and updates[0][-1]["visible"] is False
    *_, images, selected, saved, _download = updates[-1]
    assert len({len(u) for u in updates}) == 1  # every update fills the event's outputs
    result = submitted[0].wait()
    # The grid (return_grid, on by default as in A1111) comes first, as the gallery shows it; then the images.
    assert images[0].grid and images[0].path == result.grid_path and result.grid_path.parent.parent.name == "txt2img-grids"
    assert [i.path for i in images[1:]] == result.paths and selected is None
    assert "(2 images)" in saved and "Seed: 7" in updates[-2][3]


def test_a_job_that_fails_leaves_the_results_empty(services):
    from webui.ui.generation_form import stream_job

    def submit():
        raise InvalidRequest("steps", "must be at least 1")

    updates = list(gallery_actions.with_results(stream_job(submit), lambda: None, services.settings.data_dir))
    assert len(updates) == 1 and "steps: must be at least 1" in updates[0][0] and updates[0][-4] == []
