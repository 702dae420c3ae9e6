"""A labelled grid of images, as A1111's ``draw_grid_annotations`` draws it (X/Y/Z plot, Prompt matrix).

Pure Pillow: column labels across the top, row labels down the left, each centred and wrapped to its cell; an
inactive label (Prompt matrix's parts left out) is grey and struck through. Re-exported by the public API
(``webui.extensions.api.labelled_grid``, ``GridLabel``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

from PIL import Image, ImageDraw, ImageFont

ACTIVE = (0, 0, 0)
INACTIVE = (153, 153, 153)  # A1111's color_inactive


@dataclass(frozen=True)
class GridLabel:
    """One line of a grid label; ``active=False`` draws it grey and struck through (A1111's ``GridAnnotation``)."""

    text: str = ""
    active: bool = True


Label = Union[str, GridLabel, Sequence[Union[str, GridLabel]]]


def _lines(label: Label) -> list[GridLabel]:
    items = [label] if isinstance(label, (str, GridLabel)) else list(label)
    return [item if isinstance(item, GridLabel) else GridLabel(str(item)) for item in items]


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
          width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` (a word longer than that keeps a line of its own)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and draw.textlength(candidate, font=font) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, size))


def labelled_grid(images: Sequence[Image.Image], x_labels: Sequence[Label], y_labels: Sequence[Label],
                  margin: int = 0) -> Image.Image:
    """``images`` (row by row: ``len(x_labels)`` across, ``len(y_labels)`` down, each cell the size of the first)
    on a white sheet with the labels, ``margin`` pixels between cells. With every label empty no space is added
    for it, so ``labelled_grid(cells, [""] * cols, [""] * rows)`` is a plain grid."""
    cols, rows = len(x_labels), len(y_labels)
    if cols < 1 or rows < 1:
        raise ValueError("a grid needs at least one column and one row label")
    if len(images) != cols * rows:
        raise ValueError(f"{cols}x{rows} grid needs {cols * rows} images, got {len(images)}")
    if margin < 0:
        raise ValueError("margin must be 0 or more")
    width, height = images[0].size
    font_size = (width + height) // 25  # A1111's: readable at any cell size
    spacing = font_size // 2
    font = _font(font_size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    columns = [_lines(label) for label in x_labels]
    rows_text = [_lines(label) for label in y_labels]
    pad_left = width * 3 // 4 if any(line.text for lines in rows_text for line in lines) else 0

    def laid_out(lines: list[GridLabel], line_width: int) -> list[tuple[str, bool, int]]:
        out = []
        for line in lines:
            for part in _wrap(measure, line.text, font, line_width):
                box = measure.textbbox((0, 0), part or " ", font=font)
                out.append((part, line.active, box[3] - box[1]))
        return out

    hor = [laid_out(lines, width) for lines in columns]
    ver = [laid_out(lines, max(1, pad_left)) for lines in rows_text]

    def block_height(block: list[tuple[str, bool, int]]) -> int:
        return sum(h + spacing for _, _, h in block) - spacing if block else 0

    has_top = any(text for block in hor for text, _, _ in block)
    pad_top = max(block_height(b) for b in hor) + spacing * 2 if has_top else 0
    sheet = Image.new("RGB", (pad_left + cols * width + margin * (cols - 1),
                              pad_top + rows * height + margin * (rows - 1)), "white")
    for i, image in enumerate(images):
        col, row = i % cols, i // cols
        cell = image.convert("RGB")
        if cell.size != (width, height):
            cell = cell.resize((width, height))
        sheet.paste(cell, (pad_left + col * (width + margin), pad_top + row * (height + margin)))
    draw = ImageDraw.Draw(sheet)

    def draw_block(block: list[tuple[str, bool, int]], cx: float, top: float) -> None:
        y = top
        for text, active, h in block:
            color = ACTIVE if active else INACTIVE
            draw.text((cx, y + h / 2), text, font=font, fill=color, anchor="mm")
            if not active and text:
                half = draw.textlength(text, font=font) / 2
                draw.line((cx - half, y + h / 2, cx + half, y + h / 2), fill=color, width=max(1, font_size // 10))
            y += h + spacing

    if has_top:
        for col, block in enumerate(hor):
            draw_block(block, pad_left + col * (width + margin) + width / 2, (pad_top - block_height(block)) / 2)
    if pad_left:
        for row, block in enumerate(ver):
            top = pad_top + row * (height + margin) + (height - block_height(block)) / 2
            draw_block(block, pad_left / 2, top)
    return sheet
