"""``Context``: the running app as an extension may use it, built per extension over the services."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from webui.extensions.api import Extension, ModelInfo
from webui.extensions.state import ExtensionSettings
from webui.types import GenerationResult, Img2ImgRequest, Txt2ImgRequest

if TYPE_CHECKING:
    from webui.services.container import Services


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
        return [ModelInfo(title=i.title, name=i.model_name, hash=i.short_hash) for i in self._services.registry.list()]
