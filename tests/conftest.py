"""Shared fixtures: tiny random-weight checkpoints built at test time, and services over a temp data dir."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import os
import shutil
import threading
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a model hub
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import torch  # noqa: E402

from tests.tiny_models import write_tiny_diffusers_folder, write_tiny_single_file  # noqa: E402
from webui.config import Limits, Settings  # noqa: E402
from webui.models import loader  # noqa: E402
from webui.models.loader import LoadedModel  # noqa: E402
from webui.services.container import Services, build_services  # noqa: E402
from webui.types import CheckpointInfo  # noqa: E402


@pytest.fixture(scope="session")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints, built once per session: two single files (different weights) and a diffusers folder."""
    root = tmp_path_factory.mktemp("model-files")
    return {
        "single": write_tiny_single_file(root / "tiny-sd15.safetensors", seed=0),
        "other": write_tiny_single_file(root / "other-sd15.safetensors", seed=1),
        "diffusers": write_tiny_diffusers_folder(root / "tiny-diffusers", seed=2),
        "inpaint": write_tiny_single_file(root / "tiny-inpainting.safetensors", seed=3, in_channels=9),
        "ip2p": write_tiny_single_file(root / "toy-ip2p.safetensors", seed=4, in_channels=8),  # sorts last
    }


def pytest_collection_finish(session) -> None:
    """Move everything imported so far (torch, diffusers, gradio, ...: over half a million objects that live as
    long as the process) out of the cyclic garbage collector's sight. The model manager runs gc.collect() on
    every load, and a full collection over that heap costs about 0.3 s of CPU each time; frozen, about 0.01 s.
    Objects the tests create are collected as before. (No collection first: it would cost 0.5 s and, measured
    after importing the test modules, frees nothing.)"""
    gc.freeze()


class SharedTinyLoader:
    """The model manager's ``load=`` for tests: each checkpoint is built once per test run, then shared.

    Keyed by the checkpoint's content (sha256 of its bytes), so a test that changes or corrupts a file gets a fresh
    load, and by everything else that changes the result (kind, dtype, whether pickles are allowed). Failed loads
    are never cached: a test expecting a load error sees it every time. The returned model shares the weights of
    the first load but names the caller's file, so infotext and titles are the test's own. Sharing is safe
    because jobs leave loaded weights as they found them (each job builds its own pipeline object around them;
    a job's LoRAs are restored byte for byte when it ends) and tests run one at a time.
    """

    def __init__(self):
        self._models: dict[tuple, LoadedModel] = {}
        self._lock = threading.Lock()  # one load at a time: two managers asking at once still load once
        self.loads = 0  # real loads done, for the tests of this loader

    def __call__(self, info: CheckpointInfo, dtype: torch.dtype, allow_pickle: bool = False) -> LoadedModel:
        digest = content_digest(info.path)
        if digest is None:  # not a regular file or folder: let the real loader say what is wrong
            return loader.load(info, dtype, allow_pickle)
        key = (info.kind, digest, dtype, allow_pickle)
        with self._lock:
            cached = self._models.get(key)
            if cached is None:
                cached = loader.load(info, dtype, allow_pickle)
                self.loads += 1
                self._models[key] = cached
        return dataclasses.replace(cached, info=info)


def content_digest(path: Path) -> str | None:
    """sha256 of a regular file, or of a folder's relative file names and contents (a diffusers folder)."""
    if path.is_file():
        files = [(b"", path)]
    elif path.is_dir():
        files = [(str(p.relative_to(path)).encode(), p) for p in sorted(path.rglob("*")) if p.is_file()]
    else:
        return None
    digest = hashlib.sha256()
    for name, file in files:
        data = file.read_bytes()
        digest.update(b"%d:%s%d:" % (len(name), name, len(data)) + data)
    return digest.hexdigest()


@pytest.fixture(scope="session")
def tiny_loader() -> SharedTinyLoader:
    return SharedTinyLoader()


def install(model: Path, data_dir: Path) -> Path:
    target = data_dir / "models" / "Stable-diffusion" / model.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if model.is_dir():
        shutil.copytree(model, target)
    else:
        shutil.copy2(model, target)
    return target


# fp32 by default, so pixel comparisons hold on any CPU ("auto" is bf16 on CPUs with native bf16 and fp32 on the
# others). STUDIO_TEST_PRECISION=bf16 runs the suite's services in bf16 instead, to check everything works in it.
TEST_PRECISION = os.environ.get("STUDIO_TEST_PRECISION", "fp32")


def make_settings(data_dir: Path, **overrides) -> Settings:
    defaults = dict(data_dir=data_dir, device="cpu", allow_download=False, precision=TEST_PRECISION,
                    limits=Limits(max_width=512, max_height=512, queue_size=8))
    return Settings(**{**defaults, **overrides})


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def services(data_dir, model_files, tiny_loader) -> Iterator[Services]:
    """Services over a data dir holding the tiny single-file checkpoint and the second one."""
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    svc = build_services(make_settings(data_dir), load=tiny_loader)
    yield svc
    svc.queue.shutdown()


@pytest.fixture(scope="session")
def k():
    """The reference k-diffusion sampling/external modules (tests/kdiffusion_ref.py)."""
    from tests import kdiffusion_ref

    return kdiffusion_ref.load()


@pytest.fixture(scope="module")
def tiny_model() -> LoadedModel:
    """A tiny random SD 1.x pipeline (fp32, CPU) as a loaded model, one per test module."""
    from diffusers import StableDiffusionPipeline

    from tests.tiny_models import tiny_sd1_components

    pipe = StableDiffusionPipeline(**tiny_sd1_components(seed=0), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    return LoadedModel(info=None, family="sd", variant="normal", pipe=pipe,
                       scheduler_config=loader.base_scheduler_config(), default_size=64)
