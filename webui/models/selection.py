"""Which checkpoint new jobs use by default: one choice shared by every device, separate from what is loaded.

Reading it never waits for a job (its lock is held only to read or swap one reference). The choice is made by a
checkpoint-switch job once the model has loaded, and remembered across restarts (``last-checkpoint.json``).
"""

from __future__ import annotations

import json
import logging
import threading

from webui.errors import ModelLoadError
from webui.models import detect
from webui.models.last_checkpoint import LastCheckpoint
from webui.models.registry import ModelRegistry
from webui.types import CheckpointInfo

log = logging.getLogger(__name__)


class CheckpointSelection:
    def __init__(self, registry: ModelRegistry, last_used: LastCheckpoint):
        self._registry = registry
        self._last_used = last_used
        self._lock = threading.Lock()
        self._selected: CheckpointInfo | None = None

    @property
    def current(self) -> CheckpointInfo | None:
        """The default checkpoint. Until one is chosen: the last one used successfully (remembered across
        restarts) if it is still listed, else the first that looks usable for txt2img from its header (a normal,
        parseable model), else the first on disk."""
        with self._lock:
            selected = self._selected
        if selected is None or not selected.path.exists():
            selected = self._default(self._registry.list())
            with self._lock:
                self._selected = selected
        return selected

    def choose(self, info: CheckpointInfo) -> None:
        """Make ``info`` the default (after it loaded) and remember it for the next start."""
        with self._lock:
            self._selected = info
        self.remember(info)

    def remember(self, info: CheckpointInfo) -> None:
        self._last_used.remember(info)

    def _default(self, items: list[CheckpointInfo]) -> CheckpointInfo | None:
        remembered = self._last_used.name
        for info in items:
            if info.name == remembered:
                return info
        return next((info for info in items if _plain_txt2img(info)), items[0] if items else None)


def _plain_txt2img(info: CheckpointInfo) -> bool:
    """Whether a checkpoint looks usable for txt2img from its header or config alone (no weights read): a
    normal 4-channel model that parses. Pickles cannot be told without unpickling, so they never qualify."""
    try:
        if info.kind == "diffusers":
            config = json.loads((info.path / "unet" / "config.json").read_text(encoding="utf-8"))
            return isinstance(config, dict) and config.get("in_channels", 4) == 4
        if info.kind == "safetensors":
            return detect.detect(detect.read_safetensors_header(info.path), info.name).variant == "normal"
    except (ModelLoadError, OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        log.info("Not choosing %s as the default checkpoint: %s", info.name, exc)
    return False
