"""Hostile images through every input path: webui.image_io directly, the REST API, and the UI's handlers.

Files are built here, by Pillow where it can write the format and by hand (PNG chunks) where a bomb needs it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import gradio as gr
import pytest
from fastapi.testclient import TestClient
from gradio.data_classes import FileData
from PIL import ExifTags, Image, PngImagePlugin

from tests import gradio_events
from tests.conftest import install, make_settings
from webui.errors import InvalidRequest
from webui.image_io import MAX_TEXT_BYTES, MAX_TEXT_CHUNKS, open_image, parse_image_formats, strip_metadata
from webui.server import create_app
from webui.services.container import Services, build_services
from webui.ui.app import build_ui

# Pillow warns on opening a header past its own limit (the 12000x12000 claim); the refusal is what we check.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")

ROOT = Path(__file__).resolve().parent.parent
SMALL = {"width": 64, "height": 64, "steps": 2}
INFOTEXT = "a red door\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64"
LATITUDE = (48.0, 51.0, 24.0)

# ------------------------------------------------------------------------------------------ building files


def encoded(fmt: str, size: tuple[int, int] = (16, 16), mode: str = "RGB", **params) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, "red").save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A valid-looking PNG header for a huge image, with a few bytes of pixel data: decoding would allocate."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (PngImagePlugin._MAGIC + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def full_png_claiming(width: int, height: int) -> bytes:
    """Like ``png_claiming`` but with every row present (all zero): decoding it really fills width*height bytes."""
    deflate, row = zlib.compressobj(9), b"\0" * (width + 1)  # filter byte + one byte per grey pixel
    idat = b"".join(deflate.compress(row * 100) for _ in range(height // 100)) + deflate.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (PngImagePlugin._MAGIC + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat)
            + png_chunk(b"IEND", b""))


def png_with_chunks(*chunks: bytes) -> bytes:
    """A real 8x8 PNG with extra chunks right after IHDR (where A1111 puts its text)."""
    plain = encoded("PNG", (8, 8))
    ihdr_end = 8 + 25
    return plain[:ihdr_end] + b"".join(chunks) + plain[ihdr_end:]


def ztxt_bomb(count: int = 60) -> bytes:
    """About 60 KB on disk, 60 MB of text once Pillow inflates it (the issue's example)."""
    payload = zlib.compress(b"A" * 1_000_000, 9)
    return png_with_chunks(*(png_chunk(b"zTXt", b"k%d\0\0" % i + payload) for i in range(count)))


def itxt_bomb() -> bytes:
    text = zlib.compress(b"B" * (MAX_TEXT_BYTES + 1), 9)
    return png_with_chunks(png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\x01\0en\0\0" + text))


def truncated_png() -> bytes:
    noise = Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def jpeg_with_gps(orientation: int = 6) -> bytes:
    """A 20x10 phone photo: GPS position, rotation in EXIF, a comment."""
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Make] = "PhoneCo"
    exif[ExifTags.Base.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: LATITUDE}
    return encoded("JPEG", (20, 10), exif=exif, comment=b"home sweet home")


def has_gps(image: Image.Image) -> bool:
    return bool(image.getexif().get_ifd(ExifTags.IFD.GPSInfo))


HOSTILE: list[tuple[str, bytes, str]] = [
    ("eps", encoded("EPS"), "EPS images are not accepted (PNG, JPEG or WebP)"),
    ("pdf", encoded("PDF"), "PDF images are not accepted"),
    ("tiff", encoded("TIFF"), "TIFF images are not accepted"),
    ("bmp", encoded("BMP"), "BMP images are not accepted"),
    ("gif", encoded("GIF"), "GIF images are not accepted"),
    ("ico", encoded("ICO"), "ICO images are not accepted"),
    ("ppm", encoded("PPM"), "PPM images are not accepted"),
    ("qoi", encoded("QOI"), "QOI images are not accepted"),
    ("jpeg2000", encoded("JPEG2000"), "JPEG 2000 images are not accepted"),
    ("psd", b"8BPS\x00\x01" + b"\x00" * 64, "PSD images are not accepted"),
    ("svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG images are not accepted"),
    ("text", b"just some words, not an image\n", "is not a readable image (PNG, JPEG or WebP expected)"),
    ("empty", b"", "is empty"),
    ("broken png header", PngImagePlugin._MAGIC + b"garbage!" * 4, "is not a readable image (PNG, JPEG or WebP"),
    ("broken webp", b"RIFF\x20\x00\x00\x00WEBPVP8 " + b"\x01" * 24, "is not a readable image"),
    ("truncated png", truncated_png(), "damaged or truncated"),
    ("100000x100000 claim", png_claiming(100_000, 100_000), "over the pixel budget"),
    ("12000x12000 claim", png_claiming(12_000, 12_000), "is 12000x12000, over the pixel budget of 16777216"),
    ("1x4000 strip", encoded("PNG", (1, 4000)), "aspect ratio over 64:1"),
    ("zTXt bomb", ztxt_bomb(), f"text chunks exceed {MAX_TEXT_BYTES} bytes"),
    ("huge tEXt", png_with_chunks(png_chunk(b"tEXt", b"parameters\0" + b"x" * (MAX_TEXT_BYTES + 1))),
     "text chunks exceed"),
    ("iTXt bomb", itxt_bomb(), "text chunks exceed"),
    ("many text chunks", png_with_chunks(*(png_chunk(b"tEXt", b"k\0v") for _ in range(MAX_TEXT_CHUNKS + 1))),
     f"more than {MAX_TEXT_CHUNKS} text chunks"),
]
HOSTILE_IDS = [name for name, _, _ in HOSTILE]

# ---------------------------------------------------------------------------------- image_io, table-driven


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_the_default_formats_open_fully_loaded_and_detached(fmt, tmp_path):
    path = tmp_path / f"ok.{fmt.lower()}"
    path.write_bytes(encoded(fmt, (24, 16)))
    for source in (path.read_bytes(), path, str(path)):
        image = open_image(source, "image")
        assert type(image) is Image.Image  # a plain image: no plugin object holding the file
        assert image.size == (24, 16)
        assert image.convert("RGB").getpixel((3, 3))[0] > 200  # pixels are there without the file


@pytest.mark.parametrize("name, data, message", HOSTILE, ids=HOSTILE_IDS)
def test_hostile_images_are_refused_naming_the_field_and_the_problem(name, data, message, tmp_path):
    path = tmp_path / "secret-folder" / "upload.bin"
    path.parent.mkdir()
    path.write_bytes(data)
    for source in (data, path):
        with pytest.raises(InvalidRequest) as caught:
            open_image(source, "init_images.0")
        assert str(caught.value).startswith("init_images.0: ") and caught.value.field == "init_images.0"
        assert message in str(caught.value)
        assert "secret-folder" not in str(caught.value) and str(tmp_path) not in str(caught.value)


def test_more_formats_only_by_setting_and_never_eps():
    bmp = encoded("BMP")
    with pytest.raises(InvalidRequest, match="BMP images are not accepted"):
        open_image(bmp, "image")
    assert open_image(bmp, "image", formats=parse_image_formats("png,jpeg,webp,bmp")).size == (16, 16)
    with pytest.raises(InvalidRequest, match=r"image: EPS images are not accepted \(PNG or BMP\)"):
        open_image(encoded("EPS"), "image", formats=("PNG", "BMP"))
    for bad in ("PNG,EPS", "PDF", "", "PNG,NOPE"):
        with pytest.raises(ValueError):
            parse_image_formats(bad)


def test_image_formats_flag_is_validated_at_start_up(capsys):
    from webui.cli import parse_settings

    assert parse_settings(["--image-formats", "png,webp,gif"]).limits.image_formats == ("PNG", "WEBP", "GIF")
    assert parse_settings([]).limits.image_formats == ("PNG", "JPEG", "WEBP")
    with pytest.raises(SystemExit):
        parse_settings(["--image-formats", "PNG,EPS"])
    assert "--image-formats: EPS cannot be enabled" in capsys.readouterr().err


def test_special_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    for source in (fifo, "/dev/zero", tmp_path):
        with pytest.raises(InvalidRequest, match="^image: is not a regular file$"):
            open_image(source, "image")
    with pytest.raises(InvalidRequest, match="^image: cannot be read") as caught:
        open_image(tmp_path / "missing.png", "image")
    assert str(tmp_path) not in str(caught.value)


def test_the_configured_pixel_budget_applies():
    assert open_image(encoded("PNG", (64, 64)), "image", max_pixels=64 * 64).size == (64, 64)
    with pytest.raises(InvalidRequest, match="^image: is 65x64, over the pixel budget of 4096 pixels$"):
        open_image(encoded("PNG", (65, 64)), "image", max_pixels=64 * 64)


def test_a1111_infotext_and_moderate_text_chunks_still_read():
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", INFOTEXT, zip=True)
    meta.add_text("notes", "n" * 100_000)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=meta)
    kept = open_image(buffer.getvalue(), "image", keep_metadata=True)
    assert kept.info["parameters"] == INFOTEXT and len(kept.info["notes"]) == 100_000
    assert open_image(buffer.getvalue(), "image").info == {"parameters": INFOTEXT}


# ------------------------------------------------------------------------------------- EXIF / GPS stripping


def test_photo_metadata_is_dropped_after_applying_the_rotation():
    with Image.open(io.BytesIO(jpeg_with_gps())) as original:
        assert has_gps(original) and original.size == (20, 10)  # the file really carries GPS
    image = open_image(jpeg_with_gps(), "init_images.0")
    assert image.size == (10, 20)  # orientation 6 applied: the user sees what the camera meant
    assert not has_gps(image) and not dict(image.getexif())
    assert not set(image.info) & {"exif", "comment", "xmp", "icc_profile"}
    out = io.BytesIO()
    image.save(out, format="JPEG")
    with Image.open(out) as resaved:
        assert not has_gps(resaved) and "exif" not in resaved.info


def test_png_and_webp_exif_and_xmp_are_dropped_but_the_infotext_stays():
    exif = Image.Exif()
    exif[ExifTags.Base.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: LATITUDE}
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", INFOTEXT)
    meta.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta>Author: Jane, GPS 48.85</x:xmpmeta>")
    png = encoded("PNG", exif=exif, pnginfo=meta)
    webp = encoded("WEBP", exif=exif, xmp=b"<x:xmpmeta>GPS 48.85</x:xmpmeta>")
    for data in (png, webp):
        with Image.open(io.BytesIO(data)) as original:
            assert has_gps(original)
        image = open_image(data, "image")
        assert not has_gps(image)
        assert set(image.info) <= {"parameters"}
    assert open_image(png, "image").info["parameters"] == INFOTEXT


def test_png_info_still_sees_metadata_when_it_asks_for_it():
    image = open_image(jpeg_with_gps(), "image", keep_metadata=True)
    assert has_gps(image) and image.size == (20, 10)


def test_strip_metadata_returns_a_clean_copy_for_storage():
    with Image.open(io.BytesIO(jpeg_with_gps())) as original:
        original.load()
        clean = strip_metadata(original)
        assert has_gps(original)  # the input is not modified
    assert not has_gps(clean) and not set(clean.info) & {"exif", "comment"}
    path = io.BytesIO()
    clean.save(path, format="PNG")
    with Image.open(path) as stored:
        assert not has_gps(stored)


# ------------------------------------------------- Ghostscript and memory, measured in a fresh interpreter


def run_probe(code: str, env: dict[str, str] | None = None) -> dict:
    """Run ``code`` in a fresh Python (its own PATH, its own peak-RSS counter); it prints one JSON line."""
    script = textwrap.dedent("""
        import json, sys
        def peak_kb():
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        def reset_peak():
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
    """) + textwrap.dedent(code)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_eps_never_runs_ghostscript_on_any_input_path(tmp_path):
    """A fake ``gs`` first on PATH records any call. Unguarded Pillow calls it (the control); our paths never."""
    bin_dir, marker, eps = tmp_path / "bin", tmp_path / "gs-ran", tmp_path / "picture.eps"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f"#!/bin/sh\ntouch '{marker}'\nexit 0\n")
    (bin_dir / "gs").chmod(0o755)
    eps.write_bytes(encoded("EPS", mode="CMYK"))
    result = run_probe(f"""
        import base64, os
        from webui.errors import InvalidRequest
        from webui.api.images import decode_image
        from webui.image_io import open_image
        from webui.infotext import read_png_infotext
        eps, marker = {str(eps)!r}, {str(marker)!r}
        data = open(eps, "rb").read()
        attempts = {{
            "open_image bytes": lambda: open_image(data, "image"),
            "open_image path": lambda: open_image(eps, "image"),
            "api base64": lambda: decode_image(base64.b64encode(data).decode(), "init_images.0"),
            "png info": lambda: read_png_infotext(eps),
        }}
        out = {{}}
        for name, attempt in attempts.items():
            try:
                attempt()
                out[name] = "accepted"
            except InvalidRequest as exc:
                out[name] = str(exc)
            except Exception as exc:  # what an unguarded path would raise when gs fails
                out[name] = f"unexpected {{type(exc).__name__}}"
        out["gs ran for our paths"] = os.path.exists(marker)
        from PIL import Image
        try:
            Image.open(eps).load()
        except Exception:
            pass
        out["gs ran for plain Pillow"] = os.path.exists(marker)
        print(json.dumps(out))
    """, env={"PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"})
    assert result.pop("gs ran for plain Pillow") is True  # the probe can see a Ghostscript call
    assert result.pop("gs ran for our paths") is False
    for name, outcome in result.items():
        assert "EPS images are not accepted" in outcome, name


def test_memory_stays_bounded_for_the_text_bomb_and_the_huge_header(tmp_path):
    bomb, huge = tmp_path / "bomb.png", tmp_path / "huge.png"
    bomb.write_bytes(ztxt_bomb())
    huge.write_bytes(full_png_claiming(12_000, 12_000))  # ~140 KB on disk, 144 MB decoded
    result = run_probe(f"""
        from PIL import Image
        from webui.errors import InvalidRequest
        from webui.image_io import open_image
        out = {{}}
        for name, path in (("bomb", {str(bomb)!r}), ("huge", {str(huge)!r})):
            data = open(path, "rb").read()
            reset_peak()
            before = peak_kb()
            try:
                open_image(data, "image", keep_metadata=True)
                out[name] = "accepted"
            except InvalidRequest as exc:
                out[name] = str(exc)
            out[name + " growth kb"] = peak_kb() - before
        # Controls: plain Pillow on the same files, so a probe that cannot see the growth fails the test.
        reset_peak()
        before = peak_kb()
        with Image.open({str(bomb)!r}) as unguarded:
            text = sum(len(v) for v in unguarded.info.values())
        out["bomb control kb"] = peak_kb() - before
        Image.MAX_IMAGE_PIXELS = None  # this throwaway interpreter only
        reset_peak()
        before = peak_kb()
        with Image.open({str(huge)!r}) as unguarded:
            unguarded.load()
        out["huge control kb"] = peak_kb() - before
        print(json.dumps(out))
    """)
    assert "text chunks exceed" in result["bomb"] and "over the pixel budget" in result["huge"]
    assert result["bomb control kb"] > 50_000 and result["huge control kb"] > 50_000
    assert result["bomb growth kb"] < 8_000
    assert result["huge growth kb"] < 8_000


# ------------------------------------------------------------------------------------------------ REST API


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Stack:
    services: Services
    client: TestClient
    data_dir: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory, model_files, tiny_loader) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("image-io") / "data"
    install(model_files["single"], data_dir)
    services = build_services(make_settings(data_dir), load=tiny_loader)
    try:
        with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as client:
            yield Stack(services, client, data_dir)
    finally:
        services.queue.shutdown()


def assert_422(response, field: str, message: str) -> None:
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"].startswith(f"{field}: ") and message in body["error"], body
    assert body["detail"][0]["loc"] == ["body", *field.split(".")]


@pytest.mark.parametrize("name, data, message", HOSTILE, ids=HOSTILE_IDS)
def test_png_info_route_refuses_hostile_images(stack, name, data, message):
    if not data:
        message = "expected a base64-encoded image"  # an empty string is refused before decoding
    assert_422(stack.client.post("/sdapi/v1/png-info", json={"image": b64(data)}), "image", message)


@pytest.mark.parametrize("field", ["init_images.0", "mask"])
@pytest.mark.parametrize("name", ["eps", "zTXt bomb", "12000x12000 claim", "text"])
def test_img2img_route_refuses_hostile_images_naming_the_field(stack, field, name):
    _, data, message = HOSTILE[HOSTILE_IDS.index(name)]
    good = b64(encoded("PNG", (64, 64)))
    body = {"prompt": "x", **SMALL, "init_images": [good], "mask": good}
    if field == "mask":
        body["mask"] = b64(data)
    else:
        body["init_images"] = [b64(data)]
    assert_422(stack.client.post("/sdapi/v1/img2img", json=body), field, message)


def test_png_info_route_reports_text_chunks_and_the_infotext(stack):
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", INFOTEXT)
    meta.add_text("postprocessing", "Postprocess upscaler: None")
    response = stack.client.post("/sdapi/v1/png-info", json={"image": b64(encoded("PNG", pnginfo=meta))})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["info"] == INFOTEXT and body["items"] == {"postprocessing": "Postprocess upscaler: None"}
    assert body["parameters"]["Sampler"] == "Euler a"


def test_img2img_from_a_gps_photo_saves_outputs_without_gps(stack):
    body = {"prompt": "a painting", **SMALL, "init_images": [b64(jpeg_with_gps(orientation=1))],
            "save_images": True}
    response = stack.client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    saved = sorted((stack.data_dir / "outputs").rglob("*.png"))
    assert saved
    for path in saved:
        with Image.open(path) as output:
            assert not has_gps(output) and "exif" not in output.info and "comment" not in output.info
            assert "a painting" in output.info["parameters"]
    returned = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert not has_gps(returned) and "exif" not in returned.info


# --------------------------------------------------------------------------------------------- UI handlers


@pytest.fixture(scope="module")
def demo(stack) -> gr.Blocks:
    return build_ui(stack.services)


def handler(demo: gr.Blocks, name: str):
    """An event's function and inputs, found by api_name or by the function's own name."""
    return next(dep for dep in demo.fns.values() if name in (dep.api_name, getattr(dep.fn, "__name__", None)))


def by_id(blocks: Iterable, elem_id: str):
    return next(block for block in blocks if getattr(block, "elem_id", None) == elem_id)


def run_img2img(demo: gr.Blocks, **values_by_elem_id) -> list[tuple]:
    """The img2img Generate handler with the form's defaults, some fields set; returns what it streamed."""
    dep = handler(demo, "img2img")
    values = {block: getattr(block, "value", None) for block in dep.inputs}
    values.update({by_id(dep.inputs, elem_id): value for elem_id, value in values_by_elem_id.items()})
    small = {"Sampling steps": 2, "Width": 64, "Height": 64, "Prompt": "a painting", "Negative prompt": ""}
    values.update({block: small[block.label] for block in dep.inputs if getattr(block, "label", None) in small})
    return list(dep.fn(values))


def finished(updates: list[tuple]) -> tuple:
    """The update that reports the finished job (the gallery's own results update comes after it)."""
    return next(update for update in reversed(updates) if isinstance(update[0], str))


def uploaded(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("name, data, message", [h for h in HOSTILE if h[1]],
                         ids=[h[0] for h in HOSTILE if h[1]])
def test_png_info_tab_shows_a_red_error_for_hostile_images(demo, name, data, message, tmp_path):
    widget = by_id(demo.blocks.values(), "pnginfo_image")
    path = uploaded(tmp_path, "upload.png", data)
    raw, table = handler(demo, "png_info").fn(widget.preprocess(widget.data_model(path=path, orig_name="u.png")))
    assert raw == "" and "studio-error" in table and html.escape(message) in table
    assert str(tmp_path) not in table


def test_png_info_tab_reads_parameters_from_png_and_jpeg(demo, tmp_path):
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", INFOTEXT)
    exif = Image.Exif()
    exif[ExifTags.IFD.Exif] = {ExifTags.Base.UserComment: b"UNICODE\0" + INFOTEXT.encode("utf-16-be")}
    for path in (uploaded(tmp_path, "a.png", encoded("PNG", pnginfo=meta)),
                 uploaded(tmp_path, "a.jpg", encoded("JPEG", exif=exif))):
        raw, table = handler(demo, "png_info").fn(path)
        assert raw == INFOTEXT and "Euler a" in table


def test_png_info_tab_survives_damaged_exif(demo, tmp_path):
    exif = Image.Exif()
    exif[ExifTags.IFD.Exif] = {ExifTags.Base.UserComment: b"UNICODE\0" + INFOTEXT.encode("utf-16-be")}
    data = encoded("JPEG", exif=exif)
    tiff_header = b"II*\x00" if b"II*\x00" in data else b"MM\x00*"
    path = uploaded(tmp_path, "damaged.jpg", data.replace(tiff_header, b"XX\x00*", 1))
    raw, table = handler(demo, "png_info").fn(path)
    assert raw == "" and "carries no generation parameters" in table


def test_upload_widgets_hand_over_the_file_without_decoding_it(demo, tmp_path):
    """Gradio's own preprocessing opens every upload with all Pillow formats; ours must not open it at all."""
    missing = str(tmp_path / "never-written.eps")  # Gradio's preprocessing would fail opening it
    blocks = demo.blocks.values()
    for elem_id in ("img2img_image", "img2img_mask", "style_image", "style_output", "pnginfo_image"):
        widget = by_id(blocks, elem_id)
        assert widget.preprocess(widget.data_model(path=missing, orig_name="x.eps")) == missing, elem_id
    image = by_id(blocks, "img2img_image")
    png = encoded("PNG")
    assert image.preprocess(image.data_model(url="data:image/png;base64," + b64(png), path=None)) == png
    editor = by_id(blocks, "img2img_editor")
    value = editor.preprocess(editor.data_model(background=FileData(path=missing), layers=[FileData(path=missing)],
                                                composite=None))
    assert value == {"background": missing, "layers": [missing], "composite": None}
    config = demo.get_config_file()
    types = {c["props"].get("elem_id"): c["type"] for c in config["components"]}
    assert types["img2img_editor"] == "imageeditor" and types["img2img_image"] == "image"  # the stock frontend


def test_img2img_tab_refuses_hostile_uploads_naming_the_field(demo, tmp_path):
    eps = uploaded(tmp_path, "x.eps", encoded("EPS"))
    png = uploaded(tmp_path, "ok.png", encoded("PNG", (64, 64)))
    bomb = uploaded(tmp_path, "bomb.png", ztxt_bomb())
    cases = [
        (dict(img2img_image=eps), "image: EPS images are not accepted"),
        (dict(img2img_image=bomb), "image: text chunks exceed"),
        (dict(img2img_mode="Inpaint", img2img_editor={"background": eps, "layers": [], "composite": None}),
         "image: EPS images are not accepted"),
        (dict(img2img_mode="Inpaint", img2img_editor={"background": png, "layers": [eps], "composite": None}),
         "mask: EPS images are not accepted"),
        (dict(img2img_mode="Inpaint", img2img_editor={"background": png, "layers": [], "composite": None},
              img2img_mask=eps), "mask: EPS images are not accepted"),
    ]
    for values, message in cases:
        progress = run_img2img(demo, **values)[0][0]
        assert "studio-error" in progress and html.escape(message) in progress, (values, progress)
        assert str(tmp_path) not in progress
    _, info = handler(demo, "style_transfer").fn("CycleGAN/any", eps)
    assert "studio-error" in info and "image: EPS images are not accepted" in info


def test_img2img_tab_generates_from_uploaded_files(demo, tmp_path):
    photo = uploaded(tmp_path, "photo.jpg", jpeg_with_gps(orientation=1))
    last = finished(run_img2img(demo, img2img_image=photo))
    assert "1 image(s)" in last[0], last[0]
    layer = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (16, 16, 48, 48))
    buffer = io.BytesIO()
    layer.save(buffer, format="PNG")
    editor = {"background": uploaded(tmp_path, "bg.png", encoded("PNG", (64, 64))),
              "layers": [buffer.getvalue()], "composite": None}  # a file and an editor blob
    last = finished(run_img2img(demo, img2img_mode="Inpaint", img2img_editor=editor))
    assert "1 image(s)" in last[0], last[0]


def test_send_to_img2img_passes_the_style_result_file(demo, tmp_path):
    result = uploaded(tmp_path, "styled.png", encoded("PNG", (32, 32)))
    image_update, mode_update = handler(demo, "send_to_img2img").fn(result)
    assert image_update["value"] == result and mode_update["value"] == "img2img"
    shown = by_id(demo.blocks.values(), "img2img_image").postprocess(image_update["value"])
    assert shown is not None and Path(shown.path).name.endswith(".png")


def test_batch_folder_files_open_through_the_same_rules(stack):
    from webui.types import Img2ImgRequest

    folder = stack.data_dir / "batch-in"  # inside the data dir, where batch folders are allowed by default
    folder.mkdir()
    (folder / "a.png").write_bytes(encoded("PNG", (64, 64)))
    (folder / "b.png").write_bytes(encoded("EPS"))  # the suffix says PNG; the content decides
    template = Img2ImgRequest.parse(prompt="x", init_images=[], **SMALL)
    result = stack.services.generation.submit_img2img_batch(template, folder).wait(timeout=120)
    # The bad file is skipped with a warning naming it; the rest of the folder is still done.
    assert len(result.images) == 1
    assert result.warnings == ["Skipped input_dir: b.png: EPS images are not accepted (PNG, JPEG or WebP)"]
    assert str(stack.data_dir) not in result.warnings[0]


def gradio_call(client: TestClient, api_name: str, data: list) -> str:
    """Run a (private) Gradio event as the browser does; returns its event stream's text."""
    return gradio_events.call(client, api_name, data)


@pytest.mark.parametrize("name", ["eps", "zTXt bomb", "12000x12000 claim", "truncated png"])
def test_png_info_through_the_gradio_event_api(stack, name):
    """The whole Gradio path: upload, then the png_info event with that file, as a browser or client does it."""
    _, data, message = HOSTILE[HOSTILE_IDS.index(name)]
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", INFOTEXT)
    for content, expected in ((data, html.escape(message)), (encoded("PNG", pnginfo=meta), "Euler a")):
        uploaded_paths = stack.client.post("/gradio_api/upload", files={"files": ("upload.png", content)}).json()
        stream = gradio_call(stack.client, "png_info",
                             [{"path": uploaded_paths[0], "meta": {"_type": "gradio.FileData"}}])
        assert "process_completed" in stream and expected in stream, stream
