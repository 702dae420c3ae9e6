"""``Context``: the running app as an extension may use it, built per extension over the services."""

from __future__ import annotations

import io
import logging
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from webui.atomic import atomic_write_bytes
from webui.errors import InvalidRequest
from webui.extensions.api import Extension, ExtensionError, ModelInfo
from webui.extensions.hooks import model_info
from webui.extensions.state import ExtensionSettings
from webui.image_io import open_image
from webui.types import GenerationResult, Img2ImgRequest, JobState, Txt2ImgRequest

if TYPE_CHECKING:
    from PIL import Image

    from webui.services.container import Services

_NUMBERED = re.compile(r"^(\d{5})-")
_SAVE_LOCK = threading.Lock()  # numbering must not race between extensions saving into one folder


class AppContext:
    """One extension's ``ext.context``. ``extension`` is looked up lazily: the context exists before setup()."""

    def __init__(self, name: str, services: "Services", settings: ExtensionSettings,
                 extension: Callable[[], Extension | None]):
        self.name = name
        self.log = logging.getLogger(f"extensions.{name}")
        self._services = services
        self._settings = settings
        self._extension = extension

    @property
    def data_dir(self) -> Path:
        path = self._services.settings.extension_data_dir / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def setting(self, key: str) -> Any:
        values = self._settings.values(self.name)
        if key in values:
            return values[key]
        extension = self._extension()
        for entry in extension.settings if extension is not None else []:
            if entry.key == key:
                return entry.default
        raise KeyError(f"extension {self.name} has no setting '{key}'")

    def txt2img(self, request: Txt2ImgRequest) -> GenerationResult:
        return self._services.generation.submit_txt2img(request).wait()

    def img2img(self, request: Img2ImgRequest) -> GenerationResult:
        return self._services.generation.submit_img2img(request).wait()

    def checkpoints(self) -> list[ModelInfo]:
        """Every checkpoint file (family: None, as it is known only once loaded)."""
        return [model_info(info) for info in self._services.registry.list()]

    def load_image(self, source: Path | bytes) -> "Image.Image":
        limits = self._services.settings.limits
        try:
            return open_image(source if isinstance(source, bytes) else Path(source), "image",
                              max_pixels=limits.max_image_pixels, formats=limits.image_formats)
        except (InvalidRequest, OSError) as exc:
            raise ExtensionError(f"{self.name}: cannot load the image: {exc}") from None

    def save_image(self, image: "Image.Image", infotext: str = "", category: str = "extensions") -> Path:
        from PIL.PngImagePlugin import PngInfo

        safe = re.sub(r"[^a-z0-9_-]+", "-", category.lower()).strip("-") or "extensions"
        folder = self._services.settings.outputs_dir / safe  # never outside outputs/: the name is sanitised
        meta = PngInfo()
        if infotext:
            meta.add_text("parameters", infotext)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=meta)
        folder.mkdir(parents=True, exist_ok=True)
        with _SAVE_LOCK:
            numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
            path = folder / f"{max(numbers, default=-1) + 1:05d}-{self.name}.png"
            atomic_write_bytes(path, buffer.getvalue())
        return path

    def progress(self) -> dict[str, Any]:
        """The running job's progress with ``GET /sdapi/v1/progress``'s fields (no preview image)."""
        job = self._services.queue.current
        if job is None:
            return {"progress": 0.0, "eta_relative": 0.0, "state": {"job_count": 0}, "textinfo": None,
                    "current_task": None}
        p = job.progress
        state = {"skipped": job.skipped.is_set(), "interrupted": job.interrupted.is_set(), "job": job.kind,
                 "job_count": max(1, p.image_count), "job_no": p.image_index, "sampling_step": p.step,
                 "sampling_steps": p.steps}
        return {"progress": p.fraction if p.state is JobState.RUNNING else 0.0, "eta_relative": p.eta_seconds or 0.0,
                "state": state, "textinfo": p.textinfo, "current_task": job.id}
