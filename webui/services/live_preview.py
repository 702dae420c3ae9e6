"""The live preview's settings from A1111's options, read for each job."""

from __future__ import annotations

from typing import Any, Callable

from webui.pipelines.preview import PreviewSettings, TinyDecoders


def preview_settings(option: Callable[[str], Any], tiny_decoders: TinyDecoders | None = None) -> PreviewSettings:
    """``live_previews_enable`` off means no preview at all (A1111); otherwise every
    ``show_progress_every_n_steps`` steps (-1: after each batch, 0: never), drawn by ``show_progress_type``
    (TAESD's decoders from ``tiny_decoders``; without them, Approx cheap), showing ``live_preview_content``."""
    every = option("show_progress_every_n_steps") if option("live_previews_enable") else 0
    return PreviewSettings(every=every, method=option("show_progress_type"), content=option("live_preview_content"),
                           tiny_decoders=tiny_decoders)
