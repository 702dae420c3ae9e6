"""img2img, inpainting and InstructPix2Pix through the generation service, on tiny real checkpoints."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.conftest import install, make_settings
from tests.tiny_models import write_tiny_single_file
from webui.errors import InvalidRequest
from webui.images import CROP_AND_RESIZE, RESIZE_AND_FILL, masked_region, resize_image
from webui.infotext import parse_infotext
from webui.services.container import build_services
from webui.types import Img2ImgRequest

SMALL = dict(width=64, height=64, steps=4)


def gradient(width: int = 64, height: int = 64) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)
    y = np.linspace(0, 255, height, dtype=np.uint8)
    rgb = np.stack([np.tile(x, (height, 1)), np.tile(y[:, None], (1, width)), np.full((height, width), 90)], -1)
    return Image.fromarray(rgb.astype(np.uint8))


def square_mask(size=(64, 64), box=(16, 16, 48, 48)) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def test_img2img_low_strength_stays_close_to_the_input(services):
    init = gradient()
    low = services.generation.img2img(Img2ImgRequest(init_images=[init], denoising_strength=0.2, seed=1,
                                                     **SMALL)).images[0]
    high = services.generation.img2img(Img2ImgRequest(init_images=[init], denoising_strength=1.0, seed=1,
                                                      **SMALL)).images[0]
    assert low.size == (64, 64)
    assert np.abs(arr(low) - arr(init)).mean() < np.abs(arr(high) - arr(init)).mean()


def test_img2img_is_saved_with_denoising_strength_and_reproducible(services):
    request = Img2ImgRequest(prompt="a house", init_images=[gradient()], denoising_strength=0.6, seed=9, **SMALL)
    first = services.generation.img2img(request)
    again = services.generation.img2img(request)
    assert np.array_equal(arr(first.images[0]), arr(again.images[0]))
    [path] = first.paths
    assert path.parent.parent.name == "img2img-images"
    params = parse_infotext(Image.open(path).info["parameters"]).params
    assert params["Denoising strength"] == "0.6" and params["Seed"] == "9"


def test_denoising_zero_returns_the_input(services):
    result = services.generation.img2img(Img2ImgRequest(init_images=[gradient()], denoising_strength=0.0,
                                                        save_images=False, **SMALL))
    assert np.abs(arr(result.images[0]) - arr(gradient())).max() <= 1


def test_inpainting_with_a_regular_checkpoint_changes_only_the_masked_area(services):
    init, mask = gradient(), square_mask()
    result = services.generation.img2img(Img2ImgRequest(init_images=[init], mask=mask, mask_blur=0,
                                                        denoising_strength=1.0, seed=3, **SMALL))
    out = arr(result.images[0])
    outside = np.asarray(mask) == 0
    inside = np.asarray(mask) == 255
    assert np.abs(out - arr(init))[outside].max() == 0  # composited back: untouched
    assert np.abs(out - arr(init))[inside].mean() > 5
    assert "Mask blur: 0" in result.infotexts[0]


def test_inverted_mask_and_only_masked_region(services):
    init = gradient(96, 64)
    mask = square_mask((96, 64), (60, 20, 80, 40))
    result = services.generation.img2img(Img2ImgRequest(init_images=[init], mask=mask, mask_blur=0,
                                                        inpaint_full_res=True, inpaint_full_res_padding=4,
                                                        denoising_strength=1.0, seed=3, **SMALL))
    out = arr(result.images[0])
    assert result.images[0].size == (96, 64)  # "only masked" keeps the original size
    assert np.abs(out - arr(init))[np.asarray(mask) == 0].max() == 0
    inverted = services.generation.img2img(Img2ImgRequest(init_images=[gradient()], mask=square_mask(),
                                                          mask_blur=0, inpainting_mask_invert=True,
                                                          denoising_strength=1.0, seed=3, **SMALL))
    assert np.abs(arr(inverted.images[0]) - arr(gradient()))[np.asarray(square_mask()) == 255].max() == 0


def test_mask_of_the_wrong_size_is_rejected(services):
    with pytest.raises(InvalidRequest, match="mask: is 32x32 but the init image is 64x64"):
        services.generation.submit_img2img(Img2ImgRequest(init_images=[gradient()], mask=square_mask((32, 32)),
                                                          **SMALL))


@pytest.mark.parametrize("channels, label", [(9, "inpainting"), (8, "instruct-pix2pix")])
def test_special_checkpoints_run_from_img2img(data_dir, tmp_path, channels, label, tiny_loader):
    install(write_tiny_single_file(tmp_path / f"tiny-{label}.safetensors", seed=4, in_channels=channels), data_dir)
    services = build_services(make_settings(data_dir), load=tiny_loader)
    try:
        request = Img2ImgRequest(prompt="make it winter", init_images=[gradient()], image_cfg_scale=1.3, seed=2,
                                 mask=square_mask() if channels == 9 else None, **SMALL)
        result = services.generation.img2img(request)
        assert result.images[0].size == (64, 64)
        assert arr(result.images[0]).std() > 1
        if channels == 8:
            assert "Image CFG scale: 1.3" in result.infotexts[0]
        else:
            assert result.model_variant == "inpaint"
    finally:
        services.queue.shutdown()


def test_resize_modes():
    wide = gradient(128, 64)
    assert resize_image(wide, 64, 64).size == (64, 64)
    cropped = resize_image(wide, 64, 64, CROP_AND_RESIZE)
    assert np.abs(arr(cropped)[:, 32] - arr(wide.resize((128, 64)))[:, 64]).mean() < 20  # centre kept
    filled = resize_image(wide, 64, 64, RESIZE_AND_FILL)
    assert filled.size == (64, 64)
    assert arr(filled)[0].std() > 0 and arr(filled)[:16].mean() > 0  # bands filled, not black


def test_masked_region_is_padded_and_has_target_aspect():
    mask = square_mask((200, 100), (90, 40, 110, 60))
    x1, y1, x2, y2 = masked_region(mask, 10, 64, 64)
    assert (x2 - x1) == (y2 - y1) and x1 <= 80 and x2 >= 120
    assert masked_region(Image.new("L", (10, 10)), 4, 64, 64) is None


def test_batch_folder_processes_every_image_with_infotext(services, data_dir):
    source, target = data_dir / "in", data_dir / "out"
    source.mkdir()
    gradient().save(source / "a.png")
    gradient(80, 64).save(source / "b.jpg")
    (source / "notes.txt").write_text("skipped")
    template = Img2ImgRequest(prompt="a cat", denoising_strength=0.5, seed=11, **SMALL)
    result = services.generation.submit_img2img_batch(template, source, target).wait(timeout=120)
    assert sorted(p.name for p in target.iterdir()) == ["a.png", "b.png"]
    text = Image.open(target / "b.png").info["parameters"]
    assert text.startswith("a cat\n") and "Denoising strength: 0.5" in text
    assert len(result.images) == 2


def test_batch_folder_errors_name_the_field(services, data_dir):
    template = Img2ImgRequest(**SMALL)
    with pytest.raises(InvalidRequest, match="input_dir: not an existing folder"):
        services.generation.submit_img2img_batch(template, data_dir / "missing")
    (data_dir / "empty").mkdir()
    with pytest.raises(InvalidRequest, match="input_dir: holds no PNG"):
        services.generation.submit_img2img_batch(template, "empty")
    with pytest.raises(InvalidRequest, match="init_images: at least one image"):
        services.generation.submit_img2img(template)


def test_mask_drawn_in_the_editor_is_the_union_of_painted_layers(tmp_path):
    from webui.image_io import open_image
    from webui.ui.img2img import mask_from_editor

    layer = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    ImageDraw.Draw(layer).rectangle((4, 4, 10, 10), fill=(255, 255, 255, 255))
    second = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    ImageDraw.Draw(second).rectangle((20, 20, 25, 25), fill=(255, 255, 255, 200))
    # The editor hands over files (Gradio's cache) or bytes (its blob upload), as PNGs.
    layer.save(tmp_path / "layer.png")
    buffer = io.BytesIO()
    second.save(buffer, format="PNG")
    mask = mask_from_editor({"background": str(tmp_path / "layer.png"),
                             "layers": [str(tmp_path / "layer.png"), buffer.getvalue()]}, open_image)
    assert mask.getbbox() == (4, 4, 26, 26)
    assert mask.getpixel((5, 5)) == 255 and mask.getpixel((21, 21)) == 200 and mask.getpixel((15, 15)) == 0
    Image.new("RGBA", (8, 8)).save(tmp_path / "empty.png")
    assert mask_from_editor({"background": None, "layers": [str(tmp_path / "empty.png")]}, open_image) is None


def test_init_images_past_the_pixel_budget_are_refused(data_dir, model_files):
    from webui.config import Limits

    install(model_files["single"], data_dir)
    services = build_services(make_settings(data_dir, limits=Limits(max_image_pixels=64 * 64)))
    try:
        with pytest.raises(InvalidRequest, match="init_images.0: 65x64 is over this server's limit of 4096 pixels"):
            services.generation.submit_img2img(Img2ImgRequest(init_images=[gradient(65, 64)], **SMALL))
    finally:
        services.queue.shutdown()
