"""Shared fixtures: tiny random-weight checkpoints built at test time, and services over a temp data dir."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a model hub
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from tests.tiny_models import write_tiny_diffusers_folder, write_tiny_single_file  # noqa: E402
from webui.config import Limits, Settings  # noqa: E402
from webui.services.container import Services, build_services  # noqa: E402


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


def install(model: Path, data_dir: Path) -> Path:
    target = data_dir / "models" / "Stable-diffusion" / model.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if model.is_dir():
        shutil.copytree(model, target)
    else:
        shutil.copy2(model, target)
    return target


def make_settings(data_dir: Path, **overrides) -> Settings:
    defaults = dict(data_dir=data_dir, device="cpu", preview_every=1, allow_download=False,
                    limits=Limits(max_width=512, max_height=512, queue_size=8))
    return Settings(**{**defaults, **overrides})


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def services(data_dir, model_files) -> Iterator[Services]:
    """Services over a data dir holding the tiny single-file checkpoint and the second one."""
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    svc = build_services(make_settings(data_dir))
    yield svc
    svc.queue.shutdown()
