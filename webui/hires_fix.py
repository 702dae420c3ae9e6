"""Hires fix's choices and sizes, as A1111 1.10 defines them (processing.py, shared.latent_upscale_modes).

A leaf module (no torch): the parameter table, the request validation and the pipeline share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

__all__ = ["LATENT_MODES", "PIXEL_UPSCALERS", "SAME_CHECKPOINT", "SAME_SAMPLER", "SAME_SCHEDULER", "UPSCALERS",
           "HiresSize", "hires_size"]

LATENT_FACTOR = 8  # pixels per latent cell (A1111's opt_f)

# name -> (torch.nn.functional.interpolate mode, antialias), A1111's shared.latent_upscale_modes
LATENT_MODES = MappingProxyType({
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
})
# A1111's plain pixel upscalers (decode, resize, encode again); "None" is its "just resize" (Lanczos).
PIXEL_UPSCALERS = ("None", "Lanczos", "Nearest")
UPSCALERS = (*LATENT_MODES, *PIXEL_UPSCALERS)

# A1111's UI values meaning "as the first pass" (its API sends null or "" for the same).
SAME_SAMPLER = "Use same sampler"
SAME_SCHEDULER = "Use same scheduler"
SAME_CHECKPOINT = "Use same checkpoint"


@dataclass(frozen=True)
class HiresSize:
    """A1111's ``calculate_target_resolution``: the size upscaled to, and the pixels beyond the requested box
    (cropped, centred, in whole latent cells; only when both resize sides are given)."""

    upscale_x: int
    upscale_y: int
    crop_x: int = 0
    crop_y: int = 0

    def truncate(self, factor: int = LATENT_FACTOR) -> tuple[int, int]:
        """Latent cells to crop (y, x); ``factor``: pixels per latent cell (8 for every real checkpoint)."""
        return self.crop_y // factor, self.crop_x // factor

    def latent(self, factor: int = LATENT_FACTOR) -> tuple[int, int]:
        """(height, width) of the second pass's latents, after the crop."""
        ty, tx = self.truncate(factor)
        return self.upscale_y // factor - ty, self.upscale_x // factor - tx

    def final(self, factor: int = LATENT_FACTOR) -> tuple[int, int]:
        """(width, height) of the finished image."""
        height, width = self.latent(factor)
        return width * factor, height * factor


def hires_size(width: int, height: int, scale: float, resize_x: int, resize_y: int) -> HiresSize:
    """Upscale by ``scale``, or to ``resize_x`` x ``resize_y`` (0 = keep the aspect ratio; both given: cover the
    box and crop the overflow, centred), as A1111 does."""
    if resize_x == 0 and resize_y == 0:
        return HiresSize(int(width * scale), int(height * scale))
    if resize_y == 0:
        return HiresSize(resize_x, resize_x * height // width)
    if resize_x == 0:
        return HiresSize(resize_y * width // height, resize_y)
    if width / height < resize_x / resize_y:
        up_x, up_y = resize_x, resize_x * height // width
    else:
        up_x, up_y = resize_y * width // height, resize_y
    return HiresSize(up_x, up_y, up_x - resize_x, up_y - resize_y)
