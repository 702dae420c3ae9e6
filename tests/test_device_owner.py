"""The device owner: one LRU for every kind of model on a device, load first and evict after, reads never wait."""

from __future__ import annotations

import threading

import pytest
import torch

from webui.models.device import DeviceOwner, module_bytes


def block(width: int = 64) -> torch.nn.Module:
    return torch.nn.Linear(width, width)  # 64*64 + 64 floats = 16.6 kB


SIZE = module_bytes(block())


def test_one_lru_for_every_kind_under_a_budget():
    owner = DeviceOwner("cpu", budget_bytes=int(SIZE * 2.5))
    owner.resident("style-generator", block, kind="gan")
    owner.resident("safety-checker", block, kind="safety-checker")
    owner.resident("style-generator", lambda: pytest.fail("rebuilt"), kind="gan")  # used again: most recent
    owner.resident("checkpoint:a", block, kind="checkpoint")
    # The least recently used one went, whatever its kind.
    assert owner.names() == ["style-generator", "checkpoint:a"]
    assert owner.used_bytes() == 2 * SIZE


def test_count_limit_per_kind_and_a_new_version_replaces_the_old():
    owner = DeviceOwner("cpu")
    first = owner.resident("checkpoint:a", block, kind="checkpoint", max_of_kind=1)
    owner.resident("gan", block, kind="gan", version=1)
    owner.resident("checkpoint:b", block, kind="checkpoint", max_of_kind=1)
    assert owner.names() == ["gan", "checkpoint:b"]
    newer = owner.resident("gan", block, kind="gan", version=2)  # the file changed: built again
    assert owner.names() == ["checkpoint:b", "gan"] and newer is not first


def test_load_first_evict_after():
    owner = DeviceOwner("cpu")
    owner.resident("checkpoint:good", block, kind="checkpoint", max_of_kind=1)

    def broken():
        raise ValueError("not a model")

    with pytest.raises(ValueError):
        owner.resident("checkpoint:broken", broken, kind="checkpoint", max_of_kind=1)
    assert owner.names() == ["checkpoint:good"]  # the working model was never evicted


def test_a_resident_in_use_is_never_evicted():
    owner = DeviceOwner("cpu", budget_bytes=SIZE)
    owner.resident("checkpoint:a", block, kind="checkpoint")
    with owner.pinned("checkpoint:a"):
        owner.resident("gan", block, kind="gan")
        assert "checkpoint:a" in owner.names()
    assert owner.report()["residents"][0] == {"name": "checkpoint:a", "kind": "checkpoint", "bytes": SIZE,
                                              "in_use": False}


def test_reads_do_not_wait_for_the_work_lock():
    owner = DeviceOwner("cpu")
    owner.resident("checkpoint:a", block, kind="checkpoint")
    holding, release, done = threading.Event(), threading.Event(), threading.Event()

    def job():
        with owner.work():
            holding.set()
            release.wait(30)
        done.set()

    threading.Thread(target=job, daemon=True).start()
    assert holding.wait(30)
    assert owner.names() == ["checkpoint:a"] and owner.has("checkpoint:a") and owner.report()["residents"]
    assert not done.is_set()  # all of the above answered while the work lock was held
    release.set()
    assert done.wait(30)


def test_placing_moves_every_module_of_a_wrapper():
    class Wrapper:
        def __init__(self):
            self.model = block()
            self.name = "not a module"

    owner = DeviceOwner("meta")
    value = owner.resident("wrapped", Wrapper, kind="upscaler")
    assert value.model.weight.device.type == "meta"


def test_what_was_evicted_for_a_model_that_does_not_fit_is_loaded_again():
    owner = DeviceOwner("cpu")
    builds: list[str] = []

    def build_a():
        builds.append("a")
        return block()

    def no_room(_value, _device):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    owner.resident("checkpoint:a", build_a, kind="checkpoint", max_of_kind=1)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        owner.resident("checkpoint:b", block, kind="checkpoint", max_of_kind=1, place=no_room)
    assert owner.names() == ["checkpoint:a"] and builds == ["a", "a"]  # evicted for b, then reloaded
