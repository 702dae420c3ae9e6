"""The reference: k-diffusion 0.1.1.post1's sampling.py and external.py, the code A1111 samples with.

``import k_diffusion`` would import its training modules (clean-fid, kornia, wandb, torchvision), which the
test environment does not have; so a bare package is registered whose ``utils`` holds the two helpers
sampling/external use, and those two files are loaded from the installed package folder.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

_NAME = "k_diffusion_reference"


def _append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def _append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def load() -> types.SimpleNamespace:
    """``(sampling, external)`` modules of the installed k-diffusion; skips the test when it is missing."""
    if _NAME in sys.modules:
        package = sys.modules[_NAME]
        return types.SimpleNamespace(sampling=package.sampling, external=package.external)
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed (requirements-test-nodeps.txt)")
    folder = Path(spec.submodule_search_locations[0])
    package = types.ModuleType(_NAME)
    package.__path__ = [str(folder)]
    utils = types.ModuleType(f"{_NAME}.utils")
    utils.append_dims, utils.append_zero = _append_dims, _append_zero
    package.utils = utils
    sys.modules[_NAME] = package
    sys.modules[f"{_NAME}.utils"] = utils
    for name in ("sampling", "external"):
        module_spec = importlib.util.spec_from_file_location(f"{_NAME}.{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        module_spec.loader.exec_module(module)
        setattr(package, name, module)
    return types.SimpleNamespace(sampling=package.sampling, external=package.external)


def ldm_alphas_cumprod() -> torch.Tensor:
    """SD's schedule as LDM builds it (float64 betas, float32 buffer): scaled linear 0.00085..0.012."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0).float()
