"""What ``ext.context`` gives an extension (AppContext over real services), and ``run_in_job`` for scripts."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.conftest import install, make_settings
from webui.extensions.api import Extension, ExtensionError, Setting
from webui.extensions.context import AppContext
from webui.extensions.state import ExtensionSettings
from webui.services.container import build_services
from webui.services.jobs import JobKind
from webui.types import Img2ImgRequest, Txt2ImgRequest

SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 5, "prompt": "a cat"}


@pytest.fixture(scope="module")
def services(tmp_path_factory, model_files, tiny_loader):
    data_dir = tmp_path_factory.mktemp("context") / "data"
    install(model_files["single"], data_dir)
    svc = build_services(make_settings(data_dir), load=tiny_loader)
    yield svc
    svc.queue.shutdown()


@pytest.fixture
def context(services, tmp_path):
    extension = Extension("ctx-test", context=None)
    extension.add_setting(Setting(key="size", default=3, label="Size"))
    values = ExtensionSettings(tmp_path / "extension-settings.json")
    return AppContext("ctx-test", services, values, lambda: extension), values


def test_settings_default_then_the_users_value(context):
    ctx, values = context
    assert ctx.setting("size") == 3
    values.set("ctx-test", "size", 7)
    assert ctx.setting("size") == 7
    with pytest.raises(KeyError, match="no setting 'nope'"):
        ctx.setting("nope")


def test_save_image_stays_under_outputs_with_infotext(context, services):
    ctx, _ = context
    outputs = services.settings.outputs_dir.resolve()
    first = ctx.save_image(Image.new("RGB", (8, 8), (1, 2, 3)), "a cat\nSteps: 2, Seed: 1", category="../../etc")
    second = ctx.save_image(Image.new("RGB", (8, 8)), category="My Grids")
    assert first.resolve().is_relative_to(outputs) and first.parent.name == "etc"
    assert Image.open(first).info["parameters"] == "a cat\nSteps: 2, Seed: 1"
    assert second.parent == outputs / "my-grids" and second.name == "00000-ctx-test.png"
    third = ctx.save_image(Image.new("RGB", (8, 8)), category="My Grids")
    assert third.name == "00001-ctx-test.png"
    assert not [p for p in (outputs / "my-grids").iterdir() if p.name.startswith(".")]  # no temp files left


def test_load_image_applies_the_server_limits(context, services, tmp_path):
    ctx, _ = context
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(buffer, format="PNG")
    assert ctx.load_image(buffer.getvalue()).size == (16, 16)
    path = tmp_path / "ok.png"
    path.write_bytes(buffer.getvalue())
    assert ctx.load_image(path).size == (16, 16)
    with pytest.raises(ExtensionError, match="ctx-test: cannot load the image: .*not"):
        ctx.load_image(b"definitely not an image")
    big = tmp_path / "big.png"
    side = int(services.settings.limits.max_image_pixels ** 0.5) + 64
    Image.new("L", (side, side)).save(big)
    with pytest.raises(ExtensionError, match="over the pixel budget"):
        ctx.load_image(big)


def test_checkpoints_progress_and_a_queued_generation(context, services):
    ctx, _ = context
    [info] = ctx.checkpoints()
    assert info.name == services.manager.selected.model_name and info.hash
    assert ctx.progress()["state"] == {"job_count": 0}
    result = ctx.txt2img(Txt2ImgRequest(save_images=False, **SMALL))
    assert result.seeds == [5] and result.images[0].size == (64, 64)


def test_run_in_job_generates_inside_a_running_job(services):
    """A script's job calls run_in_job twice (txt2img, then img2img of its image): no queueing, same checks."""
    seen = []

    def script(ctx, request):
        first = services.generation.run_in_job(ctx, request)
        init = Img2ImgRequest(init_images=[first.images[0]], denoising_strength=0.5, save_images=False, **SMALL)
        second = services.generation.run_in_job(ctx, init)
        try:
            services.generation.run_in_job(ctx, request.model_copy(update={"steps": 10_000}))
        except Exception as exc:  # noqa: BLE001 - the refusal is what is checked below
            seen.append(str(exc))
        return [first, second]

    services.queue.register(JobKind("test-script", script, uses_checkpoint=True))
    first, second = services.queue.submit("test-script", Txt2ImgRequest(save_images=False, **SMALL)).wait(120)
    assert first.infotexts[0].count("Seed: 5") == 1 and len(second.images) == 1
    assert "Denoising strength: 0.5" in second.infotexts[0]
    assert "steps: 10000 is over this server's limit" in seen[-1]
