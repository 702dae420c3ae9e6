"""TAESD, the tiny decoder the live preview may use (``show_progress_type`` "TAESD"), found in ``models/VAE-approx``.

madebyollin's TAESD decodes a Stable Diffusion latent to an image close to the real VAE's at a small fraction of
its cost (about 1.2 M parameters against the VAE decoder's 50 M). Two layouts are read, safetensors only:

- diffusers' AutoencoderTiny folder (``taesd/`` for SD 1.x/2.x, ``taesdxl/`` for SDXL): ``config.json`` plus
  ``diffusion_pytorch_model.safetensors`` (huggingface.co/madebyollin/taesd, /taesdxl);
- the decoder alone, ``taesd_decoder.safetensors`` / ``taesdxl_decoder.safetensors`` (github.com/madebyollin/taesd):
  the keys of its ``nn.Sequential`` (``1.weight``, ``3.conv.0.weight``... index 0 is the weightless clamp) are
  those of diffusers' ``DecoderTiny.layers`` shifted by one.

``.pth`` files are pickles and are never loaded: one found alone is refused with a message naming the
safetensors file to use instead. Each family's decoder is built once and placed on the job's device through its
``DeviceOwner`` (kind "preview-decoder"); when none can be used the preview falls back to Approx cheap, and the
reason is logged once.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from webui.errors import ModelLoadError
from webui.models.device import DeviceOwner, default_placer
from webui.models.folder_scan import ModelFolder

log = logging.getLogger(__name__)

KIND = "preview-decoder"
FOLDER_FILES = ("config.json", "diffusion_pytorch_model.safetensors")
SOURCE = "madebyollin/taesd"


def base_name(family: str) -> str:
    """TAESD's name for a checkpoint family: SDXL (and its refiner) has its own latent space."""
    return "taesdxl" if family == "sdxl" else "taesd"


@dataclass(frozen=True)
class DecoderFiles:
    name: str            # "taesd" or "taesdxl"
    path: Path           # the folder (diffusers layout) or the decoder file
    folder_layout: bool

    def version(self) -> tuple:
        """Changes when a file is replaced, so an edited decoder is loaded again."""
        paths = [self.path / f for f in FOLDER_FILES] if self.folder_layout else [self.path]
        return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths)


class PreviewDecoders:
    """The TAESD decoders of one models folder (``models/VAE-approx``), built in ``dtype``."""

    def __init__(self, folder: Path, dtype: torch.dtype = torch.float32, *, allow_external_links: bool = False):
        self.folder = folder
        self._dtype = dtype
        self._rules = ModelFolder(folder, allow_external_links=allow_external_links)
        self._told: set[str] = set()  # fallback reasons already logged (once each)

    def find(self, family: str) -> DecoderFiles:
        """The files to load for ``family``; ModelLoadError saying what is missing or refused."""
        name = base_name(family)
        folder, single = self.folder / name, self.folder / f"{name}_decoder.safetensors"
        if folder.is_dir() and all((folder / f).exists() for f in FOLDER_FILES):
            self._check(*(folder / f for f in FOLDER_FILES))
            return DecoderFiles(name, folder, True)
        if single.exists():
            self._check(single)
            return DecoderFiles(name, single, False)
        pickles = [p.name for p in (self.folder / f"{name}_decoder.pth", folder / "diffusion_pytorch_model.bin")
                   if p.exists()]
        if pickles:
            raise ModelLoadError(
                f"{self.folder.name}/{pickles[0]} is a pickle file, which is never loaded here; use "
                f"{name}_decoder.safetensors (github.com/{SOURCE}) or the {name}/ folder of diffusers' files "
                f"(huggingface.co/madebyollin/{name}) instead")
        raise ModelLoadError(
            f"no TAESD decoder for this model: put {name}_decoder.safetensors (github.com/{SOURCE}) or the {name}/ "
            f"folder (config.json and diffusion_pytorch_model.safetensors from huggingface.co/madebyollin/{name}) "
            f"in {self.folder.name}/")

    def problem(self, family: str) -> str | None:
        """Why ``family`` has no TAESD preview (None: its files are there)."""
        try:
            self.find(family)
        except ModelLoadError as exc:
            return str(exc)
        return None

    def decoder(self, family: str, owner: DeviceOwner) -> torch.nn.Module | None:
        """The decoder for ``family`` on ``owner``'s device, built on first use; None (logged once per reason)
        when it cannot be used, so the preview falls back to Approx cheap and the job goes on."""
        try:
            files = self.find(family)
            return owner.resident(f"{KIND}:{files.name}", lambda: self._build(files), kind=KIND,
                                  version=(files.version(), str(self._dtype)), place=default_placer(self._dtype),
                                  max_of_kind=2)
        except (ModelLoadError, OSError, RuntimeError, ValueError) as exc:  # a preview never fails a job
            reason = str(exc)
            if reason not in self._told:
                self._told.add(reason)
                log.warning("TAESD live preview unavailable, using Approx cheap: %s", reason)
            return None

    def _check(self, *paths: Path) -> None:
        real_root = os.path.realpath(self.folder)
        for path in paths:
            if (problem := self._rules.check_file(path, real_root)) is not None:
                raise ModelLoadError(f"{self.folder.name}/{path.relative_to(self.folder)}: {problem[0]}")

    @staticmethod
    def _build(files: DecoderFiles) -> torch.nn.Module:
        if files.folder_layout:
            from diffusers import AutoencoderTiny

            decoder = AutoencoderTiny.from_pretrained(str(files.path), use_safetensors=True,
                                                      local_files_only=True).decoder
        else:
            decoder = _decoder_from_file(files.path)
        return decoder.eval().requires_grad_(False)


def _decoder_from_file(path: Path) -> torch.nn.Module:
    """madebyollin's decoder file (or the same weights under diffusers' names) as diffusers' DecoderTiny."""
    from diffusers.models.autoencoders.vae import DecoderTiny
    from safetensors.torch import load_file

    decoder = DecoderTiny(in_channels=4, out_channels=3, num_blocks=(3, 3, 3, 1), block_out_channels=(64,) * 4,
                          upsampling_scaling_factor=2, act_fn="relu", upsample_fn="nearest")
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise ModelLoadError(f"{path.name} is not a readable safetensors file: {exc}") from exc
    converted = {}
    for key, value in state.items():
        key = key.removeprefix("decoder.")
        if not key.startswith("layers."):
            index, _, rest = key.partition(".")
            if not index.isdigit() or int(index) == 0:
                raise ModelLoadError(f"{path.name} is not a TAESD decoder (unexpected weight {key!r})")
            key = f"layers.{int(index) - 1}.{rest}"
        converted[key] = value
    missing, unexpected = decoder.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"{path.name} is not a TAESD decoder: {len(missing)} weights missing "
                             f"({', '.join(missing[:3])}), {len(unexpected)} unexpected")
    return decoder
