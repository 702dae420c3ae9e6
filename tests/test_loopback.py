"""Loopback (built-in extension): each loop's input is the previous output, seeds step by one, the denoising
strength follows A1111's curves, one batch returns every loop's image, several the last of each, grid first."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.script_harness import DirectScriptContext, load_builtin, run_script, script_of
from webui.extensions.api import ExtensionError, infotext_fields
from webui.types import Img2ImgRequest

TITLE = "Loopback"


@pytest.fixture(scope="module")
def ext():
    return load_builtin("loopback")


@pytest.fixture(scope="module")
def lb(ext):
    import sys

    return sys.modules["studio_extensions.loopback.main"]


def _request(**fields):
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return Img2ImgRequest(**{"init_images": [image], "width": 64, "height": 64, "steps": 2, "seed": 20,
                             "denoising_strength": 0.2, "save_images": False, **fields})


@pytest.mark.parametrize("curve, expected", [
    ("Linear", [0.2, 0.3, 0.4, 0.5]),
    ("Aggressive", [0.2, 0.2 + 0.3 * math.sin(math.pi / 6), 0.2 + 0.3 * math.sin(math.pi / 3), 0.5]),
    ("Lazy", [0.2, 0.2 + 0.3 * (1 - math.cos(math.pi / 6)), 0.2 + 0.3 * (1 - math.cos(math.pi / 3)), 0.5]),
])
def test_denoising_curves(lb, curve, expected):
    got = [lb.denoising_strength(i, 4, 0.2, 0.5, curve) for i in range(4)]
    assert got == pytest.approx(expected)
    assert lb.denoising_strength(0, 1, 0.7, 0.1, curve) == 0.7  # one loop: the form's strength


def test_each_loop_feeds_the_next(services, ext):
    ctx = DirectScriptContext(services)
    result = run_script(script_of(ext, TITLE), _request(),
                        {"loops": 3, "final_denoising_strength": 0.6, "denoising_curve": "Linear"}, ctx)
    assert len(ctx.requests) == 3 and len(result.images) == 3
    for previous, request in zip(ctx.results, ctx.requests[1:]):
        assert np.array_equal(np.asarray(request.init_images[0]), np.asarray(previous.images[0]))
    assert [r.seed for r in ctx.requests] == [20, 21, 22] and result.seeds == [20, 21, 22]
    assert [r.denoising_strength for r in ctx.requests] == pytest.approx([0.2, 0.4, 0.6])
    assert [r.inpainting_fill for r in ctx.requests][1:] == [1, 1]  # "original" after the first loop
    fields = [infotext_fields(t) for t in result.infotexts]
    assert [f["Seed"] for f in fields] == ["20", "21", "22"]
    assert [float(f["Denoising strength"]) for f in fields] == pytest.approx([0.2, 0.4, 0.6])
    assert all(f["Final denoising strength"] == "0.6" and f["Denoising curve"] == "Linear" for f in fields)
    assert result.grid is not None and result.grid.size == (192, 64)
    assert np.array_equal(np.asarray(result.grid.crop((64, 0, 128, 64))), np.asarray(result.images[1]))


def test_batches_restart_from_the_original_and_return_the_last_of_each(services, ext):
    ctx = DirectScriptContext(services)
    request = _request(n_iter=2, batch_size=3)
    result = run_script(script_of(ext, TITLE), request, {"loops": 2}, ctx)
    assert len(ctx.requests) == 4 and all(r.batch_size == 1 and r.n_iter == 1 for r in ctx.requests)
    assert ctx.requests[2].init_images[0] is request.init_images[0]
    assert len(result.images) == 2 and result.images[1] is ctx.results[3].images[0]
    assert [r.seed for r in ctx.requests] == [20, 21, 22, 23]
    assert result.grid is not None and result.grid.size == (128, 64)


def test_one_loop_no_grid(services, ext):
    ctx = DirectScriptContext(services)
    result = run_script(script_of(ext, TITLE), _request(), {"loops": 1}, ctx)
    assert len(result.images) == 1 and result.grid is None


def test_interrupt_keeps_the_loops_done(services, ext):
    ctx = DirectScriptContext(services)
    ctx.interrupt_after = 2
    result = run_script(script_of(ext, TITLE), _request(), {"loops": 5}, ctx)
    assert len(result.images) == 2 and any("Interrupted" in w for w in result.warnings)


def test_interrogation_refused_by_name(services, ext):
    ctx = DirectScriptContext(services)
    with pytest.raises(ExtensionError, match="append_interrogation: CLIP interrogation is not available"):
        run_script(script_of(ext, TITLE), _request(), {"append_interrogation": "CLIP"}, ctx)
    assert ctx.requests == []


def test_a1111_args(ext):
    script = script_of(ext, TITLE)
    assert script.a1111_args == ("loops", "final_denoising_strength", "denoising_curve", "append_interrogation")
    assert script.tabs == ("img2img",)


def test_the_three_built_ins_load_with_the_app(services):
    """Through the real loader, at every start, enabled by default (and in --safe-mode: they are built in)."""
    from webui.extensions.host import LOADED

    host = services.extensions
    for name in ("prompts-from-file", "sd-upscale", "loopback"):
        record = host.record(name)
        assert record is not None and record.status == LOADED and record.builtin, record and record.traceback
    assert {e.script.title for e in host.scripts("img2img")} >= {"Prompts from file or textbox", "SD upscale",
                                                                   "Loopback"}
    assert "SD upscale" not in {e.script.title for e in host.scripts("txt2img")}
    assert "Loopback" not in {e.script.title for e in host.scripts("txt2img")}
