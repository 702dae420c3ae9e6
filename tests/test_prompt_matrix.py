"""Prompt matrix (webui/builtin_extensions/prompt_matrix) on the tiny checkpoint through tests/script_harness.py:
the combinations and their order, seeds, negative prompts, the grid's shape and labels, A1111's script_args."""

from __future__ import annotations

from typing import Iterator

import numpy as np
import pytest
from PIL import Image

from tests.conftest import install, make_settings
from tests.script_harness import DirectScriptContext, run_script
from webui.builtin_extensions.prompt_matrix.matrix import grid_labels, matrix_prompts
from webui.errors import InvalidRequest
from webui.extensions.api import ExtensionError, GridLabel, infotext_fields
from webui.extensions.host import model_values, values_from_args
from webui.infotext import parse_infotext
from webui.services.container import Services, build_services
from webui.types import Img2ImgRequest, Txt2ImgRequest

CELL = 64
BASE = dict(width=CELL, height=CELL, steps=2, seed=21, save_images=False)


@pytest.fixture(scope="module")
def svc(tmp_path_factory, model_files, tiny_loader) -> Iterator[Services]:
    data_dir = tmp_path_factory.mktemp("matrix") / "data"
    install(model_files["single"], data_dir)
    services = build_services(make_settings(data_dir), load=tiny_loader)
    yield services
    services.queue.shutdown()


def script(svc: Services, tab: str = "txt2img"):
    assert svc.extensions is not None
    return svc.extensions.find_script("prompt matrix", tab).script  # the built-in, loaded from disk at start


def run(svc, values: dict, ctx: DirectScriptContext | None = None, cls=Txt2ImgRequest, **request):
    ctx = ctx or DirectScriptContext(svc)
    return run_script(script(svc), cls(**{**BASE, **request}), values, ctx), ctx


# ---------------------------------------------------------------- pure

def test_all_combinations_in_a1111_order():
    assert matrix_prompts("a cat|red|hat|night") == [
        "a cat", "a cat, red", "a cat, hat", "a cat, red, hat",
        "a cat, night", "a cat, red, night", "a cat, hat, night", "a cat, red, hat, night"]
    assert matrix_prompts("a cat | red, | hat", put_at_start=True, delimiter=" ") == [
        "a cat ", "red a cat ", "hat a cat ", "red hat a cat "]
    assert matrix_prompts("no parts") == ["no parts"]
    assert len(matrix_prompts("a|b|c|d|e|f")) == 2 ** 5


def test_labels_split_the_parts_across_and_down_with_inactive_ones():
    across, down = grid_labels("a cat|red|hat|night")
    assert across == [[GridLabel("red", False), GridLabel("hat", False)], [GridLabel("red"), GridLabel("hat", False)],
                      [GridLabel("red", False), GridLabel("hat")], [GridLabel("red"), GridLabel("hat")]]
    assert down == [[GridLabel("night", False)], [GridLabel("night")]]


def test_a1111_script_args_map_by_position(svc):
    entry = script(svc)
    raw = values_from_args(entry.a1111_args, [True, True, "negative", "space", 10], "script_args")
    values = model_values(entry.params, raw, "script_args")
    assert (values.put_at_start, values.different_seeds, values.prompt_type, values.variations_delimiter,
            values.margin_size) == (True, True, "negative", "space", 10)
    with pytest.raises(InvalidRequest, match="script_args.prompt_type") as caught:
        model_values(entry.params, {"prompt_type": "both"}, "script_args")
    assert caught.value.field == "script_args.prompt_type"


# ---------------------------------------------------------------- on the tiny model

def test_three_parts_make_a_labelled_2x4_grid_of_every_combination(svc):
    result, ctx = run(svc, {}, prompt="a cat|red|hat|night")
    assert [r.prompt for r in ctx.requests] == matrix_prompts("a cat|red|hat|night")
    assert [parse_infotext(t).prompt for t in result.infotexts] == matrix_prompts("a cat|red|hat|night")
    assert {int(infotext_fields(t)["Seed"]) for t in result.infotexts} == {21}  # one seed unless asked
    assert len(result.images) == 8
    grid = result.grid
    pad_left = CELL * 3 // 4
    assert grid.width == pad_left + 4 * CELL  # 4 columns (red x hat), 2 rows (night)
    pad_top = grid.height - 2 * CELL
    assert 0 < pad_top < 2 * CELL
    for i, image in enumerate(result.images):
        x, y = pad_left + (i % 4) * CELL, pad_top + (i // 4) * CELL
        assert np.array_equal(np.asarray(grid.crop((x, y, x + CELL, y + CELL))), np.asarray(image.convert("RGB")))
    assert result.grid_infotext == result.infotexts[0]  # as A1111: the grid carries the first image's text
    assert [p[0] for p in ctx.progress_log] == [f"Image {k} of 8" for k in range(1, 9)]


def test_different_seeds_negative_prompt_and_margins(svc):
    result, ctx = run(svc, {"different_seeds": True, "prompt_type": "negative", "variations_delimiter": "space",
                            "margin_size": 4}, prompt="a cat", negative_prompt="blurry|dark")
    assert [r.negative_prompt for r in ctx.requests] == ["blurry", "blurry dark"]
    assert all(r.prompt == "a cat" for r in ctx.requests)
    assert [int(infotext_fields(t)["Seed"]) for t in result.infotexts] == [21, 22]
    assert result.grid.width == 2 * CELL + 4  # one part: 2 columns, no row labels
    assert result.grid.height > CELL


def test_random_seed_is_fixed_once(svc):
    result, ctx = run(svc, {}, prompt="a|b", seed=-1, subseed=-1, subseed_strength=0.5)
    seeds = {int(infotext_fields(t)["Seed"]) for t in result.infotexts}
    assert len(seeds) == 1 and -1 not in seeds
    subseeds = {int(infotext_fields(t)["Variation seed"]) for t in result.infotexts}
    assert len(subseeds) == 1 and {r.subseed for r in ctx.requests} == subseeds


def test_img2img_and_interrupt_keep_a_partial_grid(svc):
    ctx = DirectScriptContext(svc, "img2img", interrupt_after=1)
    result, _ = run(svc, {}, ctx=ctx, cls=Img2ImgRequest, prompt="a|b|c",
                    init_images=[Image.new("RGB", (CELL, CELL), (10, 200, 10))], denoising_strength=0.5)
    assert len(ctx.requests) == 1 and isinstance(ctx.requests[0], Img2ImgRequest)
    assert len(result.images) == 1
    assert any("interrupted: 1 of 4" in w for w in result.warnings)
    assert result.grid.width == CELL * 3 // 4 + 2 * CELL  # the whole 2x2 grid, unmade cells black


def test_too_many_parts_are_refused_before_any_image(svc):
    ctx = DirectScriptContext(svc)
    with pytest.raises(ExtensionError, match="16 '\\|' parts make 65536 images"):
        run(svc, {}, ctx=ctx, prompt="a" + "|b" * 16)
    assert ctx.requests == []
