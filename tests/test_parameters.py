"""The parameter table is the one source: infotext, A1111 bodies, request bounds and UI widgets all follow it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from PIL import Image
from pydantic import create_model

from webui import parameters
from webui.api import schemas
from webui.api.sdapi import to_img2img_request, to_txt2img_request
from webui.errors import InvalidRequest
from webui.infotext import format_infotext, parse_infotext, to_generation_fields
from webui.parameters import BY_NAME, PARAMS, InfotextContext, infotext_params
from webui.services.options import OPTIONS
from webui.types import Img2ImgRequest, Txt2ImgRequest, validated

MODEL_NAME, MODEL_HASH, VAE_HASH = "tiny-sd15", "0123456789", "abcdef0123"
PROMPT = 'a "fox", in snow: 50mm\nsecond line'
NEGATIVE = "blurry, low quality"
TXT2IMG = dict(prompt=PROMPT, negative_prompt=NEGATIVE, sampler_name="DPM++ 2M", scheduler="Exponential",
               steps=13, cfg_scale=6.5, width=640, height=448, seed=1234, batch_size=2, n_iter=3, clip_skip=3,
               checkpoint=MODEL_NAME, tiling=True)
MASK = Image.new("L", (8, 8), 255)
# One img2img request per method, each with non-default values for the fields that method's infotext records.
IMG2IMG = {
    "img2img": dict(TXT2IMG, sampler_name="Euler", scheduler="Automatic", resize_mode=2, denoising_strength=0.4,
                    sd_vae="blue.safetensors"),
    "inpaint": dict(TXT2IMG, sampler_name="DPM++ 2M", scheduler="Automatic", mask=MASK, mask_blur=9,
                    inpainting_fill=3, inpaint_full_res=True, inpaint_full_res_padding=48,
                    inpainting_mask_invert=True, denoising_strength=0.55),
    "instruct-pix2pix": dict(TXT2IMG, image_cfg_scale=2.25),
}


def round_trip(request: Txt2ImgRequest, method: str | None,
               refiner: str | None = None) -> tuple[Txt2ImgRequest, set[str]]:
    """request -> infotext -> parsed -> request; also the infotext keys that were written."""
    vae_hash = VAE_HASH if request.sd_vae else None  # the job writes the VAE file it used
    context = InfotextContext(seed=request.seed, model_name=MODEL_NAME, model_hash=MODEL_HASH, method=method,
                              subseed=request.subseed, vae_name=request.sd_vae, vae_hash=vae_hash,
                              refiner=refiner)  # the job writes the refiner once sampling switched to it
    params = infotext_params(request, context)
    text = format_infotext(request.prompt, request.negative_prompt, {**params, "Version": "studio-test"})
    fields = to_generation_fields(parse_infotext(text))
    assert fields.pop("model_hash") == MODEL_HASH
    assert fields.pop("vae_hash", None) == vae_hash
    fields["checkpoint"] = fields.pop("model_name")
    extra: dict[str, Any] = {"init_images": request.init_images, "mask": request.mask} \
        if isinstance(request, Img2ImgRequest) else {}
    written = {key for key, value in params.items() if value is not None and not (key == "Clip skip" and value == 1)}
    return validated(type(request), {**fields, **extra}), written | {"Prompt", "Negative prompt"}


def infotext_names(written: set[str], task: str) -> set[str]:
    return {p.name for p in parameters.for_task(task) if any(rule.key in written for rule in p.infotext)}


def assert_same(rebuilt: Txt2ImgRequest, original: Txt2ImgRequest, names: set[str]) -> None:
    for name in names:
        if name == "scheduler":  # "Automatic" is written as the schedule it stands for
            assert rebuilt.sampling.effective_schedule == original.sampling.effective_schedule
        else:
            assert getattr(rebuilt, name) == getattr(original, name), name


@pytest.mark.parametrize("sampler, scheduler", [("DPM++ 2M", "Exponential"), ("DPM++ 2M", "Automatic"),
                                                ("Euler a", "Automatic"), ("DPM++ 2M Karras", "Automatic")])
def test_txt2img_rows_round_trip_through_the_infotext(sampler, scheduler):
    request = Txt2ImgRequest.parse(**dict(TXT2IMG, sampler_name=sampler, scheduler=scheduler))
    rebuilt, written = round_trip(request, None)
    names = infotext_names(written, parameters.TXT2IMG)
    assert {"prompt", "negative_prompt", "sampler_name", "steps", "cfg_scale", "width", "height", "seed",
            "clip_skip", "checkpoint"} <= names
    assert_same(rebuilt, request, names)
    assert (rebuilt.sampler_name, rebuilt.sampling) == (request.sampler_name, request.sampling) \
        or scheduler == "Automatic"


def test_every_img2img_row_round_trips_in_the_method_that_records_it():
    covered: set[str] = set()
    for method, fields in IMG2IMG.items():
        request = Img2ImgRequest.parse(init_images=[Image.new("RGB", (8, 8))], **fields)
        rebuilt, written = round_trip(request, method)
        names = infotext_names(written, parameters.IMG2IMG)
        assert_same(rebuilt, request, names)
        covered |= written
    # The noise rows are txt2img's (img2img refuses variation seeds): one txt2img request with all of them.
    noisy = Txt2ImgRequest.parse(**dict(TXT2IMG, sampler_name="Euler a", scheduler="Automatic", subseed=77, subseed_strength=0.3,
                                        seed_resize_from_w=320, seed_resize_from_h=256, randn_source="CPU",
                                        eta_noise_seed_delta=31337))
    rebuilt, written = round_trip(noisy, None)
    assert_same(rebuilt, noisy, infotext_names(written, parameters.TXT2IMG))
    covered |= written
    ddim = Txt2ImgRequest.parse(**dict(TXT2IMG, sampler_name="DDIM", scheduler="Automatic", eta=0.4))
    rebuilt, written = round_trip(ddim, None)
    assert_same(rebuilt, ddim, infotext_names(written, parameters.TXT2IMG))
    covered |= written
    title = "refiner-xl [0123456789]"
    refined = Txt2ImgRequest.parse(**dict(TXT2IMG, refiner_checkpoint=title, refiner_switch_at=0.6))
    rebuilt, written = round_trip(refined, None, refiner=title)
    assert {"refiner_checkpoint", "refiner_switch_at"} <= infotext_names(written, parameters.TXT2IMG)
    assert_same(rebuilt, refined, infotext_names(written, parameters.TXT2IMG))
    covered |= written
    # A1111's sampler parameters: txt2img's k-samplers, each key where its sampler/schedule takes it.
    for fields in (dict(sampler_name="Euler", scheduler="Karras", s_churn=1.5, s_tmin=0.5, s_tmax=9.0, s_noise=1.02,
                        sigma_min=0.1, sigma_max=10.0, rho=5.0, always_discard_next_to_last_sigma=True,
                        sgm_noise_multiplier=True),
                   dict(sampler_name="Euler a", scheduler="Automatic", eta_ancestral=0.5),
                   dict(sampler_name="Euler", scheduler="Beta", beta_dist_alpha=0.3, beta_dist_beta=0.4)):
        options = Txt2ImgRequest.parse(**dict(TXT2IMG, **fields))
        rebuilt, written = round_trip(options, None)
        assert_same(rebuilt, options, infotext_names(written, parameters.TXT2IMG))
        covered |= written
    # Hires fix: by scale with its own sampler and prompts, and by size with its own schedule.
    for hires in ({"hr_scale": 1.5, "hr_second_pass_steps": 7, "hr_upscaler": "Latent (bicubic)",
                   "hr_sampler_name": "DPM++ 2M", "hr_prompt": "castle at night", "hr_negative_prompt": "fog",
                   "denoising_strength": 0.45},
                  {"hr_resize_x": 1024, "hr_resize_y": 768, "hr_upscaler": "Lanczos", "hr_scheduler": "Karras"}):
        request = Txt2ImgRequest.parse(**dict(TXT2IMG, sampler_name="Euler a", scheduler="Automatic",
                                              enable_hr=True, **hires))
        rebuilt, written = round_trip(request, None)
        assert_same(rebuilt, request, infotext_names(written, parameters.TXT2IMG) | {"enable_hr"})
        covered |= written
    every_key = {rule.key for p in PARAMS for rule in p.infotext} - parameters.READ_ONLY_KEYS
    assert covered == every_key  # no row of the table escapes the round trip


def test_keys_are_written_only_where_a1111_writes_them():
    request = Img2ImgRequest.parse(init_images=[Image.new("RGB", (8, 8))], **IMG2IMG["inpaint"])
    ip2p = infotext_params(request, InfotextContext(seed=1, method="instruct-pix2pix"))
    assert ip2p["Image CFG scale"] == request.image_cfg_scale and ip2p["Denoising strength"] is None
    assert ip2p["Mask blur"] is None  # not an inpainting pass
    default = Txt2ImgRequest.parse(sampler_name="Euler", clip_skip=1)
    params = infotext_params(default, InfotextContext(seed=5))
    assert params["Clip skip"] is None and params["Schedule type"] is None  # A1111 leaves both out
    assert params.get("Denoising strength") is None  # txt2img writes it only for a hires pass
    assert "Mask blur" not in params  # img2img rows never reach a txt2img infotext
    text = format_infotext("x", "", params)
    assert "Size: 512x512" in text and "Schedule type" not in text and "Clip skip" not in text


# ------------------------------------------------------------------------------------------ bounds


def shown(bound: float) -> str:
    """A bound as pydantic's message writes it (100.0 -> "100")."""
    return str(int(bound)) if float(bound).is_integer() else str(bound)


@pytest.mark.parametrize("param", [p for p in PARAMS if p.ge is not None or p.le is not None], ids=lambda p: p.name)
def test_request_bounds_are_the_tables(param):
    model = Img2ImgRequest if parameters.TXT2IMG not in param.tasks else Txt2ImgRequest
    metadata = model.model_fields[param.name].metadata
    assert [getattr(m, "ge", None) for m in metadata if hasattr(m, "ge")] == [param.ge]
    assert model.model_fields[param.name].default == param.default
    if param.le is not None:
        with pytest.raises(InvalidRequest) as too_big:
            model.parse(**{param.name: param.type(param.le + 1)})
        assert too_big.value.field == param.name and str(too_big.value).endswith(f"less than or equal to {shown(param.le)}")
    with pytest.raises(InvalidRequest) as too_small:
        model.parse(**{param.name: param.type(param.ge - 1)})
    assert too_small.value.field == param.name
    assert str(too_small.value).endswith(f"greater than or equal to {shown(param.ge)}")


def test_a_bound_changed_in_the_table_changes_validation():
    narrower = dataclasses.replace(BY_NAME["clip_skip"], le=5)
    model = create_model("Narrow", clip_skip=(int, narrower.field()))
    with pytest.raises(InvalidRequest, match="clip_skip: Input should be less than or equal to 5"):
        validated(model, {"clip_skip": 6})
    assert narrower.problem(6) == "must be an integer from 1 to 5" and narrower.problem(5) is None


def test_the_clip_skip_setting_takes_its_bounds_from_the_table():
    row = BY_NAME["clip_skip"]
    option = OPTIONS[row.setting]
    assert (option.minimum, option.maximum, option.default) == (row.ge, row.le, row.default)


# ----------------------------------------------------------------------------------- A1111 bodies

A1111_VALUES: dict[str, Any] = {
    "prompt": "a cat", "negative_prompt": "dog", "sampler_name": "Heun", "scheduler": "karras", "steps": 7,
    "width": 128, "height": 192, "n_iter": 2, "batch_size": 3, "cfg_scale": 4.5, "seed": 99,
    "resize_mode": 1, "denoising_strength": 0.3, "image_cfg_scale": 1.25, "mask_blur": 6, "inpainting_fill": 2,
    "inpaint_full_res": False, "inpaint_full_res_padding": 12, "inpainting_mask_invert": 1, "tiling": True,
    "subseed": 5, "subseed_strength": 0.2, "seed_resize_from_w": 256, "seed_resize_from_h": 320, "eta": 1.0,
    "refiner_checkpoint": "other-sd15", "refiner_switch_at": 0.6,
    "s_churn": 0.0, "s_tmin": 0.5, "s_tmax": 9.0, "s_noise": 1.0,
    "enable_hr": True, "hr_scale": 1.5, "hr_upscaler": "Latent (nearest)", "hr_second_pass_steps": 4,
    "hr_resize_x": 0, "hr_resize_y": 256, "hr_sampler_name": "Euler", "hr_scheduler": "Karras",
    "hr_prompt": "a lion", "hr_negative_prompt": "a mouse", "hr_checkpoint_name": "Use same checkpoint",
}
TXT2IMG_ONLY = {p.name for p in PARAMS if p.tasks == {parameters.TXT2IMG}}
EXPECTED = dict(A1111_VALUES, scheduler="Karras", inpainting_mask_invert=True)


def png_base64(size=(64, 64)) -> str:
    import base64
    import io
    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_every_row_with_an_api_key_is_mapped_from_the_body(services):
    api_rows = [p for p in PARAMS if p.api_key is not None]
    assert {p.name for p in api_rows} <= set(A1111_VALUES)  # this test sets a value for each
    overrides = {"CLIP_stop_at_last_layers": 4, "sd_model_checkpoint": "tiny-sd15"}
    txt = to_txt2img_request(schemas.Txt2ImgBody(**{k: v for k, v in A1111_VALUES.items()
                                                    if k in schemas.Txt2ImgBody.model_fields},
                                                 override_settings=overrides), services)
    img = to_img2img_request(schemas.Img2ImgBody(**{k: v for k, v in A1111_VALUES.items() if k not in TXT2IMG_ONLY},
                                                 init_images=[png_base64()],
                                                 override_settings=overrides), services)
    for request, task in ((txt, parameters.TXT2IMG), (img, parameters.IMG2IMG)):
        for param in parameters.for_task(task):
            if param.api_key is not None:
                assert getattr(request, param.name) == EXPECTED[param.name], (task, param.name)
        assert request.clip_skip == 4 and request.checkpoint.startswith("tiny-sd15.safetensors [")


def test_api_aliases_and_defaults_come_from_the_table(services):
    request = to_txt2img_request(schemas.Txt2ImgBody(sampler_index="DPM++ 2M Karras"), services)
    assert (request.sampler_name, request.scheduler) == ("DPM++ 2M", "Karras")
    request = to_txt2img_request(schemas.Txt2ImgBody(), services)
    assert request.sampler_name == BY_NAME["sampler_name"].api_default
    assert request.clip_skip == services.options.value("CLIP_stop_at_last_layers")
    request = to_img2img_request(schemas.Img2ImgBody(init_images=[png_base64()]), services)
    assert request.image_cfg_scale == BY_NAME["image_cfg_scale"].default  # null in A1111's body


def test_a_setting_override_out_of_the_tables_range_names_the_key_and_bounds(services):
    body = schemas.Txt2ImgBody(override_settings={"CLIP_stop_at_last_layers": 13})
    with pytest.raises(InvalidRequest) as error:
        to_txt2img_request(body, services)
    assert error.value.field == "override_settings.CLIP_stop_at_last_layers"
    assert error.value.reason == BY_NAME["clip_skip"].bounds_text() == "must be an integer from 1 to 12"


# ------------------------------------------------------------------------------------------- widgets


def test_every_user_set_request_field_has_a_row_and_every_row_a_field():
    # extensions: each extension's own values, checked by its own model (webui/extensions/host.py)
    not_parameters = {"save_images", "init_images", "mask", "extensions"}
    for model, task in ((Txt2ImgRequest, parameters.TXT2IMG), (Img2ImgRequest, parameters.IMG2IMG)):
        # img2img requests inherit the hires fields and refuse enable_hr (test_hires.py): not img2img parameters
        inherited = TXT2IMG_ONLY if task == parameters.IMG2IMG else set()
        assert set(model.model_fields) - not_parameters - inherited == {p.name for p in parameters.for_task(task)}


def test_radio_widgets_map_labels_to_request_values():
    fill, area = BY_NAME["inpainting_fill"], BY_NAME["inpaint_full_res"]
    assert fill.from_ui("latent noise") == 2 and fill.widget.to_ui(2) == "latent noise"
    assert area.from_ui("Only masked") is True and area.widget.to_ui(False) == "Whole picture"
    assert BY_NAME["steps"].from_ui(12.0) == 12 and isinstance(BY_NAME["steps"].from_ui(12.0), int)


# ------------------------------------------------------------------------ style transfer and upscale requests


def test_style_transfer_and_upscale_requests_name_the_bad_field():
    from webui.types import StyleTransferRequest, UpscaleRequest

    image = Image.new("RGB", (8, 8))
    for fields, field in (({"model": " "}, "model"), ({"image": "not an image"}, "image"),
                          ({"tile": 63}, "tile"), ({"tile": 64, "overlap": 33}, "overlap"), ({"size": 1}, "size")):
        with pytest.raises(InvalidRequest) as error:
            StyleTransferRequest(**{"model": "horse2zebra", "image": image, **fields})
        assert error.value.field == field, fields
    # Upscale errors use the names A1111 clients send, and only the mode in use is checked.
    for fields, field in (({"scale": 0}, "upscaling_resize"), ({"to_size": True, "width": 5000}, "upscaling_resize_w"),
                          ({"upscaler_2_visibility": 2}, "extras_upscaler_2_visibility")):
        with pytest.raises(InvalidRequest) as error:
            UpscaleRequest(**fields)
        assert error.value.field == field, fields
    assert UpscaleRequest(to_size=True, scale=0).size_field == "upscaling_resize_w"
