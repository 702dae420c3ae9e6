"""Optional safety checker: the CompVis classifier that flags images close to its unsafe concepts.

It runs only when the user has its weights: a diffusers-format folder ``<models_dir>/safety_checker/`` holding
``config.json`` and ``model.safetensors`` (the ``CompVis/stable-diffusion-safety-checker`` release, or the
``safety_checker/`` folder of Stable Diffusion 1.5). Only safetensors are read, offline. The CLIP image
preprocessing it expects (224 px, CLIP mean/std) ships in ``configs/safety_checker/``, taken from Stable Diffusion
1.5's ``feature_extractor/``.

diffusers' own ``forward`` replaces flagged images with black ones; here the checker only gives the verdict, and
the caller blurs flagged images with ``blur_flagged`` and marks them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image, ImageFilter
from safetensors import SafetensorError
from transformers import CLIPImageProcessorPil

from webui.errors import ModelLoadError

SAFETY_CHECKER_FOLDER = "safety_checker"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_DIR = Path(__file__).parent / "configs" / "safety_checker"
_BATCH = 8  # images per forward pass: bounds memory for large batches


def safety_checker_status(models_dir: Path) -> str | None:
    """None when the weights are in place, else a sentence saying what is missing and where to put it."""
    return _missing_files(Path(models_dir) / SAFETY_CHECKER_FOLDER)


def _missing_files(folder: Path) -> str | None:
    missing = [name for name in (CONFIG_FILE, WEIGHTS_FILE) if not (folder / name).is_file()]
    if not missing:
        return None
    message = (f"The safety checker needs the CompVis safety-checker weights: put {' and '.join(missing)} "
               f"(from CompVis/stable-diffusion-safety-checker, or the safety_checker folder of Stable Diffusion 1.5) "
               f"in {folder}.")
    if WEIGHTS_FILE in missing and (folder / "pytorch_model.bin").exists():
        message += " pytorch_model.bin is there, but it is a pickle and is never loaded: use model.safetensors."
    return message


class SafetyChecker:
    """A loaded checker, built on the CPU; the device's owner (webui/models/device.py) places it and unloads it."""

    def __init__(self, model: StableDiffusionSafetyChecker, processor: CLIPImageProcessorPil, dtype: torch.dtype):
        self._model = model
        self._processor = processor
        self._dtype = dtype

    @classmethod
    def from_folder(cls, folder: Path, dtype: torch.dtype) -> "SafetyChecker":
        """Load ``folder`` (config.json + model.safetensors) offline; raise ModelLoadError saying what is wrong."""
        folder = Path(folder)
        problem = _missing_files(folder)
        if problem:
            raise ModelLoadError(problem)
        try:
            model, report = StableDiffusionSafetyChecker.from_pretrained(
                folder, local_files_only=True, use_safetensors=True, output_loading_info=True, dtype=dtype,
                ignore_mismatched_sizes=True)  # reported below, with the names, instead of a bare error
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError) as exc:
            raise ModelLoadError(f"The safety checker in {folder} could not be loaded: {exc}") from exc
        # transformers fills missing or mis-shaped tensors with random values and only warns: a checker that is
        # not the trained one would give arbitrary verdicts, so refuse it.
        wrong = [f"{name} is missing" for name in sorted(report["missing_keys"])]
        wrong += sorted(_shape_problem(entry) for entry in report["mismatched_keys"])
        if wrong:
            shown = "; ".join(wrong[:3]) + ("; ..." if len(wrong) > 3 else "")
            raise ModelLoadError(f"{folder / WEIGHTS_FILE} does not match {folder / CONFIG_FILE} "
                                 f"(not the safety-checker release?): {shown}.")
        processor = CLIPImageProcessorPil.from_pretrained(PREPROCESSOR_DIR, local_files_only=True)
        return cls(model.eval(), processor, dtype)

    @torch.inference_mode()
    def check(self, images: list[Image.Image]) -> list[bool]:
        """One verdict per image, in order: True when the image is flagged."""
        flagged: list[bool] = []
        for start in range(0, len(images), _BATCH):
            batch = [image.convert("RGB") for image in images[start:start + _BATCH]]
            pixels = self._processor(images=batch, return_tensors="pt")["pixel_values"]
            device = next(self._model.parameters()).device  # wherever the owner placed it
            pixels = pixels.to(device, self._dtype)
            # forward_onnx returns the verdict as a tensor and blacks out its second argument in place:
            # give it a throwaway so that only the verdict is used.
            scratch = torch.zeros(len(batch), 1, device=device, dtype=self._dtype)
            _, has_unsafe_concept = self._model.forward_onnx(pixels, scratch)
            flagged.extend(bool(value) for value in has_unsafe_concept.tolist())
        return flagged


def _shape_problem(entry) -> str:
    if isinstance(entry, tuple) and len(entry) == 3:  # (name, shape in the file, shape config.json implies)
        name, found, expected = entry
        return f"{name} has shape {list(found)}, config.json implies {list(expected)}"
    return f"{entry} has the wrong shape"


def blur_flagged(image: Image.Image) -> Image.Image:
    """A strongly blurred copy (radius 1/8 of the longer side): shapes stay recognisable, details do not."""
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGBA" if "A" in image.getbands() or "transparency" in image.info else "RGB")
    return image.filter(ImageFilter.GaussianBlur(radius=max(8, max(image.size) // 8)))
