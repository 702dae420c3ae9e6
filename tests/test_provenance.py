"""Provenance on every generated image: AI-generated marker (XMP + PNG text), invisible watermark, C2PA manifest,
the infotext saying what was applied, and the detect command and route reading it all back."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from webui.models.gan import ResnetGenerator
from webui.provenance import marker, watermark
from webui.provenance.__main__ import main as provenance_command
from webui.provenance.credentials import ContentCredentials, read_credentials
from webui.provenance.detect import inspect
from webui.provenance.encode import finish_png
from webui.provenance.policy import NONE, ProvenancePolicy
from webui.server import create_app
from webui.services.style import StyleTransferRequest
from webui.types import Img2ImgRequest, Txt2ImgRequest

AI = marker.TRAINED_ALGORITHMIC_MEDIA
ALL_OFF = {"provenance_ai_marker": False, "provenance_watermark": False, "provenance_c2pa": False}
NO_C2PA = ProvenancePolicy(c2pa=False)


def generated_like(size: int, seed: int, detail: float) -> Image.Image:
    """A stand-in for a generated picture: smooth colour fields with some texture; ``detail`` 0..1.

    detail=1 is busy (foliage, crowds), detail≈0.1 nearly flat (sky, studio backdrop).
    """
    rng = np.random.default_rng(seed)
    canvas = np.zeros((size, size, 3), dtype=np.float32)
    for cells, amplitude in ((4, 60.0), (16, 25.0 * detail), (64, 12.0 * detail), (size, 5.0 * detail)):
        coarse = torch.from_numpy(rng.uniform(-1, 1, (1, 3, cells, cells)).astype(np.float32))
        fine = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
        canvas += amplitude * fine[0].permute(1, 2, 0).numpy()
    return Image.fromarray(np.clip(canvas + 128, 0, 255).astype(np.uint8), "RGB")


def resave(png: bytes, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buffer, fmt, **options)
    return buffer.getvalue()


def png_of(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def xmp_of(image: Image.Image) -> str:
    return image.info["xmp"].decode("utf-8")  # Pillow keeps the XMP packet as bytes


def params_of(infotext: str) -> str:
    return infotext.splitlines()[-1]


# --------------------------------------------------------------------------- watermark robustness (512x512)


@pytest.mark.parametrize("detail", [1.0, 0.1], ids=["textured", "smooth"])
def test_watermark_survives_png_and_jpeg_q90_and_stays_invisible(detail):
    original = generated_like(512, seed=3, detail=detail)
    final = finish_png(original, "a lighthouse", "", {"Steps": 20, "Seed": 1}, NO_C2PA, None, title="t")

    assert inspect(final.png).watermark is True
    assert inspect(resave(final.png, "JPEG", quality=90)).watermark is True
    # Unmarked images, lossless or JPEG, are not flagged.
    assert inspect(png_of(original)).watermark is False
    assert inspect(resave(png_of(original), "JPEG", quality=90)).watermark is False
    # Invisible: the mark costs less than a JPEG q90 round trip does (PSNR well above 35 dB).
    error = np.asarray(final.image, np.float64) - np.asarray(original, np.float64)
    assert 10 * np.log10(255**2 / np.mean(error**2)) > 35
    assert "Watermark: StableStudio" in params_of(final.infotext)


def test_watermark_needs_256x256_and_the_infotext_says_when_it_was_skipped():
    final = finish_png(generated_like(128, seed=1, detail=1.0), "p", "", {"Seed": 1}, NO_C2PA, None, title="t")
    line = params_of(final.infotext)
    assert "Watermark skipped: image under 65536 pixels (256x256)" in line and "Watermark: " not in line
    assert inspect(final.png).watermark is None  # too small to tell, reported as such rather than "not found"


# --------------------------------------------------------------------------- the service: saved files


def saved_png(result) -> bytes:
    [path] = result.paths
    return path.read_bytes()


def test_saved_txt2img_file_declares_itself_ai_generated(services):
    result = services.generation.txt2img(Txt2ImgRequest(prompt="a fox", seed=5, width=64, height=64, steps=2))
    data = saved_png(result)
    assert data == result.pngs[0]  # the API sends the very bytes that were saved
    image = Image.open(io.BytesIO(data))
    assert image.info[marker.TEXT_KEY] == AI
    assert f'Iptc4xmpExt:DigitalSourceType="{AI}"' in xmp_of(image)
    assert 'xmp:CreatorTool="Stable Studio ' in xmp_of(image)
    assert image.info["parameters"] == result.infotexts[0]
    assert image.info["parameters"].startswith("a fox\n") and "Seed: 5," in image.info["parameters"]
    report = inspect(data)
    assert report.ai_generated and report.digital_source_type == AI
    line = params_of(result.infotexts[0])
    assert "Watermark skipped" in line  # 64x64: recorded, never silent
    assert line.endswith("Version: studio-0.1.0")  # the provenance keys go before Version, as A1111 orders


def test_everything_off_leaves_no_marks_and_no_claims(services):
    services.options.update(ALL_OFF)
    result = services.generation.txt2img(Txt2ImgRequest(prompt="a fox", seed=5, width=64, height=64, steps=1))
    image = Image.open(io.BytesIO(saved_png(result)))
    assert marker.TEXT_KEY not in image.info and "xmp" not in image.info and "Software" not in image.info
    line = params_of(image.info["parameters"])
    assert "Watermark" not in line and "Content credentials" not in line  # not even "skipped": it was off
    report = inspect(saved_png(result))
    assert not report.ai_generated and report.c2pa["present"] is not True


def test_each_mark_turns_off_alone(services):
    services.options.update({"provenance_ai_marker": False})
    result = services.generation.txt2img(Txt2ImgRequest(prompt="x", seed=1, width=64, height=64, steps=1))
    image = Image.open(io.BytesIO(saved_png(result)))
    assert marker.TEXT_KEY not in image.info and "xmp" not in image.info
    assert "Watermark skipped" in params_of(result.infotexts[0])  # the others still apply


def test_img2img_batch_folder_outputs_are_marked(services, data_dir):
    source, target = data_dir / "batch-in", data_dir / "outputs" / "batch-out"  # inside the data dir
    source.mkdir(parents=True)
    generated_like(64, 1, 1.0).save(source / "a.png")
    template = Img2ImgRequest(prompt="a cat", denoising_strength=0.5, seed=11, width=64, height=64, steps=2)
    result = services.generation.submit_img2img_batch(template, source, target).wait(timeout=120)
    data = (target / "a.png").read_bytes()
    assert data == result.pngs[0]
    image = Image.open(io.BytesIO(data))
    assert image.info[marker.TEXT_KEY] == AI and "Watermark skipped" in params_of(image.info["parameters"])


@pytest.mark.parametrize("options, expected", [
    ({}, ProvenancePolicy(True, True, True)),
    (ALL_OFF, NONE),
    ({"provenance_watermark": False}, ProvenancePolicy(True, False, True)),
    # Only an explicit false turns a mark off; junk in config.json keeps provenance on.
    ({"provenance_ai_marker": "no", "provenance_watermark": 0, "provenance_c2pa": None},
     ProvenancePolicy(True, True, True)),
])
def test_policy_from_options(options, expected):
    assert ProvenancePolicy.from_options(options) == expected


def test_content_credentials_claim_matches_the_file(services):
    """With C2PA on (the default) the infotext claims a manifest only when the file has one, else says why."""
    result = services.generation.txt2img(Txt2ImgRequest(prompt="x", seed=2, width=64, height=64, steps=1))
    line = params_of(result.infotexts[0])
    c2pa = read_credentials(saved_png(result))
    if "Content credentials: C2PA" in line:
        assert c2pa["present"] is True and c2pa["valid"] is True
    else:
        assert "Content credentials skipped: " in line and c2pa["present"] is not True


# --------------------------------------------------------------------------- API responses and style transfer


@pytest.fixture
def client(services):
    with TestClient(create_app(services), base_url="http://127.0.0.1:7860") as test_client:
        yield test_client


def test_api_txt2img_images_carry_the_marker(client):
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "seed": 3, "width": 64, "height": 64,
                                                      "steps": 2, "save_images": False})
    assert response.status_code == 200, response.text
    data = response.json()
    image = Image.open(io.BytesIO(base64.b64decode(data["images"][0])))
    assert image.info[marker.TEXT_KEY] == AI and AI in xmp_of(image)
    assert image.info["parameters"] == json.loads(data["info"])["infotexts"][0]


def test_api_responses_follow_the_options(client):
    assert client.post("/sdapi/v1/options", json=ALL_OFF).status_code == 200
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "width": 64, "height": 64, "steps": 1,
                                                      "save_images": False})
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    assert marker.TEXT_KEY not in image.info and "xmp" not in image.info


@pytest.fixture
def style_model(services, data_dir):
    torch.manual_seed(0)
    generator = ResnetGenerator(3, 3, ngf=8, norm="instance", n_blocks=2)
    torch.save(generator.state_dict(), data_dir / "models" / "CycleGAN" / "horse2zebra.pth")
    services.style.refresh_models()
    return "horse2zebra"


def test_saved_style_transfer_at_256_is_marked_and_watermarked_unless_turned_off(services, style_model):
    """A 256x256 diffusion image takes the tiny test model over half a minute on two cores; a GAN pass takes a
    fraction of a second, through the same finish_png and ImageStore path."""
    request = StyleTransferRequest(model=style_model, image=generated_like(256, 2, 1.0))
    result = services.style.run(request)
    saved = result.path.read_bytes()
    assert saved == result.png
    report = inspect(saved)
    assert report.ai_generated and report.watermark is True
    assert inspect(resave(saved, "JPEG", quality=90)).watermark is True
    assert "Watermark: StableStudio" in result.infotext and "Style transfer: CycleGAN" in result.infotext

    services.options.update({"provenance_watermark": False})
    plain = services.style.run(request)
    assert inspect(plain.path.read_bytes()).watermark is False  # the mark is in the pixels, not only the text
    assert "Watermark" not in plain.infotext and inspect(plain.path.read_bytes()).ai_generated


def test_studio_style_transfer_route_returns_the_final_file(client, style_model):
    image = base64.b64encode(png_of(generated_like(256, 5, 1.0))).decode()
    response = client.post("/studio/v1/style-transfer", json={"model": style_model, "image": image,
                                                              "save_images": False})
    assert response.status_code == 200, response.text
    data = base64.b64decode(response.json()["image"])
    out = Image.open(io.BytesIO(data))
    assert out.info[marker.TEXT_KEY] == AI and out.info["parameters"] == response.json()["info"]
    assert inspect(data).watermark is True


# --------------------------------------------------------------------------- detection: route and command


def test_provenance_route_reports_marker_and_watermark(client):
    marked = finish_png(generated_like(512, 1, 1.0), "p", "", {"Seed": 1}, NO_C2PA, None, title="t").png
    data = client.post("/studio/v1/provenance", json={"image": base64.b64encode(marked).decode()}).json()
    assert data["ai_generated"] is True and data["digital_source_type"] == AI
    assert data["watermark"] is True and data["watermark_score"] > watermark.THRESHOLD
    assert data["format"] == "PNG" and data["size"] == [512, 512]
    assert "AI-generated marker: yes" in data["summary"]

    # After a JPEG re-save the metadata is gone but the watermark still speaks (data: URL form accepted).
    jpeg = resave(marked, "JPEG", quality=90)
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    data = client.post("/studio/v1/provenance", json={"image": url}).json()
    assert data["ai_generated"] is False and data["watermark"] is True and data["format"] == "JPEG"

    plain = base64.b64encode(png_of(generated_like(512, 1, 1.0))).decode()
    data = client.post("/studio/v1/provenance", json={"image": plain}).json()
    assert data["ai_generated"] is False and data["watermark"] is False
    assert data["c2pa"]["present"] is not True


@pytest.mark.parametrize("payload", ["###", base64.b64encode(b"%!PS-Adobe-3.0 EPSF-3.0\n").decode(), ""])
def test_provenance_route_refuses_non_images_with_422(client, payload):
    response = client.post("/studio/v1/provenance", json={"image": payload})
    assert response.status_code == 422, response.text
    assert response.json()["error"].startswith("image")


def test_detect_command_reports_each_file(tmp_path, capsys):
    marked = tmp_path / "marked.png"
    marked.write_bytes(finish_png(generated_like(512, 2, 1.0), "p", "", {"Seed": 1}, NO_C2PA, None,
                                  title="t").png)
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(resave(png_of(generated_like(512, 2, 1.0)), "JPEG", quality=90))
    assert provenance_command(["detect", str(marked), str(plain)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{marked}: AI-generated marker: yes (trainedAlgorithmicMedia); watermark: found")
    assert out[1].startswith(f"{plain}: AI-generated marker: no; watermark: not found")

    assert provenance_command(["detect", "--json", str(marked)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["file"] == str(marked) and report["ai_generated"] and report["watermark"]


def test_detect_command_names_unreadable_files_and_exits_2(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert provenance_command(["detect", str(text), str(tmp_path / "missing.png"), "/dev/zero"]) == 2
    err = capsys.readouterr().err
    assert f"{text}: cannot read: is not a readable image (PNG, JPEG" in err
    assert "missing.png: cannot read: No such file or directory" in err
    assert "/dev/zero: cannot read: not a regular file" in err  # returns at once instead of reading forever


# --------------------------------------------------------------------------- C2PA Content Credentials


def test_c2pa_manifest_on_saved_file_and_api_image(services, client):
    result = services.generation.txt2img(Txt2ImgRequest(prompt="x", seed=2, width=64, height=64, steps=1))
    assert "Content credentials: C2PA" in params_of(result.infotexts[0])
    c2pa = read_credentials(saved_png(result))
    assert c2pa["present"] is True and c2pa["valid"] is True
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 1})
    data = client.post("/studio/v1/provenance", json={"image": response.json()["images"][0]}).json()
    assert data["c2pa"]["present"] is True and data["c2pa"]["valid"] is True


def test_c2pa_off_leaves_no_manifest(services):
    services.options.update({"provenance_c2pa": False})
    result = services.generation.txt2img(Txt2ImgRequest(prompt="x", seed=2, width=64, height=64, steps=1))
    assert "Content credentials" not in params_of(result.infotexts[0])
    assert read_credentials(saved_png(result))["present"] is False


def test_c2pa_failure_keeps_the_image_and_says_why(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the key folder should be")
    credentials = ContentCredentials(blocker / "provenance")
    final = finish_png(generated_like(64, 1, 1.0), "p", "", {"Seed": 1}, ProvenancePolicy(), credentials,
                       title="t")
    assert "Content credentials skipped: " in params_of(final.infotext)
    assert Image.open(io.BytesIO(final.png)).info["parameters"] == final.infotext
    assert read_credentials(final.png)["present"] is False
