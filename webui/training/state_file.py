"""Resume states and artifacts on disk: one safetensors file each, written atomically, never pickle.

A state file holds the ``TrainState`` tensors, and its JSON values under one header metadata key, so loading a
resume file is as safe as loading any model file. Every write goes to a temp file in the same folder, is fsynced,
then renamed over the target (webui/atomic.py): a kill at any moment leaves the previous complete file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

from webui.atomic import atomic_write_bytes, remove_stale_temp_files
from webui.errors import InvalidRequest
from webui.training.protocol import TrainState

VALUES_KEY = "studio_train_state"
STATE_SUFFIX = ".state.safetensors"


def encode(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file (tensors made contiguous CPU copies first)."""
    ready = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    return save(ready, metadata=metadata or None)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (temp file, fsync, rename)."""
    atomic_write_bytes(path, encode(tensors, metadata))


def save_state(path: Path, state: TrainState) -> None:
    """Write ``state`` to ``path`` atomically."""
    write_tensors(path, state.tensors, {VALUES_KEY: json.dumps(state.values)})


def load_state(path: Path) -> TrainState:
    """Read a state written by ``save_state``; a missing, partial or foreign file is an ``InvalidRequest``."""
    try:
        with safe_open(str(path), "pt") as fh:
            values = (fh.metadata() or {}).get(VALUES_KEY)
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise InvalidRequest("resume_from", f"{path.name} is not a readable resume state ({exc})") from None
    if values is None:
        raise InvalidRequest("resume_from", f"{path.name} is a safetensors file but not a training resume state")
    return TrainState(tensors=tensors, values=json.loads(values))


def state_path(folder: Path, step: int) -> Path:
    return folder / f"step-{step:08d}{STATE_SUFFIX}"


def states_in(folder: Path) -> list[Path]:
    """The resume states in ``folder``, oldest step first."""
    return sorted(folder.glob(f"step-*{STATE_SUFFIX}")) if folder.is_dir() else []


def save_step(folder: Path, step: int, state: TrainState, keep: int) -> Path:
    """Write the state after ``step`` steps, then delete all but the newest ``keep`` (the new one included):
    an older state is only removed once a newer one is complete."""
    path = state_path(folder, step)
    save_state(path, state)
    for old in states_in(folder)[:-keep]:
        old.unlink(missing_ok=True)
    remove_stale_temp_files(folder, older_than=0)  # only this run writes here; a temp left is a killed write's
    return path


def latest(folder: Path) -> Path | None:
    found = states_in(folder)
    return found[-1] if found else None
