"""Upscaling with a model (ESRGAN, SwinIR...) as A1111 does it: tiled, then resized to the requested size.

``run_model`` runs the model once over the image in overlapping tiles (A1111's ``ESRGAN_tile`` /
``ESRGAN_tile_overlap``, in input pixels; tile 0 runs the whole image at once) and blends the seams with linear
ramps, so memory is bounded by the tile, not the image. ``upscale_to`` is A1111's ``Upscaler.upscale``: run the
model until the image is at least the target size (at most three times, e.g. a 2x model for a 4x request), then
Lanczos-resize to exactly the target.

The model is placed by its caller (through ``DeviceOwner.resident``); this module never moves weights.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from webui.pipelines.tiles import blend_ramp, tile_starts

TileCallback = Callable[[int, int], None]  # (tiles done, tiles total); may raise to abort
MAX_MODEL_PASSES = 3  # A1111's limit on repeated model passes


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL -> [1, 3, H, W] float32 in [0, 1] (spandrel's convention)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_image(y: torch.Tensor) -> Image.Image:
    array = (y[0].float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)



def run_model(model: Any, image: Image.Image, tile: int = 192, overlap: int = 8, *,
              on_tile: TileCallback | None = None) -> Image.Image:
    """One pass of ``model`` (a spandrel descriptor: [0, 1] in and out, ``scale`` times larger) over ``image``."""
    param = next(model.model.parameters(), torch.empty(0))
    device, dtype = param.device, param.dtype
    x = to_tensor(image)
    _, _, height, width = x.shape
    scale = int(model.scale)
    if tile <= 0:
        tile = max(height, width)
    tile = max(tile, 16)  # below a few pixels the seams dominate; SwinIR needs 16
    overlap = max(0, min(overlap, tile // 2))
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    total = len(ys) * len(xs)
    out = torch.zeros(1, 3, height * scale, width * scale)
    weight_sum = torch.zeros(1, 1, height * scale, width * scale)
    if on_tile:
        on_tile(0, total)
    with torch.inference_mode():
        for index, (top, left) in enumerate((y0, x0) for y0 in ys for x0 in xs):
            th, tw = min(tile, height), min(tile, width)
            piece = model(x[:, :, top:top + th, left:left + tw].to(device=device, dtype=dtype)).float().cpu()
            # Ramps span the overlap in output pixels, so neighbouring tiles cross-fade over the shared band.
            weight = (blend_ramp(th * scale, overlap * scale, top == 0, top + th >= height)[:, None]
                      * blend_ramp(tw * scale, overlap * scale, left == 0, left + tw >= width)[None, :])
            out[:, :, top * scale:(top + th) * scale, left * scale:(left + tw) * scale] += piece * weight
            weight_sum[:, :, top * scale:(top + th) * scale, left * scale:(left + tw) * scale] += weight
            if on_tile:
                on_tile(index + 1, total)
    return to_image(out / weight_sum)


def upscale_to(model: Any, image: Image.Image, size: tuple[int, int], tile: int = 192, overlap: int = 8, *,
               on_tile: TileCallback | None = None) -> Image.Image:
    """A1111's ``Upscaler.upscale``: model passes until ``size`` is reached (at most three), then Lanczos to
    exactly ``size``. Alpha, which the models do not take, is resized with Lanczos and put back."""
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    result = image.convert("RGB")
    for _ in range(MAX_MODEL_PASSES):
        if result.width >= size[0] and result.height >= size[1]:
            break
        before = result.size
        result = run_model(model, result, tile, overlap, on_tile=on_tile)
        if result.size == before:  # a 1x model: more passes would not grow it
            break
    if result.size != size:
        result = result.resize(size, resample=Image.Resampling.LANCZOS)
    if alpha is not None:
        result.putalpha(alpha.resize(size, resample=Image.Resampling.LANCZOS))
    return result
