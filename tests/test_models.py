"""Registry, hashing, loading and the model manager, with tiny real checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import pytest
import torch

from tests.conftest import install, make_settings
from webui.errors import ModelLoadError, ModelNotFound, NoModelAvailable
from webui.models import loader
from webui.models.manager import ModelManager
from webui.models.registry import HashCache, ModelRegistry


def make_registry(data_dir) -> ModelRegistry:
    registry = ModelRegistry(data_dir / "models" / "Stable-diffusion", HashCache(data_dir / "cache.json"))
    registry.refresh()
    return registry


def test_registry_lists_files_and_diffusers_folders_with_a1111_titles(data_dir, model_files):
    install(model_files["single"], data_dir)
    install(model_files["diffusers"], data_dir)
    (data_dir / "models" / "Stable-diffusion" / "notes.txt").write_text("not a model")
    items = {info.name: info for info in make_registry(data_dir).list()}
    assert set(items) == {"tiny-sd15.safetensors", "tiny-diffusers"}
    sha = hashlib.sha256(model_files["single"].read_bytes()).hexdigest()
    single = items["tiny-sd15.safetensors"]
    assert single.sha256 == sha
    assert single.title == f"tiny-sd15.safetensors [{sha[:10]}]"
    assert items["tiny-diffusers"].title == "tiny-diffusers"  # folders have no single-file hash


def test_hash_cache_avoids_rehash_until_file_changes(data_dir, model_files, monkeypatch):
    path = install(model_files["single"], data_dir)
    make_registry(data_dir)
    cache = json.loads((data_dir / "cache.json").read_text())
    assert str(path.resolve()) in cache["hashes-sha256"]

    calls = []
    import webui.models.registry as registry_module
    real = registry_module.hash_file
    monkeypatch.setattr(registry_module, "hash_file", lambda p, **kw: calls.append(p) or real(p, **kw))
    make_registry(data_dir)  # a "restart": same path, size and mtime
    assert calls == []
    with open(path, "ab") as fh:  # an edited file is rehashed
        fh.write(b"\0")
    os.utime(path, (1, 1))
    make_registry(data_dir)
    assert calls == [path]


def test_find_accepts_title_name_stem_and_hash(data_dir, model_files):
    install(model_files["single"], data_dir)
    registry = make_registry(data_dir)
    info = registry.list()[0]
    for query in (info.title, "tiny-sd15.safetensors", "tiny-sd15", info.short_hash,
                  "tiny-sd15.safetensors [0000000000]"):
        assert registry.find(query) == info
    with pytest.raises(ModelNotFound, match="'nope' not found. Available: tiny-sd15.safetensors"):
        registry.find("nope")


def test_single_file_loads_offline_with_shape_derived_configs(data_dir, model_files):
    install(model_files["single"], data_dir)
    info = make_registry(data_dir).list()[0]
    model = loader.load(info, torch.float32)
    assert (model.family, model.variant) == ("sd1", "normal")
    assert list(model.pipe.unet.config.block_out_channels) == [32, 64]
    assert model.pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    # Weights are the file's, not random: compare one tensor through the LDM name.
    from safetensors.torch import load_file
    state = load_file(str(info.path))
    expected = state["model.diffusion_model.input_blocks.0.0.weight"].float()
    assert torch.equal(model.pipe.unet.conv_in.weight.detach(), expected)


def test_diffusers_folder_loads(data_dir, model_files):
    install(model_files["diffusers"], data_dir)
    model = loader.load(make_registry(data_dir).list()[0], torch.float32)
    assert model.family == "sd1"
    assert model.variant == "normal"


def test_ckpt_is_refused_without_opt_in_and_loaded_weights_only_with_it(data_dir, model_files):
    from safetensors.torch import load_file
    ckpt = data_dir / "models" / "Stable-diffusion" / "legacy.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": load_file(str(model_files["single"]))}, ckpt)
    info = make_registry(data_dir).find("legacy.ckpt")
    assert info.kind == "ckpt"
    with pytest.raises(ModelLoadError, match="legacy.ckpt is a pickle.*--allow-pickle"):
        loader.load(info, torch.float32)
    assert loader.load(info, torch.float32, allow_pickle=True).family == "sd1"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/studio-pwned",))


def test_malicious_pickle_is_refused_even_with_opt_in(data_dir, tmp_path):
    ckpt = data_dir / "models" / "Stable-diffusion" / "evil.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(pickle.dumps(_Evil()))
    info = make_registry(data_dir).find("evil.ckpt")
    with pytest.raises(ModelLoadError, match="evil.ckpt could not be loaded as a weights-only pickle"):
        loader.load(info, torch.float32, allow_pickle=True)
    assert not os.path.exists("/tmp/studio-pwned")


def test_manager_keeps_previous_model_when_switching_to_a_broken_file(data_dir, model_files, tiny_loader):
    install(model_files["single"], data_dir)
    broken = data_dir / "models" / "Stable-diffusion" / "broken.safetensors"
    broken.write_bytes(model_files["single"].read_bytes()[:5000])
    registry = make_registry(data_dir)
    manager = ModelManager(make_settings(data_dir), registry, load=tiny_loader)
    good = manager.select("tiny-sd15")
    with pytest.raises(ModelLoadError, match="broken.safetensors is not a valid safetensors file"):
        manager.select("broken.safetensors")
    assert manager.selected == good
    with manager.lease() as model:
        assert model.info == good


def test_manager_lru_keeps_at_most_max_loaded(data_dir, model_files, tiny_loader):
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    manager = ModelManager(make_settings(data_dir, max_loaded_models=1), make_registry(data_dir), load=tiny_loader)
    manager.select("tiny-sd15")
    manager.select("other-sd15")
    assert [t.split(" ")[0] for t in manager.loaded_titles()] == ["other-sd15.safetensors"]


def test_lease_without_any_checkpoint_says_where_to_put_one(data_dir):
    manager = ModelManager(make_settings(data_dir), make_registry(data_dir))
    with pytest.raises(NoModelAvailable, match="No checkpoint found. Put a Stable Diffusion .safetensors"):
        with manager.lease():
            pass


def test_model_removed_from_disk_falls_back_to_another(data_dir, model_files):
    install(model_files["single"], data_dir)
    other = install(model_files["other"], data_dir)
    registry = make_registry(data_dir)
    manager = ModelManager(make_settings(data_dir), registry)
    assert manager.selected.name == "other-sd15.safetensors"  # first in name order
    other.unlink()
    registry.refresh()
    assert manager.selected.name == "tiny-sd15.safetensors"
