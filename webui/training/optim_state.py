"""Optimizer and module state as flat tensors plus JSON values, for ``TrainState`` (safetensors, never pickle)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def module_tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{key}": value.detach().cpu().contiguous().clone()
            for key, value in module.state_dict().items()}


def load_module(prefix: str, module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    start = prefix + "."
    module.load_state_dict({key[len(start):]: value for key, value in tensors.items() if key.startswith(start)},
                           strict=True)


def optimizer_state(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Per-parameter tensors under ``prefix.state.<index>.<name>``; param groups and scalars as JSON values."""
    saved = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entries in saved["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.state.{index}.{name}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {f"{prefix}.param_groups": saved["param_groups"], f"{prefix}.scalars": scalars}


def load_optimizer(prefix: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                   values: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    start = prefix + ".state."
    for key, value in tensors.items():
        if key.startswith(start):
            index, name = key[len(start):].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for key, value in values.get(f"{prefix}.scalars", {}).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    # load_state_dict casts the moments to each parameter's device and dtype.
    optimizer.load_state_dict({"state": state, "param_groups": values[f"{prefix}.param_groups"]})
