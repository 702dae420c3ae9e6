"""``--compile``: the UNet compiled in place makes the same images, sees LoRAs applied for a job, still stops on
Interrupt, and a compile that fails leaves it eager.

Compiled here with torch.compile's "aot_eager" backend: the same Dynamo tracing and graph (weights as inputs,
hooks, guards) as the app's Inductor, without generating C++: a cold Inductor compile of the tiny UNet took
97 s on the 2-core CPU VM. The Inductor comparison (compiled vs eager images) is benchmarks/compile_check.py.
"""

from __future__ import annotations

import os
from functools import partial

import numpy as np
import pytest
import torch

from job_helpers import QuietListener
from tests.conftest import install, make_settings
from tests.lora_files import kohya_lora
from tests.tiny_models import tiny_unet
from webui.models import fast_path, loader
from webui.models.manager import ModelManager
from webui.models.registry import HashCache, ModelRegistry
from webui.pipelines import txt2img
from webui.pipelines.lora_apply import JobLora, LoraFiles, applied_loras
from webui.types import Txt2ImgRequest

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

CPU = torch.device("cpu")
REQUEST = Txt2ImgRequest(prompt="a red cube", sampler_name="Euler", steps=2, width=64, height=64, cfg_scale=7,
                         save_images=False)


@pytest.fixture(scope="module")
def managers(tmp_path_factory, model_files):
    """A --compile manager and a plain one over the same file, each with its own weights (not the shared tiny
    models: compiling is a change to the model that other tests must not see)."""
    data_dir = tmp_path_factory.mktemp("fast-path") / "data"
    install(model_files["single"], data_dir)
    registry = ModelRegistry(data_dir / "models" / "Stable-diffusion", HashCache(data_dir / "hashes.json"))
    registry.refresh()
    saved = os.environ.pop(fast_path.CACHE_ENV, None)
    try:
        settings = make_settings(data_dir, compile=True)
        compiled = ModelManager(settings, registry, load=loader.load,
                                compile_unet=partial(fast_path.compile_unet, backend="aot_eager"))
        assert os.environ[fast_path.CACHE_ENV] == str(settings.cache_dir / "torch-compile")
        assert (settings.cache_dir / "torch-compile").is_dir()
        yield compiled, ModelManager(make_settings(data_dir), registry, load=loader.load)
    finally:
        os.environ.pop(fast_path.CACHE_ENV, None)
        if saved is not None:
            os.environ[fast_path.CACHE_ENV] = saved


def _image(model, listener=None) -> tuple[np.ndarray, bool]:
    out = txt2img.run_batch(model, REQUEST, [11], listener or QuietListener(), preview_every=0)
    return np.asarray(out.images[0], dtype=np.int16), out.stopped_early


def test_the_compiled_unet_makes_the_same_image_and_the_report_says_so(managers):
    compiled_manager, eager_manager = managers
    with compiled_manager.lease() as compiled, eager_manager.lease() as eager:
        assert fast_path.is_compiled(compiled.pipe.unet) and not fast_path.is_compiled(eager.pipe.unet)
        fast, _ = _image(compiled)
        slow, _ = _image(eager)
    assert np.abs(fast - slow).max() <= 1
    assert compiled_manager.memory_report()["compiled"] is True
    assert eager_manager.memory_report()["compiled"] is False


def test_a_lora_applied_for_a_job_reaches_the_compiled_unet(managers, tmp_path):
    compiled_manager, eager_manager = managers
    with compiled_manager.lease() as compiled, eager_manager.lease() as eager:
        path = kohya_lora(eager.pipe, tmp_path / "style.safetensors", scale=0.5)
        lora = [JobLora("style", path, te_weight=1.0, unet_weight=1.0)]
        before, _ = _image(compiled)
        with applied_loras(compiled.pipe, "sd1", lora, LoraFiles(), []), \
                applied_loras(eager.pipe, "sd1", lora, LoraFiles(), []):
            fast, _ = _image(compiled)
            slow, _ = _image(eager)
        after, _ = _image(compiled)
    assert np.abs(fast - before).max() > 10  # the LoRA changed the compiled model's image...
    assert np.abs(fast - slow).max() <= 1    # ...exactly as it changed the eager one
    assert np.array_equal(after, before)     # and removing it restored the compiled model


def test_interrupt_still_stops_a_compiled_job(managers):
    class StopAfterFirstStep(QuietListener):
        steps = 0

        def on_step(self, step, steps, preview) -> None:
            self.steps += 1

        def should_stop(self) -> bool:
            return self.steps >= 1

    compiled_manager, _ = managers
    with compiled_manager.lease() as compiled:
        listener = StopAfterFirstStep()
        image, stopped = _image(compiled, listener)
    assert stopped and listener.steps == 1 and image.shape == (64, 64, 3)


def test_a_compile_that_fails_leaves_the_unet_eager(caplog):
    torch.manual_seed(0)
    unet = tiny_unet().eval()
    inputs = fast_path.dummy_inputs(unet, CPU)
    with torch.no_grad():
        expected = unet(**inputs)[0]
        assert fast_path.compile_unet(unet, CPU, backend="no-such-backend") is False
        assert not fast_path.is_compiled(unet)
        assert torch.equal(unet(**inputs)[0], expected)
    assert "running it eager" in caplog.text


def test_the_users_own_inductor_cache_dir_wins(monkeypatch, tmp_path):
    monkeypatch.setenv(fast_path.CACHE_ENV, str(tmp_path / "mine"))
    assert fast_path.use_cache_dir(tmp_path / "ours") == tmp_path / "mine"
    assert not (tmp_path / "ours").exists()
    assert fast_path.compile_mode(torch.device("cuda")) == "reduce-overhead"  # CUDA graphs (PERF.md: 3.0x)


@pytest.mark.parametrize("unet_config", ["SDXL_UNET", "SDXL_REFINER_UNET"])
def test_sdxl_base_and_refiner_warm_up_with_their_own_added_inputs(unet_config):
    """The warm-up must call the UNet as the pipelines do, or the load "fails" into eager: SDXL adds pooled text
    embeds and size/crop ids (5 on the refiner, which adds an aesthetic score)."""
    from diffusers import UNet2DConditionModel

    from tests import tiny_models

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**getattr(tiny_models, unet_config)).eval()
    pooled = tiny_models.SDXL_CLIP_G["projection_dim"]
    assert fast_path.compile_unet(unet, CPU, text_embeds_dim=pooled, backend="aot_eager")
    assert fast_path.is_compiled(unet)
