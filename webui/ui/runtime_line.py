"""The muted line under the checkpoint bar saying what runs: device, precision and why, memory profile."""

from __future__ import annotations

import gradio as gr

from webui.services.container import Services
from webui.services.runtime_info import describe_runtime


def text(services: Services) -> str:
    return f"Running on {describe_runtime(services)}"


def build(services: Services, demo: gr.Blocks, checkpoint: gr.Dropdown) -> gr.Markdown:
    """The line, filled again on each page load and whenever the checkpoint changes (a model may bring its own
    attention kernel or compiled UNet)."""
    line = gr.Markdown(text(services), elem_id="runtime_info", elem_classes=["studio-muted"])
    # No progress timer: it would flash over the line on every page load.
    demo.load(lambda: text(services), None, line, api_visibility="private", show_progress="hidden")
    checkpoint.change(lambda: text(services), None, line, api_visibility="private", show_progress="hidden")
    return line
