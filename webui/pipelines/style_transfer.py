"""GAN style transfer (CycleGAN / pix2pix): one forward pass of a generator, no diffusion.

The release trains on 256x256 crops normalised to [-1, 1] and its generators only accept sizes divisible by 4
(ResNet) or 2**num_downs (U-Net). Here any size works: the input is reflect-padded to a valid size and the output
cropped back, so the result always has the input's resolution. Large images run as overlapping tiles blended
linearly, so memory is bounded by the tile size rather than the image size.

InstanceNorm networks (CycleGAN) normalise each tile with its own statistics, so tiled and untiled results differ
slightly; BatchNorm networks in eval mode are translation-equivariant away from the tile borders.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from webui.pipelines.tiles import blend_ramp, tile_starts

TileCallback = Callable[[int, int], None]  # (tiles done, tiles total); may raise to abort


def transfer(generator: nn.Module, image: Image.Image, tile: int = 512, overlap: int = 32, *,
             device: torch.device | str | None = None, dtype: torch.dtype | None = None,
             on_tile: TileCallback | None = None) -> Image.Image:
    """Translate ``image`` with ``generator``; returns an image of the input's size.

    ``device``/``dtype`` default to the generator's own (the caller places the generator; we never move it).
    """
    param = next(generator.parameters(), torch.empty(0))
    device, dtype = torch.device(device or param.device), dtype or param.dtype
    in_channels = getattr(generator, "input_nc", 3)
    multiple = getattr(generator, "size_multiple", 1)
    min_size = getattr(generator, "min_size", multiple)
    x = to_tensor(image, in_channels)
    with torch.inference_mode():
        y = _run_tiled(generator, x, _tile_size(tile, multiple, min_size), overlap, (multiple, min_size), device, dtype,
                       on_tile)
    return to_image(y)


def to_tensor(image: Image.Image, channels: int) -> torch.Tensor:
    """PIL -> [1, C, H, W] float32 in [-1, 1] (the release's Normalize((0.5,)*C, (0.5,)*C))."""
    array = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    # contiguous: a permuted HWC array is channels-last in memory, which runs these nets ~4x slower on CPU
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous() / 127.5 - 1.0


def to_image(y: torch.Tensor) -> Image.Image:
    array = ((y[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)  # uint8 2-D -> "L", HxWx3 -> "RGB"


def _tile_size(tile: int, multiple: int, min_size: int) -> int:
    # Tiles that are already a valid size need no padding; never smaller than one valid block.
    return max(min_size, multiple, tile // multiple * multiple)



def _run_tiled(generator: nn.Module, x: torch.Tensor, tile: int, overlap: int, valid: tuple[int, int],
               device: torch.device, dtype: torch.dtype, on_tile: TileCallback | None) -> torch.Tensor:
    _, _, height, width = x.shape
    ys, xs = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    total = len(ys) * len(xs)
    if on_tile:
        on_tile(0, total)
    if total == 1:
        out = _forward_padded(generator, x, valid, device, dtype)
        if on_tile:
            on_tile(1, 1)
        return out
    out: torch.Tensor | None = None
    weight_sum = torch.zeros(1, 1, height, width)
    for index, (top, left) in enumerate((y0, x0) for y0 in ys for x0 in xs):
        th, tw = min(tile, height), min(tile, width)
        piece = _forward_padded(generator, x[:, :, top:top + th, left:left + tw], valid, device, dtype)
        if out is None:
            out = torch.zeros(1, piece.shape[1], height, width)
        weight = (blend_ramp(th, overlap, top == 0, top + th >= height)[:, None]
                  * blend_ramp(tw, overlap, left == 0, left + tw >= width)[None, :])
        out[:, :, top:top + th, left:left + tw] += piece * weight
        weight_sum[:, :, top:top + th, left:left + tw] += weight
        if on_tile:
            on_tile(index + 1, total)
    assert out is not None
    return out / weight_sum


def valid_size(size: int, multiple: int, min_size: int) -> int:
    return max(min_size, -(-size // multiple) * multiple)


def _forward_padded(generator: nn.Module, x: torch.Tensor, valid: tuple[int, int], device: torch.device,
                    dtype: torch.dtype) -> torch.Tensor:
    """Pad to a valid size (split between both sides), run, crop back; result float32 on the CPU."""
    _, _, height, width = x.shape
    pad_h, pad_w = valid_size(height, *valid) - height, valid_size(width, *valid) - width
    top, left = pad_h // 2, pad_w // 2
    padded = pad_reflect(x, left, pad_w - left, top, pad_h - top)
    y = generator(padded.to(device=device, dtype=dtype))
    return y[:, :, top:top + height, left:left + width].float().cpu()


def pad_reflect(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Reflect padding of any width: torch's reflect needs pad < size, so mirror repeatedly (like numpy).

    A 1-pixel-wide side cannot be mirrored and is replicated instead.
    """
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        if min(h, w) == 1:
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        step = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = left - step[0], right - step[1], top - step[2], bottom - step[3]
    return x
