"""A1111's ``image_grid``: a batch's images side by side, rows from the ``n_rows`` option."""

from __future__ import annotations

import math

from PIL import Image


def grid_rows(count: int, batch_size: int, n_rows: int = -1, prevent_empty_spots: bool = False) -> int:
    """Rows as A1111 picks them: ``n_rows`` > 0 as given, 0 = the batch size, -1 = about a square."""
    if n_rows > 0:
        rows = n_rows
    elif n_rows == 0:
        rows = batch_size
    elif prevent_empty_spots:
        rows = max(1, math.floor(math.sqrt(count)))
        while count % rows != 0:
            rows -= 1
    else:
        rows = max(1, round(math.sqrt(count)))
    return max(1, min(rows, count))


def image_grid(images: list[Image.Image], batch_size: int = 1, n_rows: int = -1,
               prevent_empty_spots: bool = False) -> Image.Image:
    """The images laid out left to right, top to bottom, in cells of the first image's size (black gaps)."""
    if not images:
        raise ValueError("a grid needs at least one image")
    rows = grid_rows(len(images), batch_size, n_rows, prevent_empty_spots)
    cols = math.ceil(len(images) / rows)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height), color="black")
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB"), box=(i % cols * width, i // cols * height))
    return grid
