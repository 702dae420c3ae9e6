"""X/Y/Z plot (webui/builtin_extensions/xyz_plot) on the tiny checkpoints, through tests/script_harness.py: values
parsing (pure), A1111's script_args and axis indices, every axis reaching the request, names checked before any
image, the labelled grid's layout and sizes, Z grids, infotext keys, checkpoint ordering, interrupt."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline
from PIL import Image

from tests.conftest import install, make_settings
from tests.lora_files import kohya_lora
from tests.script_harness import DirectScriptContext, run_script
from tests.tiny_models import tiny_sd1_components
from webui.errors import InvalidRequest
from webui.extensions.api import IMG2IMG, TXT2IMG, ExtensionError, ScriptRun, infotext_fields
from webui.extensions.host import model_values, values_from_args
from webui.infotext import parse_infotext
from webui.services.container import Services, build_services
from webui.types import Img2ImgRequest, Txt2ImgRequest

CELL = 64
BASE = dict(prompt="a red cat", width=CELL, height=CELL, steps=2, seed=11, save_images=False)
LORA = "tiny_style"


@pytest.fixture(scope="module")
def svc(tmp_path_factory, model_files, tiny_loader) -> Iterator[Services]:
    """One set of services for the module: both tiny checkpoints and a tiny LoRA."""
    data_dir = tmp_path_factory.mktemp("xyz") / "data"
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    lora_dir = data_dir / "models" / "Lora"
    lora_dir.mkdir(parents=True)
    pipe = StableDiffusionPipeline(**tiny_sd1_components(0), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    kohya_lora(pipe, lora_dir / f"{LORA}.safetensors", scale=1.0)
    services = build_services(make_settings(data_dir), load=tiny_loader)
    yield services
    services.queue.shutdown()


def script(svc: Services, tab: str = TXT2IMG):
    assert svc.extensions is not None
    return svc.extensions.find_script("x/y/z PLOT", tab).script  # the built-in, loaded from disk at start


def plot(svc: Services, values: dict, tab: str = TXT2IMG, ctx: DirectScriptContext | None = None, **request):
    ctx = ctx or DirectScriptContext(svc, tab)
    req = (Img2ImgRequest if tab == IMG2IMG else Txt2ImgRequest)(**{**BASE, **request})
    return run_script(script(svc, tab), req, values, ctx), ctx


def cell_at(grid: Image.Image, ix: int, iy: int, left: int, top: int, margin: int = 0) -> np.ndarray:
    x, y = left + ix * (CELL + margin), top + iy * (CELL + margin)
    return np.asarray(grid.crop((x, y, x + CELL, y + CELL)).convert("RGB"))


def fields(infotext: str) -> dict[str, str]:
    return infotext_fields(infotext)


# ---------------------------------------------------------------- values (pure)

@pytest.mark.parametrize("kind,text,expected", [
    ("int", "1, 2,3", [1, 2, 3]),
    ("int", "1-5", [1, 2, 3, 4, 5]),
    ("int", "1-5 (+2)", [1, 3, 5]),
    ("int", "5-1 (-2)", [5, 3, 1]),
    ("int", "1-10 [5]", [1, 3, 5, 7, 10]),
    ("int", "-1, 7, 2-3", [-1, 7, 2, 3]),
    ("float", "0.5-1.5 (+0.5)", [0.5, 1.0, 1.5]),
    ("float", "1-2 (+0.1)", [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9, 2.0]),
    ("float", "1-2 [3]", [1.0, 1.5, 2.0]),
    ("float", "7, 3.5", [7.0, 3.5]),
    ("text", 'Euler a, "DPM++ 2M, odd", DDIM', ["Euler a", "DPM++ 2M, odd", "DDIM"]),
    ("bool", "True, false", [True, False]),
    ("permutations", "a, b", [("a", "b"), ("b", "a")]),
])
def test_values_parse_as_a1111_does(kind, text, expected):
    from webui.builtin_extensions.xyz_plot.values import parse_values, split_values

    assert parse_values(split_values(text), kind) == expected


def test_raw_lines_keep_commas():
    from webui.builtin_extensions.xyz_plot.values import parse_values, split_values

    assert parse_values(split_values("a, b\nc", raw_lines=True), "text") == ["a, b", "c"]
    assert split_values("a, b", raw_lines=True) == ["a", "b"]  # one line: still CSV, as A1111


@pytest.mark.parametrize("kind,text,message", [
    ("int", "1, abc", "'abc' is not a whole number"),
    ("int", "1.5", "'1.5' is not a whole number"),
    ("float", "x", "'x' is not a number"),
    ("int", "5-1", "no values"),
    ("int", "1-100000000", "at most 1000"),
    ("float", "1-2 (+0)", "step must not be 0"),
    ("bool", "yes", "not True or False"),
    ("int", "", "no values"),
])
def test_bad_values_say_what_is_wrong(kind, text, message):
    from webui.builtin_extensions.xyz_plot.values import ValuesError, parse_values, split_values

    with pytest.raises(ValuesError, match=message):
        parse_values(split_values(text), kind)


# ---------------------------------------------------------------- A1111's script_args

def test_a1111_script_args_map_by_position_and_axis_index(svc):
    entry = script(svc)
    # what an A1111 client sends: axis types as indices into A1111's txt2img list, dropdown picks as lists
    args = [4, "2, 3", [], 11, "", ["tiny-sd15", "other-sd15"], 0, "", [], False, True, False, True, 8, False, False]
    values = model_values(entry.params, values_from_args(entry.a1111_args, args, "script_args"), "script_args")
    assert (values.x_type, values.x_values) == ("Steps", "2, 3")
    assert (values.y_type, values.y_values) == ("Checkpoint name", "tiny-sd15,other-sd15")
    assert values.z_type == "Nothing"
    assert (values.draw_legend, values.include_lone_images, values.no_fixed_seeds, values.margin_size) == \
        (False, True, True, 8)
    # img2img's list differs (no hires axes, Image CFG Scale at 6): the same index means another axis there
    i2i = script(svc, IMG2IMG)
    values = model_values(i2i.params, values_from_args(i2i.a1111_args, [5, "3,7", [], 10], "s"), "s")
    assert (values.x_type, values.y_type) == ("CFG Scale", "Checkpoint name")
    assert model_values(i2i.params, {"x_type": "image cfg scale"}, "s").x_type == "Image CFG Scale"


@pytest.mark.parametrize("raw,field,message", [
    ({"x_type": 30}, "x_type", "A1111's axis 30 \\('Face restore'\\) is not supported here"),
    ({"y_type": 99}, "y_type", "not in A1111's txt2img list"),
    ({"x_type": "Hires steps"}, "x_type", "Input should be"),  # an unknown label
    ({"margin_size": 501}, "margin_size", "less than or equal to 500"),
    ({"x_vals": "1"}, "x_vals", "Extra inputs"),
    ({"x_values_dropdown": [1, 2]}, "", "x_values_dropdown must be a list of strings"),
])
def test_bad_script_values_name_the_field(svc, raw, field, message):
    model = script(svc, IMG2IMG if raw.get("x_type") == "Hires steps" else TXT2IMG).params
    with pytest.raises(InvalidRequest, match=message) as caught:
        model_values(model, raw, "script_args")
    assert caught.value.field == (f"script_args.{field}" if field else "script_args")
    assert "Value error" not in str(caught.value)


def test_too_many_script_args_are_refused(svc):
    entry = script(svc)
    with pytest.raises(InvalidRequest, match="at most 16 values"):
        values_from_args(entry.a1111_args, [0] * 17, "script_args")


# ---------------------------------------------------------------- every axis reaches the request (no images)

@pytest.mark.parametrize("tab,axis,text,field,expected", [
    (TXT2IMG, "Seed", "3, 4", "seed", [3, 4]),
    (TXT2IMG, "Var. seed", "5", "subseed", [5]),
    (TXT2IMG, "Var. strength", "0-1 [3]", "subseed_strength", [0.0, 0.5, 1.0]),
    (TXT2IMG, "Steps", "2-4", "steps", [2, 3, 4]),
    (TXT2IMG, "Hires steps", "1,2", "hr_second_pass_steps", [1, 2]),
    (TXT2IMG, "CFG Scale", "3-9 (+3)", "cfg_scale", [3.0, 6.0, 9.0]),
    (IMG2IMG, "Image CFG Scale", "1, 1.5", "image_cfg_scale", [1.0, 1.5]),
    (TXT2IMG, "Prompt S/R", "red, blue", "prompt", ["a red cat", "a blue cat"]),
    (TXT2IMG, "Prompt order", "red, cat", "prompt", ["a red cat", "a cat red"]),
    (TXT2IMG, "Sampler", "euler a, dpm++ 2m karras", "sampler_name", ["Euler a", "DPM++ 2M"]),
    (TXT2IMG, "Hires sampler", "euler, Use same sampler", "hr_sampler_name", ["Euler", "Use same sampler"]),
    (TXT2IMG, "Checkpoint name", "other, tiny-sd15.safetensors", "checkpoint", ["other-sd15", "tiny-sd15"]),
    (TXT2IMG, "Sigma Churn", "0, 0.5", "s_churn", [0.0, 0.5]),
    (TXT2IMG, "Schedule type", "karras, Exponential", "scheduler", ["Karras", "Exponential"]),
    (TXT2IMG, "Schedule rho", "5, 7", "rho", [5.0, 7.0]),
    (TXT2IMG, "Eta", "0, 1", "eta", [0.0, 1.0]),
    (TXT2IMG, "Clip skip", "1-2", "clip_skip", [1, 2]),
    (TXT2IMG, "Denoising", "0.3, 0.7", "denoising_strength", [0.3, 0.7]),
    (IMG2IMG, "Denoising", "0.3, 0.7", "denoising_strength", [0.3, 0.7]),
    (TXT2IMG, "Hires upscaler", "latent (nearest), lanczos", "hr_upscaler", ["Latent (nearest)", "Lanczos"]),
    (TXT2IMG, "Hires upscale", "1.5, 2", "hr_scale", [1.5, 2.0]),
    (TXT2IMG, "VAE", "None, Automatic", "sd_vae", ["None", "Automatic"]),
    (TXT2IMG, "Always discard next-to-last sigma", "True, False", "always_discard_next_to_last_sigma",
     [True, False]),
    (TXT2IMG, "SGM noise multiplier", "true", "sgm_noise_multiplier", [True]),
    (TXT2IMG, "Refiner checkpoint", "None, other", "refiner_checkpoint", [None, "other-sd15"]),
    (TXT2IMG, "Refiner switch at", "0.5, 0.8", "refiner_switch_at", [0.5, 0.8]),
    (TXT2IMG, "RNG source", "CPU, NV", "randn_source", ["CPU", "NV"]),
])
def test_each_axis_sets_its_request_field(svc, tab, axis, text, field, expected):
    from webui.builtin_extensions.xyz_plot.plot import _cell_requests, parse_axis

    model = script(svc, tab).params
    cls = Img2ImgRequest if tab == IMG2IMG else Txt2ImgRequest
    run = ScriptRun(tab, cls(**BASE), model_values(model, {"x_type": axis, "x_values": text}, "s"),
                    DirectScriptContext(svc, tab))
    xs = parse_axis("X", tab, axis, text, False, run)
    nothing = parse_axis("Y", tab, "Nothing", "", False, run)
    requests = _cell_requests(run.request, xs, nothing, nothing)
    got = [getattr(requests[i, 0, 0], field) for i in range(len(xs.values))]
    if field in ("checkpoint", "refiner_checkpoint"):  # titles "name.safetensors [hash]"
        got = [g.split(".safetensors")[0] if g else g for g in got]
    assert got == expected


@pytest.mark.parametrize("axis,text,labels", [
    ("Checkpoint name", "other, TINY-sd15.safetensors", ["other", "TINY-sd15.safetensors"]),  # as typed
    ("Steps", "2-3", ["Steps: 2", "Steps: 3"]),
    ("CFG Scale", "3, 4.5", ["CFG Scale: 3.0", "CFG Scale: 4.5"]),
    ("Sampler", "euler a", ["Euler a"]),
    ("Prompt S/R", "red, blue", ["red", "blue"]),
    ("Prompt order", "red, cat", ["red, cat", "cat, red"]),
    ("Nothing", "", [""]),
])
def test_axis_labels_as_a1111_writes_them(svc, axis, text, labels):
    from webui.builtin_extensions.xyz_plot.plot import parse_axis

    run = ScriptRun(TXT2IMG, Txt2ImgRequest(**BASE), None, DirectScriptContext(svc))
    assert parse_axis("X", TXT2IMG, axis, text, False, run).labels == labels


@pytest.mark.parametrize("values,message", [
    ({"x_type": "Sampler", "x_values": "Euler a, Bogus"}, "X values \\(Sampler\\): 'Bogus' is not accepted: "
                                                           "sampler_name: Unknown sampler 'Bogus'"),
    ({"x_type": "Checkpoint name", "x_values": "tiny, nope"}, "unknown checkpoint 'nope'"),
    ({"x_type": "Hires sampler", "x_values": "Nope"}, "X values \\(Hires sampler\\): 'Nope' is not accepted"),
    ({"x_type": "Nothing", "y_type": "Hires upscaler", "y_values": "Lanczos, Bicubicish"}, "Y values \\(Hires upscaler\\): unknown "
                                                                      "upscaler 'Bicubicish'"),
    ({"x_type": "Prompt S/R", "x_values": "dog, cat"}, "first value 'dog' is in neither the prompt"),
    ({"x_type": "Prompt S/R", "x_values": ", cat"}, "must not be empty"),
    ({"x_type": "Checkpoint name", "x_values": "tiny, "}, "unknown checkpoint ''"),
    ({"x_type": "Steps", "x_values": "0-2"}, "X values \\(Steps\\): '0' is not accepted: steps"),
    ({"x_type": "Steps", "x_values": "2", "z_type": "Seed", "z_values": "1, two"}, "Z values \\(Seed\\): 'two' is not a whole number"),
    ({"x_type": "Schedule type", "x_values": "Karras, Weird"}, "'Weird' is not accepted"),
    ({"x_type": "Steps", "x_values": "1-1000", "y_type": "Seed", "y_values": "1-1000"}, "grid would be too large"),
    ({"x_type": "Seed", "x_values": " "}, "X values \\(Seed\\): no values"),
])
def test_bad_values_are_refused_before_any_image(svc, values, message):
    ctx = DirectScriptContext(svc)
    with pytest.raises(ExtensionError, match=message):
        plot(svc, values, ctx=ctx)
    assert ctx.requests == [] and ctx.progress_log == []


# ---------------------------------------------------------------- grids (tiny model, 64x64, 2 steps)

def test_2x3_grid_with_legend_places_each_cell_and_writes_a1111_grid_infotext(svc):
    result, ctx = plot(svc, {"x_type": "Seed", "x_values": "-1, 5", "y_type": "Steps", "y_values": "2-4",
                             "include_lone_images": True})
    grid = result.grid
    assert len(result.images) == 6 and len(result.infotexts) == 6  # cells, Y then X (grid first is separate)
    pad_left = CELL * 3 // 4  # A1111: row labels take 3/4 of a cell's width
    assert grid.width == pad_left + 2 * CELL
    pad_top = grid.height - 3 * CELL
    assert 0 < pad_top < CELL
    texts = [fields(t) for t in result.infotexts]
    fixed_seed = int(texts[0]["Seed"])
    assert [int(t["Seed"]) for t in texts] == [fixed_seed, 5] * 3  # -1 fixed once, kept for the whole column
    assert [int(t["Steps"]) for t in texts] == [2, 2, 3, 3, 4, 4]
    for i, image in enumerate(result.images):  # X across, Y down
        assert np.array_equal(cell_at(grid, i % 2, i // 2, pad_left, pad_top), np.asarray(image.convert("RGB")))
    white = np.asarray(grid.crop((0, 0, pad_left, pad_top)).convert("L"))
    assert white.min() == 255  # the corner is blank; labels are drawn beside it
    assert np.asarray(grid.crop((pad_left, 0, grid.width, pad_top)).convert("L")).min() < 128  # X labels
    meta = fields(result.grid_infotext)
    assert meta["Script"] == "X/Y/Z plot"
    assert (meta["X Type"], meta["X Values"], meta["Fixed X Values"]) == ("Seed", "-1, 5", f"{fixed_seed}, 5")
    assert (meta["Y Type"], meta["Y Values"]) == ("Steps", "2-4")
    assert "Z Type" not in meta and meta["Seed"] == str(fixed_seed) and meta["Steps"] == "2"
    assert parse_infotext(result.grid_infotext).prompt == "a red cat"
    assert [p[0] for p in ctx.progress_log[:6]] == [f"Cell {k} of 6" for k in range(1, 7)]


def test_without_legend_the_grid_is_just_the_cells_with_margins(svc):
    result, _ = plot(svc, {"x_type": "CFG Scale", "x_values": "3, 9", "y_type": "Seed", "y_values": "1-3",
                           "draw_legend": False, "margin_size": 6, "include_lone_images": True})
    assert result.grid.size == (2 * CELL + 6, 3 * CELL + 2 * 6)
    for i, image in enumerate(result.images):
        assert np.array_equal(cell_at(result.grid, i % 2, i // 2, 0, 0, margin=6), np.asarray(image.convert("RGB")))
    assert [fields(t)["CFG scale"] for t in result.infotexts] == ["3", "9"] * 3
    assert "Fixed Y Values" in fields(result.grid_infotext)


def test_z_axis_makes_one_grid_per_value_side_by_side_and_checkpoints_change_least(svc):
    result, ctx = plot(svc, {"x_type": "Checkpoint name", "x_values": "tiny-sd15, other-sd15",
                             "y_type": "Seed", "y_values": "1, 2", "z_type": "Clip skip", "z_values": "1, 2",
                             "include_sub_grids": True, "include_lone_images": True})
    assert len(result.images) == 2 + 8  # the sub-grids, then the cells
    sub = result.images[0]
    assert result.images[1].size == sub.size
    assert sub.size == (CELL * 3 // 4 + 2 * CELL, sub.height) and sub.height > 2 * CELL
    grid = result.grid
    assert grid.width == 2 * sub.width and grid.height > sub.height  # Z labels above the sub-grids
    top = grid.height - sub.height
    assert np.array_equal(np.asarray(grid.crop((sub.width, top, 2 * sub.width, grid.height))),
                          np.asarray(result.images[1]))
    # the checkpoint axis is the outer loop: one switch, not one per cell
    models = [r.checkpoint.split(".")[0] for r in ctx.requests]
    assert models == ["tiny-sd15"] * 4 + ["other-sd15"] * 4
    cells = [fields(t) for t in result.infotexts[2:]]
    assert [c["Model"] for c in cells] == ["tiny-sd15", "other-sd15"] * 4
    assert [c.get("Clip skip", "1") for c in cells] == ["1"] * 4 + ["2"] * 4
    meta = fields(result.grid_infotext)
    assert (meta["X Type"], meta["Y Type"], meta["Z Type"], meta["Z Values"]) == \
        ("Checkpoint name", "Seed", "Clip skip", "1, 2")
    assert "Z Type" not in fields(result.infotexts[0]) and fields(result.infotexts[0])["Script"] == "X/Y/Z plot"


def test_sampler_and_schedule_axes_show_in_infotexts_and_labels(svc):
    result, _ = plot(svc, {"x_type": "Sampler", "x_values": "euler a, DDIM", "y_type": "Schedule type",
                           "y_values": "Automatic", "include_lone_images": True})
    assert [fields(t)["Sampler"] for t in result.infotexts] == ["Euler a", "DDIM"]
    assert fields(result.grid_infotext)["X Values"] == "euler a, DDIM"  # as typed, as A1111 writes it


def test_lora_weight_through_prompt_sr(svc):
    result, ctx = plot(svc, {"x_type": "Prompt S/R", "x_values": f"<lora:{LORA}:0>, <lora:{LORA}:1>",
                             "include_lone_images": True}, prompt=f"a red cat <lora:{LORA}:0>")
    assert [r.prompt for r in ctx.requests] == [f"a red cat <lora:{LORA}:0>", f"a red cat <lora:{LORA}:1>"]
    assert [parse_infotext(t).prompt for t in result.infotexts] == [r.prompt for r in ctx.requests]
    assert "Lora hashes" in fields(result.infotexts[1])
    first, second = (np.asarray(i.convert("RGB"), dtype=np.int16) for i in result.images)
    assert np.abs(first - second).mean() > 1  # the weight changed the image


def test_img2img_denoising_axis(svc):
    source = Image.new("RGB", (CELL, CELL), (200, 40, 40))
    result, ctx = plot(svc, {"x_type": "Denoising", "x_values": "0.3, 0.9", "include_lone_images": True},
                       tab=IMG2IMG, init_images=[source])
    assert all(isinstance(r, Img2ImgRequest) for r in ctx.requests)
    assert [fields(t)["Denoising strength"] for t in result.infotexts] == ["0.3", "0.9"]
    assert result.grid.size == (2 * CELL, result.grid.height)


def test_interrupt_stops_between_cells_and_keeps_a_partial_grid(svc):
    ctx = DirectScriptContext(svc, interrupt_after=2)
    result, _ = plot(svc, {"x_type": "Seed", "x_values": "1, 2", "y_type": "Steps", "y_values": "2, 3",
                           "draw_legend": False, "include_lone_images": True}, ctx=ctx)
    assert len(ctx.requests) == 2 and len(result.images) == 2
    assert result.grid.size == (2 * CELL, 2 * CELL)
    assert np.asarray(result.grid.crop((0, CELL, 2 * CELL, 2 * CELL))).max() == 0  # the cells never made
    assert any("interrupted: 2 of 4 cells" in w for w in result.warnings)


def test_keep_minus_one_seeds_gives_each_cell_its_own_seed(svc):
    result, _ = plot(svc, {"x_type": "Steps", "x_values": "2, 2", "no_fixed_seeds": True,
                           "include_lone_images": True}, seed=-1)
    seeds = [int(fields(t)["Seed"]) for t in result.infotexts]
    assert seeds[0] != seeds[1]
    assert "Fixed X Values" not in fields(result.grid_infotext)


def test_a_random_seed_is_drawn_once_for_the_whole_grid(svc):
    result, ctx = plot(svc, {"x_type": "Steps", "x_values": "2, 3", "include_lone_images": True}, seed=-1)
    seeds = {int(fields(t)["Seed"]) for t in result.infotexts}
    assert len(seeds) == 1 and -1 not in seeds
    assert {r.seed for r in ctx.requests} == seeds  # fixed before the cells were built


def test_a_batch_per_cell_shows_as_its_batch_grid_as_in_a1111(svc):
    result, _ = plot(svc, {"x_type": "Steps", "x_values": "2, 3", "draw_legend": False, "include_lone_images": True},
                     batch_size=2)
    assert [image.size for image in result.images] == [(2 * CELL, CELL)] * 2  # return_grid (on by default)
    assert result.grid.size == (4 * CELL, CELL)
