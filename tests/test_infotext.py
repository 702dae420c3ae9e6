"""Tests for webui.infotext: A1111 "parameters" text formatting, parsing and image reading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import ExifTags, Image
from PIL.PngImagePlugin import PngInfo

from webui.infotext import (
    ParsedInfotext,
    format_infotext,
    parse_infotext,
    read_png_infotext,
    to_generation_fields,
)

# ------------------------------------------------------------ real A1111 examples

SD15_HIRES = """\
masterpiece, best quality, 1girl, solo, long hair, looking at viewer,
(detailed eyes:1.2), cherry blossoms, <lora:add_detail:0.6>
Negative prompt: (worst quality, low quality:1.4), bad anatomy, watermark, easynegative
Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1741860054, \
Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, \
Clip skip: 2, Hires upscale: 2, Hires upscaler: Latent, \
Lora hashes: "add_detail: 7c6bad76eb54, more: 0123456789ab", Version: v1.10.1"""

OLD_FUSED = """\
a photo of an astronaut riding a horse on mars
Negative prompt: blurry
Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 3456789012, Size: 768x512, \
Model hash: 7440042bbd, Model: sd_xl_base_1.0, Version: v1.6.0"""

SDXL_MULTILINE_NEGATIVE = """\
portrait of an old man, dramatic lighting
Negative prompt: lowres,
text, error
Steps: 30, Sampler: Euler a, Schedule type: Automatic, CFG scale: 5, Seed: 42, Size: 1024x1024, \
Model hash: 31e35c80fc, Model: sd_xl_base_1.0, VAE hash: 235745af8d, VAE: sdxl_vae.safetensors, \
TI hashes: "easynegative: c74b4e810b03", ENSD: 31337, Version: v1.9.4"""

VARIATION_AND_HIRES_PROMPT = """\
a castle on a hill
Steps: 25, Sampler: UniPC, CFG scale: 6.5, Seed: 7, Size: 640x640, Variation seed: 99, \
Variation seed strength: 0.3, Hires prompt: "a castle on a hill,\\nnight", Version: v1.8.0"""

ONLY_PROMPT = "just a prompt, nothing else"

TWO_PAIRS_LAST_LINE = "a quiet landscape\nstyle: watercolor, mood: calm"

PARSE_EXAMPLES = [
    pytest.param(
        SD15_HIRES,
        ParsedInfotext(
            prompt=(
                "masterpiece, best quality, 1girl, solo, long hair, looking at viewer,\n"
                "(detailed eyes:1.2), cherry blossoms, <lora:add_detail:0.6>"
            ),
            negative_prompt="(worst quality, low quality:1.4), bad anatomy, watermark, easynegative",
            params={
                "Steps": "28",
                "Sampler": "DPM++ 2M",
                "Schedule type": "Karras",
                "CFG scale": "7",
                "Seed": "1741860054",
                "Size": "512x768",
                "Model hash": "6ce0161689",
                "Model": "v1-5-pruned-emaonly",
                "Denoising strength": "0.45",
                "Clip skip": "2",
                "Hires upscale": "2",
                "Hires upscaler": "Latent",
                "Lora hashes": "add_detail: 7c6bad76eb54, more: 0123456789ab",
                "Version": "v1.10.1",
            },
        ),
        id="sd15-hires-lora",
    ),
    pytest.param(
        OLD_FUSED,
        ParsedInfotext(
            prompt="a photo of an astronaut riding a horse on mars",
            negative_prompt="blurry",
            params={
                "Steps": "20",
                "Sampler": "DPM++ 2M Karras",
                "CFG scale": "7.5",
                "Seed": "3456789012",
                "Size": "768x512",
                "Model hash": "7440042bbd",
                "Model": "sd_xl_base_1.0",
                "Version": "v1.6.0",
            },
        ),
        id="old-fused-sampler",
    ),
    pytest.param(
        SDXL_MULTILINE_NEGATIVE,
        ParsedInfotext(
            prompt="portrait of an old man, dramatic lighting",
            negative_prompt="lowres,\ntext, error",
            params={
                "Steps": "30",
                "Sampler": "Euler a",
                "Schedule type": "Automatic",
                "CFG scale": "5",
                "Seed": "42",
                "Size": "1024x1024",
                "Model hash": "31e35c80fc",
                "Model": "sd_xl_base_1.0",
                "VAE hash": "235745af8d",
                "VAE": "sdxl_vae.safetensors",
                "TI hashes": "easynegative: c74b4e810b03",
                "ENSD": "31337",
                "Version": "v1.9.4",
            },
        ),
        id="sdxl-multiline-negative",
    ),
    pytest.param(
        VARIATION_AND_HIRES_PROMPT,
        ParsedInfotext(
            prompt="a castle on a hill",
            negative_prompt="",
            params={
                "Steps": "25",
                "Sampler": "UniPC",
                "CFG scale": "6.5",
                "Seed": "7",
                "Size": "640x640",
                "Variation seed": "99",
                "Variation seed strength": "0.3",
                "Hires prompt": "a castle on a hill,\nnight",
                "Version": "v1.8.0",
            },
        ),
        id="no-negative-quoted-newline",
    ),
    pytest.param(ONLY_PROMPT, ParsedInfotext(prompt=ONLY_PROMPT), id="only-prompt"),
    pytest.param("", ParsedInfotext(prompt=""), id="empty-text"),
    pytest.param(
        TWO_PAIRS_LAST_LINE, ParsedInfotext(prompt=TWO_PAIRS_LAST_LINE), id="two-pairs-stay-prompt"
    ),
    pytest.param(
        "a cat\nNegative prompt: dog\nstyle: watercolor, mood: calm",
        ParsedInfotext(prompt="a cat", negative_prompt="dog\nstyle: watercolor, mood: calm"),
        id="two-pairs-stay-negative",
    ),
    pytest.param(
        "Negative prompt: ugly\nSteps: 20, Sampler: Euler, Seed: 5",
        ParsedInfotext(
            prompt="",
            negative_prompt="ugly",
            params={"Steps": "20", "Sampler": "Euler", "Seed": "5"},
        ),
        id="empty-prompt",
    ),
    pytest.param(
        "a cat\r\nNegative prompt: dog\r\nSteps: 20, Sampler: Euler, Seed: 5\r\n",
        ParsedInfotext(
            prompt="a cat",
            negative_prompt="dog",
            params={"Steps": "20", "Sampler": "Euler", "Seed": "5"},
        ),
        id="crlf-line-endings",
    ),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_EXAMPLES)
def test_parse_real_examples(text: str, expected: ParsedInfotext) -> None:
    assert parse_infotext(text) == expected


FIELD_EXAMPLES = [
    pytest.param(
        SD15_HIRES,
        {
            "steps": 28,
            "sampler_name": "DPM++ 2M",
            "scheduler": "Karras",
            "cfg_scale": 7.0,
            "seed": 1741860054,
            "width": 512,
            "height": 768,
            "model_hash": "6ce0161689",
            "model_name": "v1-5-pruned-emaonly",
            "denoising_strength": 0.45,
            "clip_skip": 2,
            "enable_hr": True,  # hires fix is on when the text has its upscale keys
            "hr_scale": 2.0,
            "hr_upscaler": "Latent",
        },
        id="sd15-hires-lora",
    ),
    pytest.param(
        OLD_FUSED,
        {
            "steps": 20,
            "sampler_name": "DPM++ 2M",
            "scheduler": "Karras",
            "cfg_scale": 7.5,
            "seed": 3456789012,
            "width": 768,
            "height": 512,
            "model_hash": "7440042bbd",
            "model_name": "sd_xl_base_1.0",
        },
        id="old-fused-sampler-is-split",
    ),
    pytest.param(
        SDXL_MULTILINE_NEGATIVE,
        {
            "steps": 30,
            "sampler_name": "Euler a",
            "scheduler": "Automatic",
            "cfg_scale": 5.0,
            "seed": 42,
            "width": 1024,
            "height": 1024,
            "model_hash": "31e35c80fc",
            "model_name": "sd_xl_base_1.0",
            "eta_noise_seed_delta": 31337,  # ENSD is honoured when read
            "sd_vae": "sdxl_vae.safetensors",
            "vae_hash": "235745af8d",
        },
        id="sdxl",
    ),
    pytest.param(ONLY_PROMPT, {}, id="only-prompt"),
    pytest.param(
        "x\nSteps: many, Sampler: k_euler_a, CFG scale: high, Seed: -1, Size: big, Clip skip: 1",
        {"sampler_name": "Euler a", "seed": -1, "clip_skip": 1},
        id="unparsable-values-skipped-alias-canonicalised",
    ),
    pytest.param(
        "x\nSteps: 4, Sampler: Restart, Schedule type: Align Your Steps, Seed: 1",
        {"steps": 4, "sampler_name": "Restart", "scheduler": "Align Your Steps", "seed": 1},
        id="unknown-sampler-and-schedule-kept-raw",
    ),
    pytest.param(
        "x\nSteps: 4, Sampler: Foo Karras, Seed: 1",
        {"steps": 4, "sampler_name": "Foo", "scheduler": "Karras", "seed": 1},
        id="unknown-fused-sampler-still-split",
    ),
    pytest.param(
        "x\nSteps: 4, Sampler: DPM++ 2M Karras, Schedule type: exponential, Seed: 1",
        {"steps": 4, "sampler_name": "DPM++ 2M", "scheduler": "Exponential", "seed": 1},
        id="explicit-schedule-type-wins",
    ),
]


@pytest.mark.parametrize(("text", "expected_fields"), FIELD_EXAMPLES)
def test_to_generation_fields(text: str, expected_fields: dict[str, object]) -> None:
    parsed = parse_infotext(text)
    fields = to_generation_fields(parsed)
    assert fields == {
        "prompt": parsed.prompt,
        "negative_prompt": parsed.negative_prompt,
        **expected_fields,
    }


def test_generation_field_types() -> None:
    fields = to_generation_fields(parse_infotext(SD15_HIRES))
    assert isinstance(fields["steps"], int)
    assert isinstance(fields["cfg_scale"], float)
    assert isinstance(fields["seed"], int)


# -------------------------------------------------------------------- formatting

BASE_PARAMS: dict[str, object] = {
    "Steps": 20,
    "Sampler": "DPM++ 2M",
    "Schedule type": "Karras",
    "CFG scale": 7.0,
    "Seed": 1741860054,
    "Size": "512x512",
    "Model hash": "6ce0161689",
    "Model": "v1-5-pruned-emaonly",
    "Version": "v1.10.1",
}


def test_format_matches_a1111_layout() -> None:
    text = format_infotext("a cat", "ugly, blurry", BASE_PARAMS)
    assert text == (
        "a cat\n"
        "Negative prompt: ugly, blurry\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1741860054, "
        "Size: 512x512, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
    )


def test_format_orders_keys_and_puts_extras_before_version() -> None:
    params = {
        "Version": "v1",
        "Hires upscale": 2,
        "Clip skip": 2,
        "Seed": 1,
        "ENSD": 31337,
        "Steps": 20,
        "Denoising strength": 0.5,
        "Sampler": "Euler a",
    }
    line = format_infotext("p", "", params).split("\n")[-1]
    keys = [pair.split(":")[0] for pair in line.split(", ")]
    assert keys == [
        "Steps",
        "Sampler",
        "Seed",
        "Denoising strength",
        "Clip skip",
        "Hires upscale",
        "ENSD",
        "Version",
    ]


def test_format_omits_negative_line_when_empty() -> None:
    assert format_infotext("a cat", "", {"Steps": 20}) == "a cat\nSteps: 20"


def test_format_omits_params_line_when_no_params() -> None:
    assert format_infotext("a cat", "dog", {}) == "a cat\nNegative prompt: dog"


@pytest.mark.parametrize(
    ("clip_skip", "expected_in_text"),
    [(1, False), ("1", False), (None, False), (2, True), ("2", True)],
)
def test_clip_skip_omitted_when_default(clip_skip: object, expected_in_text: bool) -> None:
    text = format_infotext("p", "", {**BASE_PARAMS, "Clip skip": clip_skip})
    assert ("Clip skip: 2" in text) == expected_in_text
    assert "Clip skip: 1" not in text


def test_none_values_are_omitted() -> None:
    text = format_infotext("p", "", {**BASE_PARAMS, "VAE": None, "Denoising strength": None})
    assert "VAE" not in text
    assert "Denoising" not in text


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (7.0, "7"),
        (7.5, "7.5"),
        (0.45, "0.45"),
        (20, "20"),
        (True, "True"),
        ("Euler a", "Euler a"),
    ],
)
def test_value_formatting(value: object, written: str) -> None:
    text = format_infotext("p", "", {"Steps": 1, "Seed": 2, "Extra": value})
    assert text.endswith(f"Extra: {written}")


@pytest.mark.parametrize(
    "value",
    [
        "add_detail: 7c6bad76eb54, more: 0123456789ab",  # comma and colon
        "a, b",
        "key: value",
        "line one\nline two",
        '"starts with a quote',
        "猫, 犬",
        'has "inner" quotes, and a comma',
    ],
)
def test_values_needing_quotes_are_json_quoted(value: str) -> None:
    text = format_infotext("p", "", {"Steps": 1, "Seed": 2, "Extra": value})
    written = text.split("Extra: ", 1)[1]
    assert written == json.dumps(value, ensure_ascii=False)
    assert parse_infotext(text).params["Extra"] == value


# --------------------------------------------------------------------- round trips

ROUND_TRIPS = [
    pytest.param("a cat", "", id="simple"),
    pytest.param("a cat", "ugly, blurry", id="negative-with-commas"),
    pytest.param("line one,\nline two,\n(line three:1.2)", "bad,\nworse", id="multi-line"),
    pytest.param("style: watercolor, mood: calm", "", id="prompt-with-colon-pairs"),
    pytest.param("a cat\n\nafter a blank line", "x", id="blank-line-in-prompt"),
    pytest.param("first\n  indented line ", "neg\n  indented", id="inner-whitespace-kept"),
    pytest.param("", "only negative", id="empty-prompt"),
    pytest.param("日本語のプロンプト, 猫", "低品質", id="unicode"),
]


@pytest.mark.parametrize(("prompt", "negative"), ROUND_TRIPS)
def test_round_trip(prompt: str, negative: str) -> None:
    params = {**BASE_PARAMS, "Lora hashes": "a: 1, b: 2", "Hires prompt": "x\ny"}
    parsed = parse_infotext(format_infotext(prompt, negative, params))
    assert parsed.prompt == prompt
    assert parsed.negative_prompt == negative
    # Params come back as the strings that were written (CFG 7.0 was written as "7").
    assert parsed.params == {
        **{key: str(value) for key, value in params.items()},
        "CFG scale": "7",
    }


@pytest.mark.parametrize("text", [SD15_HIRES, OLD_FUSED, SDXL_MULTILINE_NEGATIVE])
def test_reformatting_a1111_text_reproduces_it(text: str) -> None:
    parsed = parse_infotext(text)
    assert format_infotext(parsed.prompt, parsed.negative_prompt, parsed.params) == text


# ------------------------------------------------------------------ reading images


def _save_png(path: Path, text: str | None) -> Path:
    info = PngInfo()
    if text is not None:
        info.add_text("parameters", text)
    Image.new("RGB", (8, 8), "white").save(path, pnginfo=info)
    return path


def _save_with_user_comment(path: Path, fmt: str, comment: bytes) -> Path:
    exif = Image.Exif()
    exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.UserComment] = comment
    Image.new("RGB", (8, 8), "white").save(path, fmt, exif=exif.tobytes())
    return path


def test_read_png_by_path(tmp_path: Path) -> None:
    path = _save_png(tmp_path / "image.png", SD15_HIRES)
    assert read_png_infotext(path) == SD15_HIRES
    assert read_png_infotext(str(path)) == SD15_HIRES


def test_read_png_from_open_image(tmp_path: Path) -> None:
    path = _save_png(tmp_path / "image.png", OLD_FUSED)
    with Image.open(path) as image:
        assert read_png_infotext(image) == OLD_FUSED


def test_read_png_without_parameters(tmp_path: Path) -> None:
    assert read_png_infotext(_save_png(tmp_path / "plain.png", None)) is None


@pytest.mark.parametrize(
    ("fmt", "suffix", "comment"),
    [
        # What A1111 writes (piexif.helper.UserComment.dump(..., encoding="unicode")).
        ("JPEG", "jpg", b"UNICODE\x00" + SDXL_MULTILINE_NEGATIVE.encode("utf-16-be")),
        ("WEBP", "webp", b"UNICODE\x00" + SDXL_MULTILINE_NEGATIVE.encode("utf-16-be")),
        ("JPEG", "jpg", b"UNICODE\x00" + SDXL_MULTILINE_NEGATIVE.encode("utf-16-le")),
        ("JPEG", "jpg", b"ASCII\x00\x00\x00" + SDXL_MULTILINE_NEGATIVE.encode("ascii")),
    ],
    ids=["jpeg-utf16be", "webp-utf16be", "jpeg-utf16le", "jpeg-ascii"],
)
def test_read_exif_user_comment(tmp_path: Path, fmt: str, suffix: str, comment: bytes) -> None:
    path = _save_with_user_comment(tmp_path / f"image.{suffix}", fmt, comment)
    assert read_png_infotext(path) == SDXL_MULTILINE_NEGATIVE


def test_read_jpeg_without_exif(tmp_path: Path) -> None:
    path = tmp_path / "plain.jpg"
    Image.new("RGB", (8, 8)).save(path, "JPEG")
    assert read_png_infotext(path) is None


def test_read_then_parse(tmp_path: Path) -> None:
    path = _save_png(tmp_path / "image.png", SD15_HIRES)
    fields = to_generation_fields(parse_infotext(read_png_infotext(path) or ""))
    assert (fields["width"], fields["height"], fields["seed"]) == (512, 768, 1741860054)
