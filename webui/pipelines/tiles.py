"""Overlapping tiles for image-to-image networks (style transfer, upscalers): where the tiles go along an axis,
and the weights that blend their overlaps without seams."""

from __future__ import annotations

import torch


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis: stride ``tile - overlap``, the last tile flush with the far edge."""
    if size <= tile:
        return [0]
    stride = max(1, tile - overlap)
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def blend_ramp(length: int, overlap: int, first: bool, last: bool) -> torch.Tensor:
    """1-D blend weights: linear ramps over the overlap on sides shared with a neighbour; never zero."""
    weights = torch.ones(length)
    ramp_len = min(overlap, length // 2)
    if ramp_len > 0:
        ramp = torch.arange(1, ramp_len + 1, dtype=torch.float32) / (ramp_len + 1)
        if not first:
            weights[:ramp_len] = ramp
        if not last:
            weights[-ramp_len:] = ramp.flip(0)
    return weights
