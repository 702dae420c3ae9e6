"""A1111's read-mostly /sdapi/v1 listings and extra-single-image, through TestClient on the shared services."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from tests.image_data import decode, png_b64_of
from webui.api.extras import build_extras_router
from webui.api.listings import build_listings_router
from webui.api.sdapi import install_error_handlers
from webui.errors import InvalidRequest
from webui.models.loras import LoraRegistry, lora_hash
from webui.services import extras


@pytest.fixture
def client(services):
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(build_listings_router(services))
    app.include_router(build_extras_router(services))
    with TestClient(app) as test_client:
        yield test_client


def write_safetensors(path: Path, tensors: dict[str, list[int]], metadata: dict[str, str] | None = None,
                      fill: int = 7) -> bytes:
    """A valid F32 safetensors file written by hand; returns its data section (what the LoRA hash covers)."""
    header: dict = {"__metadata__": metadata} if metadata is not None else {}
    offset = 0
    for name, shape in tensors.items():
        count = 1
        for dim in shape:
            count *= dim
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + 4 * count]}
        offset += 4 * count
    data = bytes((fill + i) % 256 for i in range(offset))
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return data


def png_b64(size: tuple[int, int], mode: str = "RGB", parameters: str | None = None) -> str:
    image = Image.new(mode, size, "red")
    image.paste(Image.new(mode, (size[0] // 2, size[1]), "blue"))  # not uniform, so resizing does something
    return png_b64_of(image, parameters)


def error_field(response) -> list:
    return response.json()["detail"][0]["loc"]


# --- fixed listings -------------------------------------------------------------------------------------------

def test_upscalers_have_a1111_shape(client):
    items = client.get("/sdapi/v1/upscalers").json()
    assert [i["name"] for i in items][:3] == ["None", "Lanczos", "Nearest"]
    assert items[1] == {"name": "Lanczos", "model_name": None, "model_path": None, "model_url": None, "scale": 4}


def test_latent_upscale_modes(client):
    names = [i["name"] for i in client.get("/sdapi/v1/latent-upscale-modes").json()]
    assert names == ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                     "Latent (nearest)", "Latent (nearest-exact)"]


@pytest.mark.parametrize("path, expected", [
    ("/sdapi/v1/prompt-styles", []),
    ("/sdapi/v1/hypernetworks", []),
    ("/sdapi/v1/face-restorers", []),
])
def test_empty_listings(client, path, expected):
    response = client.get(path)
    assert response.status_code == 200 and response.json() == expected


def test_scripts_lists_the_builtin_scripts_as_a1111_names_them(client):
    """A fresh install has A1111's classic scripts (webui/builtin_extensions), lower-cased as A1111 lists them."""
    assert client.get("/sdapi/v1/scripts").json() == {
        "txt2img": ["prompt matrix", "prompts from file or textbox", "x/y/z plot"],
        "img2img": ["loopback", "prompt matrix", "prompts from file or textbox", "sd upscale", "x/y/z plot"]}
    info = client.get("/sdapi/v1/script-info").json()
    assert {(i["name"], i["is_img2img"], i["is_alwayson"]) for i in info} >= {
        ("x/y/z plot", False, False), ("sd upscale", True, False), ("loopback", True, False)}


def test_memory_has_a1111_shape_and_no_cuda_on_cpu(client):
    data = client.get("/sdapi/v1/memory").json()
    ram = data["ram"]
    assert set(ram) == {"free", "used", "total"}
    assert ram["total"] > 0 and ram["free"] + ram["used"] == ram["total"]
    assert data["cuda"] == {"error": "unavailable"}


def test_cuda_report_maps_manager_figures():
    from webui.services.listings import cuda_report
    stats = {"active_bytes.all.current": 1, "active_bytes.all.peak": 2, "reserved_bytes.all.current": 3,
             "reserved_bytes.all.peak": 4, "num_alloc_retries": 0, "num_ooms": 1}
    cuda = cuda_report({"cuda": {"free": 30, "total": 100, "allocated": 5, "peak": 9, "stats": stats}})
    assert cuda["system"] == {"free": 30, "used": 70, "total": 100}
    assert cuda["allocated"] == {"current": 5, "peak": 9}
    assert cuda["active"] == {"current": 1, "peak": 2} and cuda["reserved"] == {"current": 3, "peak": 4}
    assert cuda["inactive"] == {"current": None, "peak": None}
    assert cuda["events"] == {"retries": 0, "oom": 1}


# --- files on disk --------------------------------------------------------------------------------------------

def test_sd_vae_lists_vae_files(client, services):
    assert client.get("/sdapi/v1/sd-vae").json() == []
    vae_dir = services.settings.vae_dir
    (vae_dir / "sub").mkdir(parents=True)
    for name in ("vae-ft-mse.safetensors", "sub/kl-f8.pt", "old.ckpt", "notes.txt"):
        (vae_dir / name).write_bytes(b"x")
    items = client.get("/sdapi/v1/sd-vae").json()
    assert [i["model_name"] for i in items] == ["kl-f8.pt", "old.ckpt", "vae-ft-mse.safetensors"]
    assert items[0]["filename"] == str(vae_dir / "sub" / "kl-f8.pt")


def test_loras_listing_with_metadata_alias_and_hash(client, services):
    lora_dir = services.settings.lora_dir
    assert client.get("/sdapi/v1/loras").json() == []
    data = write_safetensors(lora_dir / "style" / "add_detail.safetensors", {"lora_down.weight": [4, 8]},
                             {"ss_output_name": "detailer", "ss_tag_frequency": '{"img": {"cat": 3}}'})
    write_safetensors(lora_dir / "plain.safetensors", {"w": [2]})
    (lora_dir / "broken.safetensors").write_bytes(b"\xff" * 40)  # garbage: listed, never crashes the listing
    (lora_dir / "old.pt").write_bytes(b"pickle-ish bytes")
    (lora_dir / "readme.md").write_text("not a lora")

    assert client.post("/sdapi/v1/refresh-loras").json() is None  # A1111 answers null
    items = {i["name"]: i for i in client.get("/sdapi/v1/loras").json()}
    assert set(items) == {"add_detail", "plain", "broken", "old"}
    detail = items["add_detail"]
    assert set(detail) >= {"name", "alias", "path", "metadata"}
    assert detail["alias"] == "detailer"
    assert detail["path"] == str(lora_dir / "style" / "add_detail.safetensors")
    # JSON-object strings in metadata are decoded, as A1111 does
    assert detail["metadata"] == {"ss_output_name": "detailer", "ss_tag_frequency": {"img": {"cat": 3}}}
    assert detail["short_hash"] == hashlib.sha256(data).hexdigest()[:12]
    assert items["plain"]["alias"] == "plain" and items["plain"]["metadata"] == {}
    assert items["broken"]["metadata"] == {} and items["broken"]["short_hash"] is None
    assert items["old"]["short_hash"] == hashlib.sha256(b"pickle-ish bytes").hexdigest()[:12]


def test_lora_hash_ignores_metadata_edits(tmp_path):
    a = tmp_path / "a.safetensors"
    b = tmp_path / "b.safetensors"
    write_safetensors(a, {"w": [3]}, {"note": "one"})
    write_safetensors(b, {"w": [3]}, {"note": "a much longer note"})
    assert lora_hash(a) == lora_hash(b) is not None


def test_lora_registry_rescan_sees_new_and_removed_files(tmp_path):
    registry = LoraRegistry(tmp_path / "Lora")
    assert registry.list() == []  # a missing folder is an empty listing
    write_safetensors(tmp_path / "Lora" / "x.safetensors", {"w": [1]})
    assert registry.list() == []  # listings are cached until refresh
    assert [i.name for i in registry.refresh()] == ["x"]
    assert registry.find("x") is not None
    (tmp_path / "Lora" / "x.safetensors").unlink()
    assert registry.refresh() == []


def test_embeddings_are_split_by_the_current_checkpoint_as_a1111_does(client, services):
    emb_dir = services.settings.embeddings_dir
    write_safetensors(emb_dir / "bad-hands.safetensors", {"emb_params": [2, 768]})
    write_safetensors(emb_dir / "xl" / "sdxl-style.safetensors", {"clip_l": [3, 768], "clip_g": [3, 1280]})
    (emb_dir / "legacy.pt").write_bytes(b"pickle")
    (emb_dir / "junk.safetensors").write_bytes(b"\x00" * 4)
    write_safetensors(emb_dir / "fits.safetensors", {"emb_params": [4, 32]})  # the tiny checkpoint's width
    data = client.get("/sdapi/v1/embeddings").json()
    assert data["loaded"] == {"fits": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                       "shape": 32, "vectors": 4}}
    skipped = data["skipped"]
    assert skipped["bad-hands"]["shape"] == 768 and skipped["bad-hands"]["vectors"] == 2
    assert "768 wide" in skipped["bad-hands"]["reason"]
    assert (skipped["sdxl-style"]["shape"], skipped["sdxl-style"]["vectors"]) == (2048, 3)
    assert "SDXL" not in skipped["bad-hands"]["reason"] and "another model family" in skipped["sdxl-style"]["reason"]
    assert (skipped["legacy"]["shape"], skipped["legacy"]["vectors"]) == (0, 0)
    assert "--allow-pickle" in skipped["legacy"]["reason"]
    assert skipped["junk"]["shape"] == 0 and skipped["junk"]["reason"]

    # a new file is seen after refresh-embeddings (A1111's route), not before
    write_safetensors(emb_dir / "new.safetensors", {"emb_params": [1, 32]})
    assert "new" not in client.get("/sdapi/v1/embeddings").json()["loaded"]
    assert client.post("/sdapi/v1/refresh-embeddings").json() is None
    assert client.get("/sdapi/v1/embeddings").json()["loaded"]["new"]["vectors"] == 1


# --- extra-single-image ---------------------------------------------------------------------------------------

def extras_body(image: str, **fields) -> dict:
    return {"resize_mode": 0, "show_extras_results": True, "gfpgan_visibility": 0, "codeformer_visibility": 0,
            "codeformer_weight": 0, "upscaling_resize": 2, "upscaling_resize_w": 512, "upscaling_resize_h": 512,
            "upscaling_crop": True, "upscaler_1": "None", "upscaler_2": "None", "extras_upscaler_2_visibility": 0,
            "upscale_first": False, "image": image, **fields}


def test_extra_single_image_scales_by_factor_and_keeps_parameters(client):
    body = extras_body(png_b64((40, 24), parameters="a cat\nSteps: 20, Seed: 1, Size: 40x24"), upscaler_1="Lanczos")
    response = client.post("/sdapi/v1/extra-single-image", json=body)
    assert response.status_code == 200, response.text
    data = response.json()
    image = decode(data["image"])
    assert image.format == "PNG" and image.size == (80, 48)
    assert image.info["parameters"].startswith("a cat\n")
    assert data["html_info"] == "<p>Postprocess upscale by: 2, Postprocess upscaler: Lanczos</p>"


def test_extra_single_image_rounds_down_to_multiple_of_8_like_a1111(client):
    data = client.post("/sdapi/v1/extra-single-image", json=extras_body(png_b64((30, 21)))).json()
    assert decode(data["image"]).size == (56, 40)


def test_extra_single_image_to_size_with_crop(client):
    body = extras_body(png_b64((64, 32)), resize_mode=1, upscaling_resize_w=100, upscaling_resize_h=100,
                       upscaler_1="Nearest")
    data = client.post("/sdapi/v1/extra-single-image", json=body).json()
    image = decode(data["image"])
    assert image.size == (100, 100)
    # centre crop of a half-blue/half-red image: blue on the left, red on the right
    assert image.getpixel((0, 50)) == (0, 0, 255) and image.getpixel((99, 50)) == (255, 0, 0)
    assert "Postprocess upscale to: 100x100" in data["html_info"]
    assert "Postprocess crop to: 100x100" in data["html_info"]


def test_extra_single_image_to_size_without_crop_covers_target(client):
    body = extras_body(png_b64((64, 32)), resize_mode=1, upscaling_resize_w=128, upscaling_resize_h=128,
                       upscaling_crop=False)
    assert decode(client.post("/sdapi/v1/extra-single-image", json=body).json()["image"]).size == (256, 128)


def test_extra_single_image_keeps_alpha_and_blends_second_upscaler(client):
    body = extras_body(png_b64((16, 16), mode="RGBA"), upscaler_2="Nearest", extras_upscaler_2_visibility=0.5)
    data = client.post("/sdapi/v1/extra-single-image", json=body).json()
    assert decode(data["image"]).mode == "RGBA"
    assert "Postprocess upscaler 2: Nearest" in data["html_info"]


@pytest.mark.parametrize("fields, field", [
    ({"upscaler_1": "R-ESRGAN 4x+"}, "upscaler_1"),
    ({"upscaler_2": "SwinIR"}, "upscaler_2"),
    ({"image": "not base64!!"}, "image"),
    ({"image": base64.b64encode(b"not an image").decode()}, "image"),
    ({"upscaling_resize": 200}, "upscaling_resize"),
    ({"resize_mode": 1, "upscaling_resize_w": 5000, "upscaling_resize_h": 64}, "upscaling_resize_w"),
    ({"upscaling_resize": 0}, "upscaling_resize"),
    ({"resize_mode": 2}, "resize_mode"),
    ({"gfpgan_visibility": 0.5}, "gfpgan_visibility"),
    ({"upscaling_resize": "NaN"}, "upscaling_resize"),
])
def test_extra_single_image_errors_name_the_field(client, fields, field):
    response = client.post("/sdapi/v1/extra-single-image", json={**extras_body(png_b64((32, 32))), **fields})
    assert response.status_code == 422, response.text
    assert error_field(response)[-1] == field
    assert response.json()["error"].startswith(field)


def test_too_large_is_refused_before_resizing():
    spec = extras.UpscaleSpec(scale=8.0)
    with pytest.raises(InvalidRequest, match="upscaling_resize: the result would be 8192x8192"):
        extras.upscale(Image.new("RGB", (1024, 1024)), spec)
