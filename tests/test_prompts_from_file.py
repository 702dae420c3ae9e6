"""Prompts from file or textbox (built-in extension): A1111's line syntax, refusals with line numbers, and runs on
the tiny model (one run per line, seeds iterated or shared as A1111 does, prompts inserted at start or end)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.script_harness import DirectScriptContext, load_builtin, run_script, script_of
from webui.extensions.api import infotext_fields
from webui.types import Txt2ImgRequest

TITLE = "Prompts from file or textbox"
SMALL = dict(width=64, height=64, steps=2, save_images=False)


@pytest.fixture(scope="module")
def ext():
    return load_builtin("prompts_from_file")


@pytest.fixture(scope="module")
def pff(ext):
    import sys

    return sys.modules["studio_extensions.prompts_from_file.main"]


@pytest.mark.parametrize("line, fields", [
    ("a red fox", {"prompt": "a red fox"}),
    ("  a fox, in snow  ", None),  # stripped by parse_lines
    ('--prompt "a cat" --steps 3 --seed 7', {"prompt": "a cat", "steps": 3, "seed": 7}),
    ("--prompt a cat on a mat --negative_prompt ugly hands --cfg_scale 5.5",
     {"prompt": "a cat on a mat", "negative_prompt": "ugly hands", "cfg_scale": 5.5}),
    ('--sampler_name "Euler a" --width 64 --height 128 --n_iter 2 --batch_size 3',
     {"sampler_name": "Euler a", "width": 64, "height": 128, "n_iter": 2, "batch_size": 3}),
    ("--subseed 5 --subseed_strength 0.25 --seed_resize_from_w 64 --seed_resize_from_h 32",
     {"subseed": 5, "subseed_strength": 0.25, "seed_resize_from_w": 64, "seed_resize_from_h": 32}),
    ("--tiling true --do_not_save_samples true --do_not_save_grid true --restore_faces false",
     {"tiling": True, "save_images": False}),
    ('--sd_model "other-sd15" --prompt x', {"checkpoint": "other-sd15", "prompt": "x"}),
])
def test_line_syntax(pff, line, fields):
    if fields is None:
        assert pff.parse_lines(line) == [(1, {"prompt": "a fox, in snow"})]
    else:
        assert pff.parse_line(line) == fields


@pytest.mark.parametrize("text, message", [
    ("a cat\n--foo 1", "line 2: unknown option --foo"),
    ("--steps", "line 1: --steps needs a value"),
    ("--steps many", "line 1: --steps: must be an integer (got 'many')"),
    ("--cfg_scale high", "line 1: --cfg_scale: must be a number"),
    ("\n\n--prompt \"unclosed", "line 3: cannot be split into options"),
    ("x\n--steps 0", "line 2: --steps:"),
    ("--width 65", "line 1: --width: "),
    ("--sampler_name Nonesuch", "line 1: sampler_name:"),
    ("--tiling yes", "line 1: --tiling: must be true or false"),
    ("--restore_faces true", "line 1: --restore_faces: face restoration is not available"),
    ("--outpath_samples /tmp/x", "line 1: --outpath_samples: output folders cannot be chosen"),
    ("--outpath_grids /tmp/x", "line 1: --outpath_grids: output folders cannot be chosen"),
    ("--styles mine", "line 1: --styles: styles are not applied"),
    ("--sampler_index 3", "line 1: --sampler_index: sampler numbers differ"),
    ("plain -- prompt", "line 1: expected an option starting with --, got 'plain'"),
    ("", "enter at least one line"),
    ("  \n \n", "enter at least one line"),
])
def test_bad_lines_refused_when_validated(ext, text, message):
    script = script_of(ext, TITLE)
    with pytest.raises(ValidationError) as err:
        script.params.model_validate({"prompt_txt": text})
    assert err.value.errors()[0]["loc"] == ("prompt_txt",)
    msg = err.value.errors()[0]["msg"]
    assert message in msg and not msg.startswith("Value error")  # shown to the user as it is


def test_a1111_args_order(ext):
    script = script_of(ext, TITLE)
    assert script.a1111_args == ("checkbox_iterate", "checkbox_iterate_batch", "prompt_position", "prompt_txt")
    assert set(script.tabs) == {"txt2img", "img2img"}


def test_one_run_per_line_with_its_options(services, ext):
    ctx = DirectScriptContext(services)
    base = Txt2ImgRequest(prompt="", seed=11, **SMALL)
    text = "a red fox\n\n--prompt \"a blue cat\" --steps 3 --seed 5 --n_iter 2\n--prompt tree --cfg_scale 4"
    result = run_script(script_of(ext, TITLE), base, {"prompt_txt": text}, ctx)
    assert len(result.images) == 4 and len(result.infotexts) == 4 and result.grid is None
    assert [r.prompt for r in ctx.requests] == ["a red fox", "a blue cat", "tree"]
    fields = [infotext_fields(t) for t in result.infotexts]
    assert [f["Seed"] for f in fields] == ["11", "5", "6", "11"]
    assert [f["Steps"] for f in fields] == ["2", "3", "3", "2"]
    assert fields[3]["CFG scale"] in ("4", "4.0")
    assert result.infotexts[1].startswith("a blue cat\n")
    assert [p[1:] for p in ctx.progress_log] == [(0, 3), (1, 3), (2, 3)]


def test_iterate_seed_and_prompt_position(services, ext):
    ctx = DirectScriptContext(services)
    base = Txt2ImgRequest(prompt="oil painting", negative_prompt="blur", seed=100, batch_size=2, **SMALL)
    values = {"prompt_txt": "a fox\n--prompt a cat --negative_prompt dark\n--seed 3 --prompt owl",
              "checkbox_iterate": True, "prompt_position": "end"}
    result = run_script(script_of(ext, TITLE), base, values, ctx)
    assert [r.seed for r in ctx.requests] == [100, 102, 3]  # +batch_size*n_iter per line; a line's own wins
    assert [r.prompt for r in ctx.requests] == ["oil painting a fox", "oil painting a cat", "oil painting owl"]
    assert [r.negative_prompt for r in ctx.requests] == ["blur", "blur dark", "blur"]
    assert result.seeds == [100, 101, 102, 103, 3, 4]

    ctx = DirectScriptContext(services)
    values = {"prompt_txt": "a fox", "prompt_position": "start"}
    run_script(script_of(ext, TITLE), base.model_copy(update={"batch_size": 1}), values, ctx)
    assert ctx.requests[0].prompt == "a fox oil painting"


def test_same_random_seed_for_all_lines(services, ext):
    ctx = DirectScriptContext(services)
    base = Txt2ImgRequest(prompt="", seed=-1, **SMALL)
    run_script(script_of(ext, TITLE), base,
               {"prompt_txt": "a\nb\nc", "checkbox_iterate_batch": True}, ctx)
    seeds = {r.seed for r in ctx.requests}
    assert len(seeds) == 1 and -1 not in seeds

    ctx = DirectScriptContext(services)
    run_script(script_of(ext, TITLE), base, {"prompt_txt": "a\nb\nc", "checkbox_iterate": True}, ctx)
    first = ctx.requests[0].seed
    assert first != -1 and [r.seed for r in ctx.requests] == [first, first + 1, first + 2]


def test_interrupt_keeps_the_lines_done(services, ext):
    ctx = DirectScriptContext(services)
    ctx.interrupt_after = 1
    result = run_script(script_of(ext, TITLE), Txt2ImgRequest(seed=1, **SMALL),
                        {"prompt_txt": "a\nb\nc"}, ctx)
    assert len(result.images) == 1 and "Interrupted after 1 of 3 lines." in result.warnings



def test_img2img_lines_keep_the_init_image(services, ext):
    from PIL import Image

    from webui.types import Img2ImgRequest

    init = Image.new("RGB", (64, 64), (200, 30, 30))
    ctx = DirectScriptContext(services)
    base = Img2ImgRequest(init_images=[init], seed=2, denoising_strength=0.4, **SMALL)
    result = run_script(script_of(ext, TITLE), base, {"prompt_txt": "a\n--prompt b --steps 3"}, ctx)
    assert len(result.images) == 2
    assert all(isinstance(r, Img2ImgRequest) and r.init_images[0] is init for r in ctx.requests)
    assert infotext_fields(result.infotexts[1])["Denoising strength"] == "0.4"


def test_panel_uploads_a_file_into_the_list(ext):
    """The script's own panel (A1111's): the model's widgets plus a file whose text fills the list."""
    import gradio as gr

    script = script_of(ext, TITLE)
    with gr.Blocks() as blocks:
        widgets = script.ui(script.params())
    assert list(widgets) == list(script.params.model_fields)
    assert widgets["prompt_txt"].label == "List of prompt inputs"
    assert widgets["prompt_position"].choices == [("start", "start"), ("end", "end")]
    (upload_event,) = [f for f in blocks.fns.values() if widgets["prompt_txt"] in f.outputs]
    cleared, text = upload_event.fn(b"  a red fox \r\n--prompt \"a cat\" --steps 3\n\xff\xfe bad bytes\n")
    assert cleared is None and text == "a red fox\n--prompt \"a cat\" --steps 3\n\ufffd\ufffd bad bytes"
    assert script.params.model_validate({"prompt_txt": text}).prompt_txt == text


def test_sd_model_switches_checkpoint_and_unknown_ones_are_refused_first(services, ext):
    from webui.extensions.api import ExtensionError

    ctx = DirectScriptContext(services)
    base = Txt2ImgRequest(seed=4, checkpoint="tiny-sd15", **SMALL)
    result = run_script(script_of(ext, TITLE), base,
                        {"prompt_txt": "a\n--sd_model other-sd15 --prompt b\nc"}, ctx)
    models = [infotext_fields(t)["Model"] for t in result.infotexts]
    assert models == ["tiny-sd15", "other-sd15", "tiny-sd15"]  # for its own line only, as A1111's override

    ctx = DirectScriptContext(services)
    with pytest.raises(ExtensionError, match="line 3: --sd_model: no checkpoint named 'nonesuch'"):
        run_script(script_of(ext, TITLE), base, {"prompt_txt": "a\nb\n--sd_model nonesuch --prompt c"}, ctx)
    assert ctx.requests == []  # nothing ran
