"""The optional safety checker as a service: loaded on first use from ``models/safety_checker``, reloaded when
its file changes, run on each generated batch when the ``safety_checker`` option is on. Flagged images are blurred
and the infotext says so; the caller decides what to record."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from webui.models.safety_checker import (SAFETY_CHECKER_FOLDER, WEIGHTS_FILE, SafetyChecker, blur_flagged,
                                         safety_checker_status)

FLAGGED = "flagged and blurred"
PASSED = "passed"


@dataclass(frozen=True)
class Review:
    images: list[Image.Image]   # blurred where flagged
    verdicts: list[str]         # FLAGGED or PASSED, per image


class SafetyService:
    def __init__(self, models_dir: Path, device: torch.device, dtype: torch.dtype):
        self._folder = models_dir / SAFETY_CHECKER_FOLDER
        self._models_dir = models_dir
        self._device = device
        self._dtype = dtype
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int], SafetyChecker] | None = None

    def status(self) -> str | None:
        """None when the weights are in place, else what is missing and where to put it."""
        return safety_checker_status(self._models_dir)

    def review(self, images: list[Image.Image]) -> Review:
        """Check and blur; raises ModelLoadError (with what is missing or wrong) when no checker can run."""
        verdicts = [FLAGGED if flagged else PASSED for flagged in self._checker().check(images)]
        return Review([blur_flagged(image) if verdict == FLAGGED else image
                       for image, verdict in zip(images, verdicts)], verdicts)

    def _checker(self) -> SafetyChecker:
        with self._lock:
            stat = (self._folder / WEIGHTS_FILE).stat() if (self._folder / WEIGHTS_FILE).is_file() else None
            key = (stat.st_mtime_ns, stat.st_size) if stat else (0, 0)
            if self._cached is None or self._cached[0] != key:
                self._cached = None
                self._cached = (key, SafetyChecker.from_folder(self._folder, self._device, self._dtype))
            return self._cached[1]
