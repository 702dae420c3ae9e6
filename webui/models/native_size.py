"""A checkpoint's native image size (SD 1.x 512, SD 2.x v-prediction 768, SDXL 1024), read without loading it.

Single files: the safetensors header's shapes (``detect``), and for SD 2.x the v-prediction check the loader makes
(A1111's ``.yaml`` beside the file, else ComfyUI's heuristic on one small tensor, read alone). Diffusers folders:
their UNet and VAE config files. Pickles (.ckpt) are not opened for this: A1111's 512.
"""

from __future__ import annotations

import json
from pathlib import Path

from webui.errors import ModelLoadError
from webui.models import detect
from webui.types import CheckpointInfo

FALLBACK = 512  # A1111's default size, when the file cannot tell
V_PREDICTION_SIZE = 768  # SD 2.x 768-v
_VPRED_KEY = f"{detect.UNET}output_blocks.11.1.transformer_blocks.0.norm1.bias"


def native_size(info: CheckpointInfo) -> int:
    try:
        if info.kind == "diffusers":
            return _diffusers_size(info.path)
        if info.kind != "safetensors":
            return FALLBACK
        spec = detect.detect(detect.read_safetensors_header(info.path), info.name)
    except (ModelLoadError, OSError, ValueError, KeyError):
        return FALLBACK  # a file that does not load says why when a job uses it
    if spec.needs_vpred_check and _is_v_prediction(info.path):
        return V_PREDICTION_SIZE
    return spec.default_size


def _diffusers_size(folder: Path) -> int:
    unet = json.loads((folder / "unet" / "config.json").read_text())
    vae = json.loads((folder / "vae" / "config.json").read_text())
    size = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    # Only a size a request may have (a multiple of 8, at least 64); toy configs say other things.
    return size if size >= 64 and size % 8 == 0 else FALLBACK


def _is_v_prediction(path: Path) -> bool:
    """The loader's rule (``loader._is_v_prediction``), reading only the one tensor it needs."""
    yaml = path.with_suffix(".yaml")
    if yaml.is_file():
        text = yaml.read_text(errors="ignore")
        return 'parameterization: "v"' in text or "parameterization: v" in text
    from safetensors import safe_open  # lazy: torch only when an SD 2.x file needs the check

    with safe_open(str(path), framework="pt") as handle:
        if _VPRED_KEY not in handle.keys():
            return False
        return float(handle.get_tensor(_VPRED_KEY).float().std()) > 0.09
