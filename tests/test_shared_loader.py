"""The tests' shared model loader (conftest.SharedTinyLoader): each tiny checkpoint is built once per run, yet a
test that changes or corrupts a file gets what a real load would give, and every test's infotext names its own
file."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.conftest import SharedTinyLoader, install, make_settings
from webui.errors import ModelLoadError
from webui.models.registry import HashCache, ModelRegistry
from webui.services.container import build_services
from webui.types import Txt2ImgRequest


def registry_over(data_dir) -> ModelRegistry:
    registry = ModelRegistry(data_dir / "models" / "Stable-diffusion", HashCache(data_dir / "cache.json"))
    registry.refresh()
    return registry


def conv_in(model) -> torch.Tensor:
    return model.pipe.unet.conv_in.weight.detach()


def test_the_same_file_is_loaded_once_and_each_copy_keeps_its_name(tmp_path, model_files):
    load = SharedTinyLoader()
    first = install(model_files["single"], tmp_path / "a")
    second = tmp_path / "b" / "models" / "Stable-diffusion" / "renamed.safetensors"
    second.parent.mkdir(parents=True)
    shutil.copy2(first, second)
    a = load(registry_over(tmp_path / "a").find("tiny-sd15"), torch.float32)
    b = load(registry_over(tmp_path / "b").find("renamed"), torch.float32)
    assert load.loads == 1 and a.pipe is b.pipe
    assert (a.info.name, b.info.name) == ("tiny-sd15.safetensors", "renamed.safetensors")
    assert load(registry_over(tmp_path / "a").find("tiny-sd15"), torch.bfloat16).dtype == torch.bfloat16
    assert load.loads == 2  # another precision is another model


def test_a_changed_file_is_loaded_again(data_dir, model_files):
    load = SharedTinyLoader()
    path = install(model_files["single"], data_dir)
    before = load(registry_over(data_dir).find("tiny-sd15"), torch.float32)
    shutil.copyfile(model_files["other"], path)  # same name, other weights
    after = load(registry_over(data_dir).find("tiny-sd15"), torch.float32)
    assert load.loads == 2 and not torch.equal(conv_in(before), conv_in(after))


def test_load_errors_are_never_cached(data_dir, model_files):
    load = SharedTinyLoader()
    path = install(model_files["single"], data_dir)
    load(registry_over(data_dir).find("tiny-sd15"), torch.float32)
    path.write_bytes(model_files["single"].read_bytes()[:5000])  # corrupted after a good load
    for _ in range(2):
        with pytest.raises(ModelLoadError, match="tiny-sd15.safetensors is not a valid safetensors file"):
            load(registry_over(data_dir).find("tiny-sd15"), torch.float32)
    assert load.loads == 1


def test_infotext_names_the_tests_own_file(tmp_path, data_dir, model_files):
    load = SharedTinyLoader()
    install(model_files["single"], tmp_path / "earlier")
    load(registry_over(tmp_path / "earlier").find("tiny-sd15"), torch.float32)  # an earlier test's load
    target = data_dir / "models" / "Stable-diffusion" / "my-own-name.safetensors"
    target.parent.mkdir(parents=True)
    shutil.copy2(model_files["single"], target)
    services = build_services(make_settings(data_dir), load=load)
    try:
        result = services.generation.txt2img(Txt2ImgRequest(prompt="x", width=64, height=64, steps=1,
                                                            save_images=False))
        assert load.loads == 1 and "Model: my-own-name," in result.infotexts[0]
        assert f"Model hash: {services.registry.find('my-own-name').short_hash}," in result.infotexts[0]
    finally:
        services.queue.shutdown()
