"""LoRAs applied to a loaded model for one job, and the base weights restored exactly afterwards.

The deltas of all the job's LoRAs are summed in fp32 per weight, added to the weight (cast back to its dtype),
and when the job ends (finished, failed or interrupted) each touched weight gets its original bytes back from a
copy kept on the same device: restoring by subtraction would drift in fp16. A job without LoRAs touches nothing.
Parsed files are cached by (path, size, mtime), so the next job with the same LoRA does not read it again.
The refiner of a job is a different model and is left alone (its layers are not the base model's).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from webui.errors import ModelLoadError
from webui.models.lora_weights import (LoraFile, LoraTargets, family_problem, fit_problem, module_delta, read_lora,
                                       resolve)

MAX_CACHED_FILES = 8  # parsed LoRA files kept in RAM between jobs


@dataclass(frozen=True)
class JobLora:
    """One LoRA of a job: the name the prompt used, its file and its two weights."""

    name: str
    path: Path
    te_weight: float
    unet_weight: float


class LoraFiles:
    """Parsed LoRA files, cached by (path, size, mtime): an edited or replaced file is read again."""

    def __init__(self, allow_pickle: bool = False, max_files: int = MAX_CACHED_FILES):
        self._allow_pickle = allow_pickle
        self._max = max_files
        self._lock = threading.Lock()
        self._files: OrderedDict[tuple[str, int, int], LoraFile] = OrderedDict()
        self.reads = 0  # files actually read from disk

    def get(self, path: Path) -> LoraFile:
        try:
            stat = path.stat()
        except OSError as exc:
            raise ModelLoadError(f"LoRA '{path.stem}' could not be read: {exc.strerror or exc}") from exc
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._files:
                self._files.move_to_end(key)
                return self._files[key]
        lora = read_lora(path, allow_pickle=self._allow_pickle)
        with self._lock:
            self.reads += 1
            self._files[key] = lora
            while len(self._files) > self._max:
                self._files.popitem(last=False)
        return lora


@contextmanager
def applied_loras(pipe, family: str, loras: Sequence[JobLora], files: LoraFiles,
                  warnings: list[str]) -> Iterator[list[JobLora]]:
    """Apply ``loras`` to ``pipe``'s UNet and text encoders for the ``with`` body; yields the LoRAs applied.

    A file that cannot be read or does not fit the model is left out with a warning appended to ``warnings``
    (A1111 warns and goes on); partial fits apply what fits and warn too."""
    if not loras:
        yield []
        return
    targets = LoraTargets(pipe, family)
    if any(param.is_meta for param in targets.params.values()):
        # Sequential CPU offload keeps the weights in its hooks and leaves meta tensors in the modules: adding to
        # those would do nothing, so say so rather than make an image without the LoRA that claims to have it.
        warnings.append("LoRAs are not applied: this model runs with sequential CPU offload (the low-memory "
                        "profile), which LoRAs do not support yet")
        yield []
        return
    plans: list[tuple[JobLora, LoraFile, dict]] = []  # each usable LoRA and its modules matched to parameters
    for lora in loras:
        try:
            parsed = files.get(lora.path)
        except ModelLoadError as exc:
            warnings.append(str(exc))
            continue
        foreign = family_problem(parsed, lora.name, family)
        if foreign:
            warnings.append(foreign)  # another architecture: nothing of it is applied
            continue
        plans.append((lora, parsed, resolve(parsed, targets).matched))
    fitted = {id(lora): 0 for lora, _, _ in plans}
    originals: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad():
            # One parameter at a time, on its own device: only one delta exists at once, however large the LoRAs.
            for param in dict.fromkeys(name for _, _, matched in plans for name in matched):
                weight = targets.params[param]
                delta = _summed_delta(param, weight, plans, fitted)
                if delta is None:
                    continue
                originals[param] = weight.detach().clone()
                weight.copy_((weight.float() + delta).to(weight.dtype))
                del delta
        applied = []
        for lora, parsed, _ in plans:
            partial = fit_problem(parsed, lora.name, targets, applied=fitted[id(lora)])
            if partial:
                warnings.append(partial)
            if fitted[id(lora)]:
                applied.append(lora)
        yield applied
    finally:
        with torch.no_grad():
            for param, original in originals.items():
                targets.params[param].copy_(original)


def _summed_delta(param: str, weight: torch.Tensor, plans: list[tuple[JobLora, LoraFile, dict]],
                  fitted: dict[int, int]) -> torch.Tensor | None:
    """The fp32 sum of every LoRA's delta for ``param`` at its weights (None: none fits); counts fits per LoRA."""
    total = None
    for lora, _, matched in plans:
        if param not in matched:
            continue
        component, tensors = matched[param]
        try:
            delta = module_delta({k: v.to(weight.device) for k, v in tensors.items()}, weight.shape)
        except (ValueError, RuntimeError):
            continue  # a module of another width: counted as not fitting
        fitted[id(lora)] += 1
        delta = delta * (lora.unet_weight if component == "unet" else lora.te_weight)
        total = delta if total is None else total + delta
    return total
