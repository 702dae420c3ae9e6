"""Upscaler models (ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT...): the files in their folders, and loading them safely.

The architecture and its scale are detected by ``spandrel`` (the library ComfyUI and Forge use) from the weights
alone. We read the file ourselves, so that nothing but tensors is ever unpickled: ``.safetensors``, or ``.pth`` /
``.pt`` through ``torch.load(weights_only=True)``; spandrel only gets the state dict. spandrel is imported on first
load (it imports torchvision), never at start-up.

Names are A1111's: the file stem. Folders are scanned with ``folder_scan.ModelFolder`` rules (regular files only,
symbolic links must stay inside their folder unless ``--allow-external-model-links``).
"""

from __future__ import annotations

import logging
import pickle
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from webui.errors import ModelLoadError, ModelNotFound
from webui.models.folder_scan import ModelFolder

log = logging.getLogger(__name__)

# A1111's folders for model upscalers (models/ESRGAN, models/RealESRGAN, ...), in the order they are listed.
UPSCALER_FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT")
UPSCALER_SUFFIXES = (".safetensors", ".pth", ".pt")
MIN_FILE_BYTES = 64  # a safetensors header alone is longer; anything shorter is not a model


@dataclass(frozen=True)
class UpscalerFile:
    name: str     # the file stem: what A1111 lists and what requests name
    folder: str   # "ESRGAN", "RealESRGAN", ... (A1111's upscaler family)
    path: Path

    @property
    def version(self) -> tuple[str, int, int]:
        """Changes when the file is replaced or edited, so a resident copy is reloaded."""
        stat = self.path.stat()
        return str(self.path), stat.st_mtime_ns, stat.st_size


class UpscalerRegistry:
    """The upscaler files under ``models/<folder>/`` (sub-folders included); ``refresh()`` rescans."""

    def __init__(self, models_dir: Path, *, allow_external_links: bool = False,
                 folders: tuple[str, ...] = UPSCALER_FOLDERS):
        self._folders = {name: ModelFolder(models_dir / name, allow_external_links=allow_external_links,
                                           min_size=MIN_FILE_BYTES) for name in folders}
        self._lock = threading.Lock()
        self._items: list[UpscalerFile] = []

    @property
    def directories(self) -> dict[str, Path]:
        return {name: folder.root for name, folder in self._folders.items()}

    def refresh(self) -> list[UpscalerFile]:
        items: list[UpscalerFile] = []
        seen: set[str] = set()
        for name, folder in self._folders.items():
            for path in folder.scan(UPSCALER_SUFFIXES).files:
                if path.stem.lower() in seen:  # requests name a model by its stem: the first one found wins
                    log.warning("Skipped %s: another upscaler is already named %s", path, path.stem)
                    continue
                seen.add(path.stem.lower())
                items.append(UpscalerFile(path.stem, name, path))
        with self._lock:
            self._items = items
        return list(items)

    def list(self) -> list[UpscalerFile]:
        with self._lock:
            return list(self._items)

    def find(self, name: str) -> UpscalerFile:
        """By stem (A1111's name), case-insensitively; also by file name."""
        wanted = name.strip().lower()
        for item in self.list():
            if wanted in (item.name.lower(), item.path.name.lower()):
                return item
        raise ModelNotFound(f"no upscaler model named '{name}'")


# ----------------------------------------------------------------------------------------------------- loading


def read_state_dict(path: Path) -> dict[str, Any]:
    """The file's tensors (possibly wrapped, e.g. Real-ESRGAN's ``params_ema``); a pickle is never executed."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{path.name} could not be read: {_first_line(exc)}") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():  # no object refused: the bytes are not a weights file
            raise ModelLoadError(f"{path.name} could not be read: not a safetensors or PyTorch weights "
                                 "file") from None
        raise ModelLoadError(f"{path.name} refused: not a plain weights file (pickles can run code). Re-save it "
                             f"as a state dict or convert it to .safetensors.{_unsupported_global(exc)}") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ModelLoadError(f"{path.name} could not be read: {_first_line(exc)}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path.name} is not an upscaler state dict (expected a dict of tensors).")
    return data


def load_upscaler(path: Path) -> Any:
    """Read and detect an upscaler: a spandrel ``ImageModelDescriptor`` in eval mode, fp32, on the CPU.

    Its ``scale`` is the model's native factor. A file spandrel does not recognise raises ``ModelLoadError``
    naming it.
    """
    import spandrel  # imports torchvision: only when a model is actually loaded

    state_dict = spandrel.canonicalize_state_dict(read_state_dict(path))
    if not state_dict or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ModelLoadError(f"{path.name} is not an upscaler state dict (expected a dict of tensors).")
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError:
        raise ModelLoadError(f"{path.name}: not an upscaler model this server knows (spandrel recognises "
                             f"ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT and more; this file matches none).") from None
    except (RuntimeError, KeyError, ValueError, IndexError) as exc:  # keys matched, shapes did not
        raise ModelLoadError(f"{path.name}: the weights do not fit the detected architecture: "
                             f"{_first_line(exc)}") from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose not in ("SR", "Restoration"):
        raise ModelLoadError(f"{path.name} is a {descriptor.architecture.name} model "
                             f"({getattr(descriptor, 'purpose', 'inpainting')}), not an upscaler.")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise ModelLoadError(f"{path.name} takes {descriptor.input_channels} and gives "
                             f"{descriptor.output_channels} channels; only RGB upscalers are supported.")
    return descriptor.float().eval()


def _unsupported_global(exc: BaseException) -> str:
    # torch's message suggests weights_only=False, which is exactly what we must never do; keep only the culprit.
    lines = [line.strip() for line in str(exc).splitlines() if "unsupported global" in line.lower()]
    return f" ({lines[0]})" if lines else ""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
