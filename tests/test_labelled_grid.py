"""The public API's labelled grid (webui/extensions/images.py, A1111's draw_grid_annotations): layout, sizes,
wrapping, inactive labels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from webui.extensions.api import GridLabel, labelled_grid

W, H = 96, 64


def cells(count: int) -> list[Image.Image]:
    return [Image.new("RGB", (W, H), (20 * i, 100, 200 - 10 * i)) for i in range(count)]


def test_no_labels_is_a_plain_grid_row_by_row_with_margins():
    images = cells(6)
    grid = labelled_grid(images, [""] * 3, [""] * 2, margin=5)
    assert grid.size == (3 * W + 2 * 5, 2 * H + 5)
    for i, image in enumerate(images):
        x, y = (i % 3) * (W + 5), (i // 3) * (H + 5)
        assert np.array_equal(np.asarray(grid.crop((x, y, x + W, y + H))), np.asarray(image))
    assert np.asarray(grid.crop((W, 0, W + 5, H))).min() == 255  # the margin is white


def test_labels_add_a_top_band_and_a_left_column_of_three_quarters_of_a_cell():
    grid = labelled_grid(cells(4), ["Seed: 1", "Seed: 2"], ["Steps: 2", "Steps: 3"])
    pad_left, pad_top = W * 3 // 4, grid.height - 2 * H
    assert grid.width == pad_left + 2 * W and 0 < pad_top < H
    top_band = np.asarray(grid.crop((pad_left, 0, grid.width, pad_top)).convert("L"))
    left_column = np.asarray(grid.crop((0, pad_top, pad_left, grid.height)).convert("L"))
    assert top_band.min() < 100 and left_column.min() < 100  # black text drawn in both
    only_columns = labelled_grid(cells(2), ["a", "b"], [""])
    assert only_columns.width == 2 * W  # no row labels: no left column


def test_long_labels_wrap_into_more_lines():
    short = labelled_grid(cells(2), ["short", "x"], [""])
    long = labelled_grid(cells(2), ["a label much too long to fit in one cell width", "x"], [""])
    assert long.width == short.width and long.height > short.height


def test_inactive_labels_are_grey_and_active_ones_black():
    active = labelled_grid(cells(1), [GridLabel("red")], [""])
    inactive = labelled_grid(cells(1), [[GridLabel("red", active=False)]], [""])
    band = lambda g: np.asarray(g.crop((0, 0, g.width, g.height - H)).convert("L"))  # noqa: E731
    assert band(active).min() < 60
    assert 100 < band(inactive).min() < 200


@pytest.mark.parametrize("x,y,margin,message", [
    (["a"], ["b", "c"], 0, "needs 2 images"),
    ([], ["b"], 0, "at least one column"),
    (["a"], ["b"], -1, "margin"),
])
def test_wrong_shapes_are_refused(x, y, margin, message):
    with pytest.raises(ValueError, match=message):
        labelled_grid(cells(1), x, y, margin)
