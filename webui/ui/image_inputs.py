"""Image input widgets that hand the handler the uploaded file itself, never a Pillow image Gradio decoded.

Gradio's own ``gr.Image`` / ``gr.ImageEditor`` preprocessing calls ``PIL.Image.open`` on the upload with every
Pillow format and converts it (an EPS would run Ghostscript) before our code runs, with no pixel budget. These
subclasses skip that: the handler gets a file path (or the bytes of a ``data:`` URL or an editor blob) and opens
it with ``webui.image_io.open_image``, which allow-lists formats and checks the size from the header.

``is_template`` is Gradio's mechanism for a Python subclass that reuses the parent's frontend component.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import gradio as gr
from gradio.data_classes import FileData

ImageSource = str | bytes  # what the handlers receive: an uploaded file's path, or raw bytes


def _data_url_bytes(url: str) -> bytes:
    try:
        return base64.b64decode(url.partition(",")[2], validate=True)
    except (binascii.Error, ValueError):
        raise gr.Error("image: is not valid base64") from None


class UploadedImage(gr.Image):
    """``gr.Image`` whose handler value is the upload's path (or bytes); nothing is decoded by Gradio."""

    is_template = True

    def preprocess(self, payload: Any) -> ImageSource | None:  # type: ignore[override]
        if payload is None:
            return None
        if payload.url and payload.url.startswith("data:"):
            return _data_url_bytes(payload.url)
        return payload.path


class UploadedImageEditor(gr.ImageEditor):
    """``gr.ImageEditor`` whose value holds paths (or bytes) for background, layers and composite."""

    is_template = True

    def convert_and_format_image(self, file: FileData | bytes | None,  # type: ignore[override]
                                 flatten_on_white: bool = False) -> ImageSource | None:
        if file is None:
            return None
        if isinstance(file, FileData):
            return file.path
        return bytes(file)  # the editor's blob upload
