"""SD upscale (built-in extension) and the public tile helpers: sizes, tile counts, seeds, blended seams and
infotext on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from tests.script_harness import DirectScriptContext, load_builtin, run_script, script_of
from webui.extensions.api import ExtensionError, combine_tiles, infotext_fields, split_tiles
from webui.types import Img2ImgRequest

TITLE = "SD upscale"


@pytest.fixture(scope="module")
def ext():
    return load_builtin("sd_upscale")


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("size, tile, overlap, starts_x, starts_y", [
    ((128, 96), (64, 64), 16, [0, 32, 64], [0, 32]),
    ((64, 64), (64, 64), 16, [0], [0]),
    ((150, 100), (64, 64), 16, [0, 43, 86], [0, 36]),
    ((128, 64), (64, 64), 0, [0, 64], [0]),
])
def test_split_positions_and_exact_round_trip(size, tile, overlap, starts_x, starts_y):
    image = _noise(size)
    grid = split_tiles(image, *tile, overlap)
    assert [t.x for t in grid.rows[0]] == starts_x and [row[0].y for row in grid.rows] == starts_y
    assert all(t.image.size == tile for t in grid.tiles)
    assert np.array_equal(np.asarray(combine_tiles(grid)), np.asarray(image))  # unchanged tiles: no trace


def test_overlap_is_blended_linearly():
    """Two flat tiles (black, white) meeting over 16 px: the seam is a ramp from black to white, not a step."""
    grid = split_tiles(Image.new("RGB", (112, 64)), 64, 64, 16)
    assert [t.x for t in grid.tiles] == [0, 48]
    grid.tiles[0].image = Image.new("RGB", (64, 64), (0, 0, 0))
    grid.tiles[1].image = Image.new("RGB", (64, 64), (255, 255, 255))
    row = np.asarray(combine_tiles(grid))[10, :, 0].astype(int)
    assert (row[:48] == 0).all() and (row[64:] == 255).all()
    ramp = row[48:64]
    assert ramp[0] <= 16 and ramp[-1] >= 230 and (np.diff(ramp) > 0).all()


def test_bad_tile_arguments():
    with pytest.raises(ValueError, match="overlap must be from 0 to 63"):
        split_tiles(_noise((128, 128)), 64, 64, 64)


def test_upscales_tiles_and_blends(services, ext):
    ctx = DirectScriptContext(services)
    init = _noise((64, 48), seed=3)
    request = Img2ImgRequest(init_images=[init], width=64, height=64, steps=2, seed=40, denoising_strength=0.5,
                             save_images=False)
    result = run_script(script_of(ext, TITLE), request,
                        {"overlap": 16, "upscaler_index": "Nearest", "scale_factor": 2}, ctx)
    assert len(result.images) == 1 and result.images[0].size == (128, 96)
    assert len(ctx.requests) == 6  # 3 x 2 tiles of 64x64
    assert [r.seed for r in ctx.requests] == [40, 41, 42, 43, 44, 45]
    assert all(r.init_images[0].size == (64, 64) and not r.save_images for r in ctx.requests)
    # the first tile's input is the top-left of the Nearest-upscaled image
    big = init.resize((128, 96), Image.Resampling.NEAREST)
    assert np.array_equal(np.asarray(ctx.requests[0].init_images[0]), np.asarray(big.crop((0, 0, 64, 64))))
    # the seam between tiles 0 and 1 (x 32..47, rows above the second row's overlap) blends their outputs
    out = np.asarray(result.images[0]).astype(float)
    t0 = np.asarray(ctx.results[0].images[0]).astype(float)
    t1 = np.asarray(ctx.results[1].images[0]).astype(float)
    weight = (np.arange(16) * 255 // 16 / 255.0)[None, :, None]
    expected = t0[:32, 32:48] * (1 - weight) + t1[:32, 0:16] * weight
    assert np.abs(out[:32, 32:48] - expected).max() <= 2
    assert np.array_equal(out[:32, 48:64], t1[:32, 16:32])  # past the overlap: tile 1 alone
    assert not np.array_equal(out[:32, 32:48], t1[:32, 0:16])  # really blended, not just overwritten
    fields = infotext_fields(result.infotexts[0])
    assert fields["SD upscale overlap"] == "16" and fields["SD upscale upscaler"] == "Nearest"
    assert fields["Seed"] == "40" and fields["Size"] == "64x64"  # the first tile's, as A1111 writes it
    assert result.seeds == [40]


def test_a1111_args_and_index(services, ext):
    script = script_of(ext, TITLE)
    assert script.a1111_args == ("info", "overlap", "upscaler_index", "scale_factor") and script.tabs == ("img2img",)
    values = script.params.model_validate({"info": None, "overlap": 0, "upscaler_index": 0, "scale_factor": 1})
    assert values.upscaler_index == "0"
    ctx = DirectScriptContext(services)
    request = Img2ImgRequest(init_images=[_noise((64, 64))], width=64, height=64, steps=2, seed=1, n_iter=2,
                             save_images=False)
    result = run_script(script, request, values.model_dump(), ctx)
    # upscaler 0 is "None": A1111 keeps the size; n_iter 2 makes two upscales with seeds 1 and 2
    assert [im.size for im in result.images] == [(64, 64), (64, 64)] and [r.seed for r in ctx.requests] == [1, 2]
    assert infotext_fields(result.infotexts[0])["SD upscale upscaler"] == "None"


@pytest.mark.parametrize("values, message", [
    ({"overlap": 16, "upscaler_index": "Bicubic-9000"}, "upscaler_index: unknown upscaler 'Bicubic-9000'"),
    ({"overlap": 16, "upscaler_index": 99}, "upscaler_index: 99 is not an upscaler's position"),
    ({"overlap": 64}, "overlap: 64 must be smaller than the tile"),
])
def test_refusals(services, ext, values, message):
    ctx = DirectScriptContext(services)
    request = Img2ImgRequest(init_images=[_noise((64, 64))], width=64, height=64, steps=2, save_images=False)
    with pytest.raises(ExtensionError, match=message):
        run_script(script_of(ext, TITLE), request, values, ctx)
    assert ctx.requests == []


def test_bounds_are_validated(ext):
    with pytest.raises(ValidationError):
        script_of(ext, TITLE).params.model_validate({"scale_factor": 9})


def test_the_upscaled_image_is_saved_when_the_request_says_so(services, data_dir):
    """Tiles are never saved; the combined image is, as A1111 saves it (samples_save), with its infotext."""
    ext = services.extensions.record("sd-upscale").extension  # loaded by the app, with its real context
    ctx = DirectScriptContext(services)
    request = Img2ImgRequest(init_images=[_noise((64, 64))], width=64, height=64, steps=2, seed=5,
                             save_images=True)
    before = set((data_dir / "outputs").rglob("*.png")) if (data_dir / "outputs").exists() else set()
    result = run_script(script_of(ext, TITLE), request,
                        {"overlap": 16, "upscaler_index": "Lanczos", "scale_factor": 1.5}, ctx)
    saved = set((data_dir / "outputs").rglob("*.png")) - before
    assert len(saved) == 1 and Image.open(saved.pop()).size == result.images[0].size == (96, 96)


def test_panel(ext):
    """A1111's widgets; the info slot A1111 clients fill in script_args has none."""
    import gradio as gr

    script = script_of(ext, TITLE)
    with gr.Blocks():
        widgets = script.ui(script.params())
    assert set(widgets) == {"overlap", "upscaler_index", "scale_factor"}
    assert (widgets["overlap"].minimum, widgets["overlap"].maximum, widgets["overlap"].value) == (0, 256, 64)
    assert widgets["upscaler_index"].value == "Lanczos" and widgets["scale_factor"].value == 2.0
    values = script.params.model_validate({k: w.value for k, w in widgets.items()})
    assert values.info is None and values.scale_factor == 2.0
