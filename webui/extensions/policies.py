"""The core's safety policies, re-asserted after extensions load: an extension must not be able to weaken them.

What an extension could change from Python to make pickle files run code when loaded: torch's environment
switches, or ``torch.load`` / ``torch.serialization.load`` / ``safetensors.torch.load_file`` replaced by its own.
``PolicyGuard.capture()`` records them before any extension runs; ``restore()`` puts back what changed and says
what it was; ``probe()`` then loads a hostile pickle through the core's own loading path and checks that it is
still refused (its code never runs).
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_SWITCHES = ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_WEIGHTS_ONLY_LOAD")
_FUNCTIONS = (("torch", "load"), ("torch.serialization", "load"), ("safetensors.torch", "load_file"))


class PolicyError(RuntimeError):
    """The pickle policy is still broken after restoring what was captured: the app must not start like this."""


@dataclass(frozen=True)
class PolicyGuard:
    env: dict[str, str | None]
    functions: dict[tuple[str, str], Any]

    @classmethod
    def capture(cls) -> "PolicyGuard":
        import importlib

        functions = {}
        for module, name in _FUNCTIONS:
            functions[(module, name)] = getattr(importlib.import_module(module), name)
        return cls(env={key: os.environ.get(key) for key in ENV_SWITCHES}, functions=functions)

    def restore(self) -> list[str]:
        """Undo every change since ``capture()``; returns one line per change found (empty: none)."""
        import importlib

        changes = []
        for key, value in self.env.items():
            now = os.environ.get(key)
            if now == value:
                continue
            changes.append(f"set the environment variable {key}={now!r}" if now is not None
                           else f"removed the environment variable {key}")
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for (module, name), original in self.functions.items():
            owner = importlib.import_module(module)
            if getattr(owner, name) is not original:
                changes.append(f"replaced {module}.{name}")
                setattr(owner, name, original)
        return changes

    def probe(self, folder: Path | None = None) -> None:
        """Load a pickle that runs code through the core's checkpoint path; PolicyError if its code ran."""
        from webui.errors import ModelLoadError
        from webui.models.loader import _load_pickle

        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            path, marker = Path(tmp) / "probe.pt", Path(tmp) / "pickle-code-ran"
            path.write_bytes(pickle.dumps(_Hostile(str(marker)), protocol=2))
            try:
                _load_pickle(path)
            except ModelLoadError:
                pass  # refused (weights-only): what must happen
            ran = marker.exists()
        if ran:
            raise PolicyError("a pickle file ran code while being loaded as weights-only: something disabled "
                              "torch's weights-only loading. Start with --safe-mode to find the extension.")


class _Hostile:
    """Unpickling this creates the folder ``marker``: what any malicious pickle does, with a worse function."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))
