"""The optional safety checker as a service: loaded on first use from ``models/safety_checker``, reloaded when
its file changes, run on each generated batch when the ``safety_checker`` option is on. Flagged images are blurred
and the infotext says so; the caller decides what to record. The checker lives on the job's device as a resident
of that device's owner, which places it and evicts it like any other model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from webui.models.device import DeviceOwner
from webui.models.safety_checker import (SAFETY_CHECKER_FOLDER, WEIGHTS_FILE, SafetyChecker, blur_flagged,
                                         safety_checker_status)

FLAGGED = "flagged and blurred"
PASSED = "passed"


@dataclass(frozen=True)
class Review:
    images: list[Image.Image]   # blurred where flagged
    verdicts: list[str]         # FLAGGED or PASSED, per image


class SafetyService:
    def __init__(self, models_dir: Path, dtype: torch.dtype):
        self._folder = models_dir / SAFETY_CHECKER_FOLDER
        self._models_dir = models_dir
        self._dtype = dtype

    def status(self) -> str | None:
        """None when the weights are in place, else what is missing and where to put it."""
        return safety_checker_status(self._models_dir)

    def review(self, images: list[Image.Image], device: DeviceOwner) -> Review:
        """Check and blur on ``device``; raises ModelLoadError (with what is missing or wrong) when no checker can
        run."""
        verdicts = [FLAGGED if flagged else PASSED for flagged in self._checker(device).check(images)]
        return Review([blur_flagged(image) if verdict == FLAGGED else image
                       for image, verdict in zip(images, verdicts)], verdicts)

    def _checker(self, device: DeviceOwner) -> SafetyChecker:
        weights = self._folder / WEIGHTS_FILE
        stat = weights.stat() if weights.is_file() else None
        version = (stat.st_mtime_ns, stat.st_size) if stat else (0, 0)  # an edited file is loaded again
        return device.resident("safety-checker", lambda: SafetyChecker.from_folder(self._folder, self._dtype),
                               kind="safety-checker", version=version)
