"""The RAM cache of checkpoints: switching back to a checkpoint already seen takes it from RAM, never stale, never
with a LoRA left in it, within its size, and without memory growing over many switches."""

from __future__ import annotations

import dataclasses
import gc
import os

import numpy as np
import psutil
import pytest
import torch
from fastapi.testclient import TestClient

from tests.conftest import install, make_settings
from tests.lora_files import kohya_lora
from webui.models import loader
from webui.models.device import DeviceOwner, module_bytes
from webui.models.manager import ModelManager
from webui.models.ram_cache import GIB, CacheKey, RamCache, should_pin
from webui.models.registry import HashCache, ModelRegistry
from webui.services.container import build_services
from webui.types import Txt2ImgRequest

SMALL = dict(width=64, height=64, steps=2, sampler_name="Euler", save_images=False)


class CountingLoader:
    """The manager's ``load=``: records every load it is asked for (by file name), then delegates."""

    def __init__(self, load):
        self._load = load
        self.calls: list[str] = []

    def __call__(self, info, dtype, allow_pickle=False):
        self.calls.append(info.path.name)
        return self._load(info, dtype, allow_pickle)


@pytest.fixture
def counting(tiny_loader) -> CountingLoader:
    return CountingLoader(tiny_loader)


def image(services, prompt: str = "a red fox", seed: int = 11) -> np.ndarray:
    result = services.generation.txt2img(Txt2ImgRequest(prompt=prompt, seed=seed, **SMALL))
    return np.asarray(result.images[0]).astype(np.int16)


def make_services(data_dir, model_files, load, **settings):
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    return build_services(make_settings(data_dir, max_loaded_models=1, **settings), load=load)


@pytest.fixture
def switching(data_dir, model_files, counting):
    svc = make_services(data_dir, model_files, counting)
    yield svc
    svc.queue.shutdown()


def test_switching_back_takes_the_checkpoint_from_ram_and_makes_the_same_image(switching, counting):
    switching.checkpoints.switch("tiny-sd15")
    first = image(switching)
    switching.checkpoints.switch("other-sd15")
    other = image(switching)
    [resident] = switching.manager.memory_report()["residents"]
    switching.checkpoints.switch("tiny-sd15")
    again = image(switching)
    assert counting.calls == ["tiny-sd15.safetensors", "other-sd15.safetensors"]  # each file read once
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    report = switching.manager.memory_report()
    assert [t.split(" ")[0] for t in report["loaded"]] == ["tiny-sd15.safetensors"]
    [cached] = report["ram_cache"]  # the one that left the device waits in RAM, with its size
    assert cached["name"] == resident["name"].removeprefix("checkpoint:") and cached["dtype"] == "float32"
    assert cached["name"].startswith("other-sd15.safetensors [") and cached["bytes"] == resident["bytes"]


def test_the_devices_api_lists_the_checkpoints_kept_in_ram(switching):
    from webui.server import create_app

    with TestClient(create_app(switching), base_url="http://127.0.0.1:7860") as client:
        for title in ("other-sd15", "tiny-sd15"):
            assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": title}).status_code == 200
        [device] = client.get("/studio/v1/devices").json()
    assert [c.split(" ")[0] for c in device["checkpoints"]] == ["tiny-sd15.safetensors"]
    [cached] = device["ram_cache"]
    assert cached["name"].startswith("other-sd15.safetensors [") and cached["bytes"] > 1_000_000
    assert cached["pinned"] is False  # only memory bound for a GPU is pinned


def test_an_edited_file_is_read_again(switching, counting, data_dir, model_files):
    switching.checkpoints.switch("tiny-sd15")
    first = image(switching)
    switching.checkpoints.switch("other-sd15")
    path = data_dir / "models" / "Stable-diffusion" / "tiny-sd15.safetensors"
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # touched: maybe edited
    switching.checkpoints.switch("tiny-sd15")
    assert counting.calls[-1] == "tiny-sd15.safetensors" and len(counting.calls) == 3
    # Replaced by other weights under the same name: the registry sees the new hash, the cache never serves
    # the old model.
    switching.checkpoints.switch("other-sd15")
    path.write_bytes(model_files["other"].read_bytes())
    switching.manager.registry.refresh()
    switching.checkpoints.switch("tiny-sd15")
    assert counting.calls[-1] == "tiny-sd15.safetensors" and len(counting.calls) == 4
    assert not np.array_equal(image(switching), first)
    # Edited while on the device: not kept when it leaves.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10_000_000_000))
    switching.checkpoints.switch("other-sd15")
    assert switching.manager.memory_report()["ram_cache"] == []


def test_ram_cache_off_reads_the_file_every_time(data_dir, model_files, counting):
    svc = make_services(data_dir, model_files, counting, ram_cache_gib=0)
    try:
        for title in ("tiny-sd15", "other-sd15", "tiny-sd15"):
            svc.checkpoints.switch(title)
        assert counting.calls == ["tiny-sd15.safetensors", "other-sd15.safetensors", "tiny-sd15.safetensors"]
        assert svc.manager.memory_report()["ram_cache"] == []
    finally:
        svc.queue.shutdown()


def test_a_lora_used_before_the_switch_does_not_leak_into_the_cached_model(switching, counting, data_dir):
    switching.checkpoints.switch("tiny-sd15")
    plain = image(switching)
    with switching.manager.lease() as model:
        kohya_lora(model.pipe, data_dir / "models" / "Lora" / "style.safetensors", scale=1.0)
    with_lora = image(switching, "a red fox <lora:style:1>")
    assert not np.array_equal(plain, with_lora)  # the LoRA does change the image
    switching.checkpoints.switch("other-sd15")
    switching.checkpoints.switch("tiny-sd15")
    assert counting.calls == ["tiny-sd15.safetensors", "other-sd15.safetensors"]  # it came from the cache
    assert np.array_equal(image(switching), plain)


def registry_of(data_dir) -> ModelRegistry:
    registry = ModelRegistry(data_dir / "models" / "Stable-diffusion", HashCache(data_dir / "cache.json"))
    registry.refresh()
    return registry


def test_the_cache_drops_the_least_recently_used_past_its_size(data_dir, model_files, counting, tiny_loader):
    for name in ("single", "other", "diffusers"):
        install(model_files[name], data_dir)
    registry = registry_of(data_dir)
    size = module_bytes(tiny_loader(registry.find("tiny-sd15"), torch.float32))  # the three are the same size
    cache = RamCache(limit_bytes=int(size * 1.5))  # room for one tiny model, not two
    manager = ModelManager(make_settings(data_dir, max_loaded_models=1), registry, load=counting, ram_cache=cache)
    for title in ("tiny-sd15", "other-sd15", "tiny-diffusers"):
        manager.select(title)
    assert [e["name"].split(" ")[0] for e in cache.report()] == ["other-sd15.safetensors"]  # tiny-sd15 dropped
    manager.select("other-sd15")   # still cached (tiny-diffusers takes its place there)
    manager.select("tiny-sd15")    # dropped: read again
    assert counting.calls == ["tiny-sd15.safetensors", "other-sd15.safetensors", "tiny-diffusers",
                              "tiny-sd15.safetensors"]
    assert cache.used_bytes() <= size * 1.5


def test_auto_size_follows_the_ram_the_system_has_available(data_dir, model_files, counting):
    available = {"bytes": 64 * GIB}
    cache = RamCache(None, available=lambda: available["bytes"], total=lambda: 64 * GIB, margin_bytes=2 * GIB)
    manager = ModelManager(make_settings(data_dir, max_loaded_models=1), registry_of_installed(data_dir, model_files),
                           load=counting, ram_cache=cache)
    manager.select("tiny-sd15")
    manager.select("other-sd15")
    assert len(cache.report()) == 1
    available["bytes"] = 1 * GIB  # the machine is short of RAM now: below the margin, nothing is kept
    manager.select("tiny-sd15")
    assert cache.report() == []
    assert counting.calls == ["tiny-sd15.safetensors", "other-sd15.safetensors"]  # tiny-sd15 came from RAM
    manager.select("other-sd15")
    assert counting.calls[-1] == "other-sd15.safetensors"  # it was not kept: read again


def test_a_load_from_disk_first_drops_what_the_cache_keeps_if_ram_is_short(data_dir, model_files, counting):
    """A load needs RAM for the file's tensors and the model built from them: the cache gives way before it."""
    for name in ("single", "other", "diffusers"):
        install(model_files[name], data_dir)
    available = {"bytes": 64 * GIB}
    cache = RamCache(None, available=lambda: available["bytes"], total=lambda: 64 * GIB, margin_bytes=2 * GIB)
    manager = ModelManager(make_settings(data_dir, max_loaded_models=1), registry_of(data_dir), load=counting,
                           ram_cache=cache)
    manager.select("tiny-sd15")
    manager.select("other-sd15")
    assert [e["name"].split(" ")[0] for e in cache.report()] == ["tiny-sd15.safetensors"]
    folder = data_dir / "models" / "Stable-diffusion" / "tiny-diffusers"
    folder_bytes = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    available["bytes"] = 2 * GIB + 2 * folder_bytes  # less than a load of tiny-diffusers may need (3x its files)
    manager.select("tiny-diffusers")
    # tiny-sd15 was dropped before the load; other-sd15, evicted after it, fits (it is in RAM already).
    assert [e["name"].split(" ")[0] for e in cache.report()] == ["other-sd15.safetensors"]
    manager.select("tiny-sd15")
    assert counting.calls == ["tiny-sd15.safetensors", "other-sd15.safetensors", "tiny-diffusers",
                              "tiny-sd15.safetensors"]


def registry_of_installed(data_dir, model_files) -> ModelRegistry:
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    return registry_of(data_dir)


def test_another_precision_is_another_entry(data_dir, model_files, counting):
    registry = registry_of_installed(data_dir, model_files)
    cache = RamCache(None)
    fp32 = ModelManager(make_settings(data_dir, max_loaded_models=1), registry, load=counting, ram_cache=cache)
    bf16 = ModelManager(make_settings(data_dir, max_loaded_models=1, precision="bf16"), registry, load=counting,
                        ram_cache=cache, owner=DeviceOwner("cpu"))
    fp32.select("tiny-sd15")
    fp32.select("other-sd15")  # tiny-sd15 (fp32) is in RAM now
    bf16.select("tiny-sd15")
    assert counting.calls[-1] == "tiny-sd15.safetensors" and len(counting.calls) == 3  # not the fp32 copy
    with bf16.lease() as model:
        assert model.dtype == torch.bfloat16
    assert [e["dtype"] for e in cache.report()] == ["float32"]


def test_rss_does_not_grow_over_twenty_switches(data_dir, model_files):
    """Real loads (not the session's shared models), then 20 switches from RAM: the process does not keep a copy
    per switch. A generous bound: a leak of one tiny model per switch would be 20 x ~12 MB."""
    manager = ModelManager(make_settings(data_dir, max_loaded_models=1), registry_of_installed(data_dir, model_files),
                           load=loader.load)
    manager.select("tiny-sd15")
    manager.select("other-sd15")
    size = manager.ram_cache.used_bytes()
    assert size > 1_000_000
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    for _ in range(10):
        manager.select("tiny-sd15")
        manager.select("other-sd15")
    gc.collect()
    growth = process.memory_info().rss - before
    assert manager.ram_cache.used_bytes() == size  # still one entry
    assert growth < 3 * size + 32 * 1024 ** 2, f"RSS grew by {growth / 2**20:.1f} MiB over 20 switches"


def test_a_checkpoint_that_does_not_fit_brings_back_the_evicted_one_from_ram(data_dir, model_files, counting,
                                                                             monkeypatch):
    """Out of GPU memory while placing B: A, evicted for it, comes back from RAM (no second read of its file)."""
    from webui.errors import ModelLoadError
    from webui.models import memory

    manager = ModelManager(make_settings(data_dir, max_loaded_models=1), registry_of_installed(data_dir, model_files),
                           load=counting)
    manager.select("tiny-sd15")
    real_apply = memory.apply_plan

    def no_room_for_other(pipe, plan, device):
        if manager.ram_cache.report():  # A has been evicted into RAM: B is being placed
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        real_apply(pipe, plan, device)

    monkeypatch.setattr(memory, "apply_plan", no_room_for_other)
    with pytest.raises(ModelLoadError, match="Out of GPU memory while loading other-sd15"):
        manager.select("other-sd15")
    monkeypatch.setattr(memory, "apply_plan", real_apply)
    assert [t.split(" ")[0] for t in manager.loaded_titles()] == ["tiny-sd15.safetensors"]
    assert counting.calls == ["tiny-sd15.safetensors", "other-sd15.safetensors"]
    assert manager.selected.name == "tiny-sd15.safetensors"


# --- the device owner's eviction handler and the cache's own rules, on plain modules ------------------------------

def block() -> torch.nn.Module:
    return torch.nn.Linear(64, 64)


def test_the_eviction_handler_gets_what_makes_room_only():
    owner = DeviceOwner("cpu")
    handed: list[tuple[str, int]] = []

    def keep(name):
        return lambda value, size: handed.append((name, size))

    a = owner.resident("checkpoint:a", block, kind="checkpoint", max_of_kind=1, on_evict=keep("a"))
    owner.resident("checkpoint:b", block, kind="checkpoint", max_of_kind=1, on_evict=keep("b"))
    assert handed == [("a", module_bytes(a))]  # evicted for b: handed over
    owner.resident("checkpoint:b", block, kind="checkpoint", max_of_kind=1, version=2, on_evict=keep("b"))
    owner.evict("checkpoint:b")
    assert handed == [("a", module_bytes(a))]  # a stale version and an explicit unload are just dropped


def test_evictions_for_the_memory_budget_are_handed_over_too():
    owner = DeviceOwner("cpu", budget_bytes=int(module_bytes(block()) * 1.5))
    handed: list[str] = []
    owner.resident("gan", block, kind="gan", on_evict=lambda value, size: handed.append("gan"))
    owner.resident("checkpoint:a", block, kind="checkpoint")
    assert handed == ["gan"] and owner.names() == ["checkpoint:a"]


def test_a_failing_handler_does_not_stop_the_eviction():
    owner = DeviceOwner("cpu")

    def broken(value, size):
        raise RuntimeError("no RAM")

    owner.resident("checkpoint:a", block, kind="checkpoint", max_of_kind=1, on_evict=broken)
    owner.resident("checkpoint:b", block, kind="checkpoint", max_of_kind=1)
    assert owner.names() == ["checkpoint:b"]


def test_weights_that_exist_only_as_meta_tensors_are_not_cached():
    cache = RamCache(None, available=lambda: 64 * GIB, total=lambda: 64 * GIB)
    key = CacheKey("x.safetensors", "float16", "full")
    assert not cache.put(key, "v1", "x", block().to("meta"), 16_640, torch.device("meta"))
    assert cache.report() == []


def test_a_stale_version_is_dropped_not_served():
    cache = RamCache(None, available=lambda: 64 * GIB, total=lambda: 64 * GIB)
    key = CacheKey("x.safetensors", "float32", "cpu")
    assert cache.put(key, "v1", "x", block(), 16_640, torch.device("cpu"))
    assert cache.take(key, "v2") is None and cache.report() == []
    assert cache.take(key, "v1") is None  # gone for good


def test_only_a_small_share_of_the_ram_is_pinned():
    # An SD1.5 fp16 model (2 GB) on a 32 GiB machine is pinned; SDXL (7 GB) is not, nor a second 2 GB one
    # (pinned blocks are counted at twice their size: the allocator rounds them up to a power of two).
    assert should_pin(2 * GIB, 0, 32 * GIB)
    assert not should_pin(7 * GIB, 0, 32 * GIB)
    assert not should_pin(2 * GIB, 4 * GIB, 32 * GIB)


def test_a_model_placed_with_offload_hooks_is_cached_with_its_weights(tiny_model):
    """Sequential offload leaves meta tensors in the modules and the weights in accelerate's hooks: leaving the
    device removes the hooks, which puts the weights back, so the cached model is whole (and the memory plan adds
    the hooks again when it is placed)."""
    from accelerate import cpu_offload
    from diffusers import StableDiffusionPipeline

    from tests.tiny_models import tiny_sd1_components

    pipe = StableDiffusionPipeline(**tiny_sd1_components(seed=0), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    cpu_offload(pipe.unet, execution_device=torch.device("cpu"))
    assert pipe.unet.conv_in.weight.is_meta
    model = dataclasses.replace(tiny_model, pipe=pipe)
    cache = RamCache(None, available=lambda: 64 * GIB, total=lambda: 64 * GIB)
    assert cache.put(CacheKey("x", "float32", "4gb"), "v1", "x", model, module_bytes(model),
                     torch.device("cuda"))  # from a GPU: its weights are released to RAM
    # Pinning needs a CUDA driver, which this machine lacks: the model is kept in plain memory instead.
    assert [e["pinned"] for e in cache.report()] == [False]
    assert not hasattr(pipe.unet, "_hf_hook")
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_the_flag_sets_the_size_and_refuses_a_negative_one(capsys):
    from webui.cli import parse_settings

    assert parse_settings([]).ram_cache_gib is None  # auto
    assert not RamCache.from_gib(parse_settings(["--ram-cache-gib", "0"]).ram_cache_gib).enabled
    assert RamCache.from_gib(parse_settings(["--ram-cache-gib", "1.5"]).ram_cache_gib).enabled
    for bad in ("-1", "nan"):
        with pytest.raises(SystemExit):
            parse_settings(["--ram-cache-gib", bad])
        assert "--ram-cache-gib must be 0 (off) or more" in capsys.readouterr().err


def test_a_training_run_loading_its_own_copy_gets_the_ram_first(data_dir, model_files):
    from webui.services.training_setup import training_resources

    cache = RamCache(None, available=lambda: 2 * GIB, total=lambda: 64 * GIB, margin_bytes=2 * GIB)
    assert cache.put(CacheKey("old.safetensors", "float32", "cpu"), "v1", "old", block(), 16_640,
                     torch.device("cpu"))  # on the CPU: kept while the margin is free (it is, exactly)
    resources = training_resources(make_settings(data_dir), registry_of_installed(data_dir, model_files), cache)
    model = resources.load_checkpoint("tiny-sd15")
    assert model.info.name == "tiny-sd15.safetensors" and cache.report() == []  # dropped before the load


def test_one_cache_for_every_device(data_dir, model_files, counting):
    svc = make_services(data_dir, model_files, counting, device="cpu:0,cpu:1")
    try:
        first, second = svc.devices
        assert first.ram_cache is second.ram_cache  # RAM is one pool
        first.select("tiny-sd15")
        first.select("other-sd15")  # tiny-sd15 leaves cpu:0 for RAM
        with second.lease("tiny-sd15") as model:  # cpu:1 takes it from there
            assert model.info.name == "tiny-sd15.safetensors"
        assert counting.calls == ["tiny-sd15.safetensors", "other-sd15.safetensors"]
        assert [d["ram_cache"] for d in (first.memory_report(), second.memory_report())] == [[], []]
    finally:
        svc.queue.shutdown()
