"""A1111's file-name patterns and sanitising (webui/services/file_names.py), table-driven, and output folders that
can never lead outside outputs/ (webui/services/saving.py)."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from webui.errors import InvalidRequest
from webui.services.file_names import NameContext, file_stem, folder_parts, render, sanitize_part
from webui.services.saving import ImageSaver, SaveOptions, path_problem, resolve_outdir

NOW = dt.datetime(2026, 11, 30, 15, 4, 5)
CTX = NameContext(seed=1234, prompt="a (red) cat, sitting on a mat", negative_prompt="blurry",
                  model_name="v1-5-pruned", model_hash="6ce0161689", sampler="DPM++ 2M", scheduler="Karras",
                  steps=20, cfg=7.5, width=512, height=768, batch_index=1, batch_size=2, iteration=1, n_iter=3,
                  seeds=(1234, 1239), job_timestamp=NOW, now=NOW)


@pytest.mark.parametrize("pattern, expected", [
    ("[seed]", "1234"),
    ("[seed]-[prompt_words]", "1234-a red cat sitting on a mat"),
    ("[prompt]", "a_(red)_cat,_sitting_on_a_mat"),
    ("[prompt_spaces]", "a (red) cat, sitting on a mat"),
    ("[prompt_no_styles]", "a_(red)_cat,_sitting_on_a_mat"),
    ("[model_name]-[model_hash]", "v1-5-pruned-6ce0161689"),
    ("[sampler]-[scheduler]-[steps]-[cfg]", "DPM++ 2M-Karras-20-7.5"),
    ("[width]x[height]", "512x768"),
    ("[date]", "2026-11-30"),
    ("[datetime]", "20261130150405"),
    ("[datetime<%Y%m%d>]", "20261130"),
    ("[datetime<%H-%M><Europe/Paris>]", "15-04"),
    ("[job_timestamp]", "20261130150405"),
    ("[batch_number]", "2"),
    ("[generation_number]", "4"),       # iteration 1 x batch 2 + index 1 + 1
    ("[seed_first]-[seed_last]", "1234-1239"),
    ("[none]", ""),
    ("x[unknown_tag]", "x[unknown_tag]"),  # unknown tags stay as written, as in A1111
    ("[SEED]", "1234"),                    # tag names are case-insensitive
])
def test_tags_render_as_a1111(pattern, expected):
    assert render(pattern, CTX) == expected


def test_a_tag_that_does_not_apply_drops_the_text_before_it():
    single = NameContext(seed=5, batch_size=1, n_iter=1)
    assert render("[seed]-[batch_number]", single) == "5"
    assert render("[seed]-[generation_number]", single) == "5"


def test_prompt_words_are_capped_and_an_empty_prompt_says_empty():
    long = NameContext(prompt=" ".join(f"w{i}" for i in range(30)))
    assert render("[prompt_words]", long) == "w0 w1 w2 w3 w4 w5 w6 w7"
    assert render("[prompt_words]", long, max_prompt_words=2) == "w0 w1"
    assert render("[prompt_words]", NameContext(prompt="((( )))")) == "empty"


@pytest.mark.parametrize("prompt", [
    "../../../etc/passwd", "..", "/abs/path", "a\x00b", "C:\\Windows\\system32", "CON", "nul.txt", "a/b\\c",
    "x" * 5000, "é" * 300, "  .. ", "line\nbreak\ttab", "..\\..\\x",
])
def test_hostile_prompts_make_one_safe_name(prompt):
    ctx = NameContext(seed=1, prompt=prompt)
    for pattern in ("[prompt]", "[prompt_spaces]", "[prompt_words]", "[seed]-[prompt]"):
        name = file_stem(pattern, ctx)
        assert "/" not in name and "\\" not in name and "\x00" not in name and "\n" not in name
        assert name not in (".", "..") and len(name.encode()) <= 200
        assert name.split(".")[0].upper() not in {"CON", "NUL", "PRN", "AUX"}
    for parts in (folder_parts("[prompt]", ctx), folder_parts("[prompt_spaces]/[seed]", ctx)):
        assert all(p not in (".", "..") and "/" not in p and "\x00" not in p for p in parts)


def test_sanitize_part_matches_a1111():
    assert sanitize_part(' a:b*c?"d" ', replace_spaces=False) == "a_b_c__d_"
    assert sanitize_part(' a b') == "_a_b"  # spaces become _ first, as in A1111
    assert sanitize_part("name. . ", replace_spaces=False) == "name"
    assert sanitize_part("x" * 300) == "x" * 128


@pytest.mark.parametrize("value, problem", [
    ("/etc", "absolute"), ("../x", "'..'"), ("outputs/../../x", "'..'"), ("C:/x", "absolute"),
    ("a\x00b", "control"), ("a\\b", "/ between"),
])
def test_folder_options_that_could_leave_outputs_are_refused(value, problem):
    assert problem in path_problem(value)


def test_folder_options_resolve_inside_outputs_and_links_out_are_refused(tmp_path):
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    assert resolve_outdir("k", "outputs/mine", outputs) == outputs / "mine"
    assert resolve_outdir("k", "mine/sub", outputs) == outputs / "mine" / "sub"
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", outputs / "escape")
    with pytest.raises(InvalidRequest, match="^k: leads outside outputs/"):
        resolve_outdir("k", "outputs/escape", outputs)


def test_saver_names_numbers_and_never_overwrites(tmp_path):
    saver = ImageSaver(tmp_path / "outputs")
    options = SaveOptions(samples_filename_pattern="[seed]-[model_name]", directories_filename_pattern="[date]")
    ctx = NameContext(seed=7, model_name="tiny", now=NOW)
    first = saver.save(b"one", "i", "txt2img", ctx, options)
    second = saver.save(b"two", "i", "txt2img", ctx, options)
    assert first == tmp_path / "outputs" / "txt2img-images" / "2026-11-30" / "00000-7-tiny.png"
    assert second.name == "00001-7-tiny.png" and first.read_bytes() == b"one"
    plain = SaveOptions(samples_filename_pattern="[seed]", save_images_add_number=False, save_to_dirs=False,
                        save_txt=True)
    a, b = saver.save(b"a", "info a", "img2img", ctx, plain), saver.save(b"b", "info b", "img2img", ctx, plain)
    assert (a.name, b.name) == ("7.png", "7-1.png") and a.parent == tmp_path / "outputs" / "img2img-images"
    assert a.with_suffix(".txt").read_text() == "info a" and b.with_suffix(".txt").read_text() == "info b"
    nothing = SaveOptions(samples_filename_pattern="[none]", save_to_dirs=False)
    assert saver.save(b"n", "", "txt2img", ctx, nothing).name == "00000.png"
    assert saver.save(b"n", "", "txt2img", ctx, nothing).name == "00001.png"


def test_directory_pattern_with_traversal_stays_inside(tmp_path):
    saver = ImageSaver(tmp_path / "outputs")
    options = SaveOptions(directories_filename_pattern="../../[prompt]/..", samples_filename_pattern="../[prompt]")
    path = saver.save(b"x", "", "txt2img", NameContext(seed=1, prompt="../../evil"), options)
    assert path.resolve().is_relative_to((tmp_path / "outputs").resolve())
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["txt2img-images"]


@pytest.mark.parametrize("count, batch_size, n_rows, prevent, rows", [
    (4, 2, -1, False, 2), (3, 3, -1, False, 2), (6, 3, -1, True, 2), (5, 5, -1, True, 1), (8, 4, 0, False, 4),
    (4, 1, 3, False, 3), (2, 2, 9, False, 2), (1, 1, -1, False, 1),
])
def test_grid_rows_as_a1111(count, batch_size, n_rows, prevent, rows):
    from webui.grids import grid_rows

    assert grid_rows(count, batch_size, n_rows, prevent) == rows


def test_grid_lays_images_out_left_to_right_with_black_gaps():
    from PIL import Image

    from webui.grids import image_grid

    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    grid = image_grid([Image.new("RGB", (8, 4), c) for c in colours], batch_size=3, n_rows=-1)
    assert grid.size == (16, 8)  # round(sqrt(3)) = 2 rows, 2 columns
    assert [grid.getpixel(xy) for xy in ((0, 0), (8, 0), (0, 4), (8, 4))] == [*colours, (0, 0, 0)]
