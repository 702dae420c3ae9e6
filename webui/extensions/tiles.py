"""Tiles for tiled img2img (SD upscale): an image cut into overlapping tiles of one size, and put back together
with the overlaps blended by a linear ramp so no seam shows (A1111's ``images.split_grid`` / ``combine_grid``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from PIL import Image


@dataclass
class Tile:
    x: int
    y: int
    image: Image.Image


@dataclass
class TileGrid:
    """Tiles in rows, top to bottom, each row left to right; replace ``tile.image`` and ``combine_tiles``."""

    width: int            # of the whole image
    height: int
    tile_width: int
    tile_height: int
    overlap: int
    rows: list[list[Tile]] = field(default_factory=list)

    @property
    def tiles(self) -> list[Tile]:
        return [tile for row in self.rows for tile in row]


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    # As A1111: as few tiles as cover the length with at least ``overlap`` shared, spread evenly, the last flush.
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1)
    return [min(int(i * step), length - tile) for i in range(count)]


def split_tiles(image: Image.Image, tile_width: int, tile_height: int, overlap: int) -> TileGrid:
    """``image`` cut into ``tile_width`` x ``tile_height`` tiles sharing at least ``overlap`` pixels.

    An image smaller than a tile in one direction is one tile wide (or high) there, padded with black."""
    if tile_width < 1 or tile_height < 1:
        raise ValueError("the tile size must be at least 1x1")
    if not 0 <= overlap < min(tile_width, tile_height):
        raise ValueError(f"the overlap must be from 0 to {min(tile_width, tile_height) - 1} (the tile is "
                         f"{tile_width}x{tile_height})")
    grid = TileGrid(image.width, image.height, tile_width, tile_height, overlap)
    for y in _starts(image.height, tile_height, overlap):
        grid.rows.append([Tile(x, y, image.crop((x, y, x + tile_width, y + tile_height)))
                          for x in _starts(image.width, tile_width, overlap)])
    return grid


def _ramp(width: int, height: int, horizontal: bool) -> Image.Image:
    """An L mask rising from 0 to 255 across ``width`` (or down ``height``): the new tile fades in."""
    length = width if horizontal else height
    values = bytes(int(i * 255 / length) for i in range(length))
    line = Image.frombytes("L", (length, 1), values)
    return line.resize((width, height), Image.Resampling.NEAREST) if horizontal else \
        line.transpose(Image.Transpose.ROTATE_270).resize((width, height), Image.Resampling.NEAREST)


def combine_tiles(grid: TileGrid) -> Image.Image:
    """The tiles pasted back in place; where a tile overlaps the one before it (left, or the row above), its first
    ``overlap`` pixels are blended in over a linear ramp. Tiles are resized to the tile size if a step changed it."""
    out = Image.new("RGB", (grid.width, grid.height))
    for row in grid.rows:
        y = row[0].y
        strip = Image.new("RGB", (grid.width, grid.tile_height))
        for tile in row:
            image = tile.image.convert("RGB")
            if image.size != (grid.tile_width, grid.tile_height):
                image = image.resize((grid.tile_width, grid.tile_height), Image.Resampling.LANCZOS)
            if tile.x == 0 or grid.overlap == 0:
                strip.paste(image, (tile.x, 0))
                continue
            strip.paste(image.crop((0, 0, grid.overlap, grid.tile_height)), (tile.x, 0),
                        mask=_ramp(grid.overlap, grid.tile_height, horizontal=True))
            strip.paste(image.crop((grid.overlap, 0, grid.tile_width, grid.tile_height)), (tile.x + grid.overlap, 0))
        if y == 0 or grid.overlap == 0:
            out.paste(strip, (0, y))
            continue
        out.paste(strip.crop((0, 0, grid.width, grid.overlap)), (0, y),
                  mask=_ramp(grid.width, grid.overlap, horizontal=False))
        out.paste(strip.crop((0, grid.overlap, grid.width, grid.tile_height)), (0, y + grid.overlap))
    return out
