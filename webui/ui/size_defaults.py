"""Width and height follow the checkpoint's native size (SD 1.x 512, SD 2.x-v 768, SDXL 1024), as long as the
user has not set their own: on page load and when the user picks another checkpoint, a size still at the previous
model's default moves to the new one; any other size is left alone."""

from __future__ import annotations

from typing import Any, Callable

import gradio as gr

from webui.parameters import BY_NAME
from webui.ui.generation_form import Widgets

TABLE_DEFAULT = BY_NAME["width"].default  # what the widgets start at, before any checkpoint is known


def follow(width: float, height: float, previous: int, native: int) -> tuple[Any, Any]:
    """New (width, height) for a form at ``width`` x ``height`` when the default moves from ``previous`` to
    ``native``: the native size if the form was still at the previous default, else no change."""
    if native != previous and (int(width), int(height)) == (previous, previous):
        return native, native
    # Nothing to move: send no value, so a size typed while this ran (at page load) is not overwritten.
    return gr.update(), gr.update()


def wire(demo: gr.Blocks, checkpoint: gr.Dropdown, forms: list[Widgets], native: Callable[[str | None], int]) -> None:
    """Keep every form's size at the native size of the checkpoint shown in ``checkpoint`` (see module doc)."""
    applied = gr.State(TABLE_DEFAULT)  # the default the forms were last given, per browser session
    sizes = [component for form in forms for component in (form["width"], form["height"])]

    def update(title: str | None, previous: int, *values: float) -> list[Any]:
        size = native(title or None)
        out: list[Any] = []
        for width, height in zip(values[::2], values[1::2]):
            out.extend(follow(width, height, previous, size))
        return out + [size]

    inputs = [checkpoint, applied, *sizes]
    demo.load(update, inputs, sizes + [applied], api_visibility="private")
    # .input: only the user's own choice; a checkpoint switched by PNG Info's "Send to" keeps the pasted size.
    checkpoint.input(update, inputs, sizes + [applied], api_visibility="private")
