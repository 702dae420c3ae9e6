"""What a training method provides, and what the training runner gives it.

The runner (webui/training/runner.py) owns everything every method shares: the job on the shared queue, pause /
resume / cancel at step boundaries, metrics and sample images in the job's progress, resume-state files written
atomically every N steps, and the final artifact written atomically into its models folder. A method owns only
its maths: which modules train, one optimizer step, its samples and its artifact.

A method is a ``TrainingMethod`` record (name, typed request, checks, factory); the service gets the list of methods
at construction, so adding one is adding a record, not editing the runner.

Resume state is tensors plus JSON-able values (``TrainState``), written as one safetensors file: no pickle, so a
resume file is as safe to load as any model file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import torch
from PIL import Image

from webui.training import datasets


@dataclass
class TrainState:
    """Everything needed to continue exactly: trainable weights, optimizer and LR-scheduler state, RNG states and
    the position in the data order. ``tensors`` must be contiguous CPU tensors; ``values`` JSON-serialisable."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Artifact:
    """The result of a run: what to write, where, and the safetensors metadata to write with it."""

    tensors: dict[str, torch.Tensor]
    path: Path                       # final destination, e.g. models/Lora/NAME.safetensors
    metadata: dict[str, str] = field(default_factory=dict)


class Trainer(Protocol):
    """One run of one method. Built on the CPU by ``TrainingMethod.create``; the runner then places its modules
    on the job's device through ``DeviceOwner.resident`` (every ``torch.nn.Module`` attribute of the trainer is
    moved, see ``webui.models.device.modules_of``) and calls ``on_device`` before the first step."""

    total_steps: int        # optimizer steps of the whole run
    steps_per_epoch: int    # optimizer steps per pass over the data set (for the epoch shown in the UI)

    def on_device(self, device: torch.device) -> None:
        """Called once the modules are on ``device``: build the optimizer/scheduler, move data as needed."""

    def step(self, step: int) -> Mapping[str, float]:
        """Run optimizer step number ``step`` (0-based) and return its named figures; "loss" and "lr" at least."""

    def state(self) -> TrainState:
        """The resume state after the last completed step."""

    def load_state(self, state: TrainState) -> None:
        """Restore a state from ``state()`` (called after ``on_device``); the next ``step`` continues exactly."""

    def samples(self) -> list[Image.Image]:
        """Sample images showing what the run has learned so far (may be empty)."""

    def artifact(self) -> Artifact:
        """The result as it stands now (the runner writes it atomically at the end, or on cancel when the request
        asks for it). A method whose result is several files (CycleGAN's two generators) also has
        ``artifacts() -> list[Artifact]``, which the runner then writes instead."""


@dataclass(frozen=True)
class TrainingResources:
    """What a method may use to check a request and build a trainer. ``load_checkpoint(title)`` returns a NEW
    ``LoadedModel`` on the CPU in fp32 for that checkpoint title (never the generation cache's copy, which a
    training run must not change); it raises ``InvalidRequest`` for an unknown title or a file that is not a
    diffusion checkpoint."""

    models_dir: Path                 # models/ (Lora, CycleGAN, pix2pix, Stable-diffusion below it)
    embeddings_dir: Path
    load_checkpoint: Callable[[str], Any]
    checkpoint_hash: Callable[[str], str | None]   # A1111 short hash of a checkpoint title, for metadata
    allow_pickle: bool = False
    # The server's folder policy (webui/services/folders.py: the data dir and --batch-dirs, off when the server is
    # exposed unless opted in): (folder as typed, field) -> its image files. None: the data dir alone.
    image_folder: Callable[[str, str], list[Path]] | None = None

    def images(self, folder: str, field: str) -> list[Path]:
        """The image files of a training folder named in a request, sorted by name; an ``InvalidRequest`` naming
        ``field`` for a folder that is missing, empty or outside what this server may read."""
        if self.image_folder is not None:
            return sorted(self.image_folder(str(folder), field), key=lambda p: p.name)
        return datasets.folder_images(str(folder), field, self.models_dir.parent)


@dataclass(frozen=True)
class TrainingMethod:
    """A training method as the service, UI and API know it."""

    name: str                                   # "lora", "dreambooth_lora", "textual_inversion", "cyclegan", ...
    label: str                                  # what the UI shows
    request_type: type                          # the frozen dataclass of this method's settings
    from_dict: Callable[[Mapping[str, Any]], Any]   # API body (without "method") -> request; InvalidRequest names
    #                                                 the field
    check: Callable[[Any, TrainingResources], None]  # all checks before device work; raises InvalidRequest
    create: Callable[[Any, TrainingResources], Trainer]
    uses_checkpoint: bool = True                # trains on a diffusion checkpoint (LoRA, TI) or not (GANs)
