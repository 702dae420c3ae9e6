"""Run an extension's script outside the script runtime: a ScriptContext over real services.

``DirectScriptContext`` implements ``webui.extensions.api.ScriptContext`` with real generation (the service's
``txt2img``/``img2img``: each call is its own queued job, waited for), real upscaling (the Extras service), the
script's progress recorded in ``progress_log``, and an ``interrupt()`` switch a test flips (or sets to trip after
some generations) to see what a script does when the user presses Interrupt.

The real runtime (webui/services/scripts.py) runs a script as ONE job (tests/test_builtin_scripts_runtime.py goes
through it); this harness tests a script's own logic on tiny models, with each generation visible in ``requests``
and ``results``. ``load_builtin`` imports a built-in extension the way the loader does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL import Image

from webui.extensions.api import (IMG2IMG, TXT2IMG, Extension, GenerationRequest, ModelInfo, Script, ScriptResult,
                                  ScriptRun)
from webui.extensions.host import model_values
from webui.extensions.loader import BUILTIN_DIR, _import
from webui.extensions.manifest import read_manifest
from webui.services.container import Services
from webui.services.upscaling import ExtrasRequest
from webui.types import GenerationResult, Img2ImgRequest, UpscaleRequest


class DirectScriptContext:
    """ScriptContext over ``services``: generation and upscaling as ordinary queued jobs."""

    def __init__(self, services: Services, tab: str = TXT2IMG, *, interrupt_after: int | None = None):
        self.services = services
        self.tab = tab
        self.log = logging.getLogger("tests.script_harness")
        self.progress_log: list[tuple[str, int, int]] = []
        self.requests: list[GenerationRequest] = []  # every request the script generated, in order
        self.results: list[GenerationResult] = []     # what each generate returned
        self._interrupted = False
        self.interrupt_after = interrupt_after  # generations after which Interrupt is "pressed"

    def interrupt(self) -> None:
        self._interrupted = True

    @property
    def interrupted(self) -> bool:
        return self._interrupted

    def generate(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        if isinstance(request, Img2ImgRequest):
            result = self.services.generation.img2img(request, timeout=120)
        else:
            result = self.services.generation.txt2img(request, timeout=120)
        self.results.append(result)
        if self.interrupt_after is not None and len(self.requests) >= self.interrupt_after:
            self._interrupted = True
        return result

    def progress(self, text: str, done: int, total: int) -> None:
        self.progress_log.append((text, done, total))

    def upscale(self, image: Image.Image, width: int, height: int, upscaler: str) -> Image.Image:
        assert self.services.upscaling is not None
        spec = UpscaleRequest(to_size=True, width=width, height=height, crop=False, upscaler_1=upscaler)
        result = self.services.upscaling.run(ExtrasRequest(images=(image,), spec=spec, save=False), timeout=120)
        return result.images[0]

    def upscalers(self) -> list[str]:
        assert self.services.upscaling is not None
        return self.services.upscaling.names()

    def checkpoints(self) -> list[ModelInfo]:
        return [ModelInfo(title=i.title, name=i.model_name, hash=i.short_hash)
                for i in self.services.registry.list()]


def run_script(script: Script, request: GenerationRequest, values: dict[str, Any] | None,
               ctx: DirectScriptContext) -> ScriptResult:
    """``script`` run as the runtime would: its values checked by its model (InvalidRequest naming the field)."""
    parsed = model_values(script.params, values or {}, f"script_args.{script.title}") \
        if script.params is not None else None
    kind = IMG2IMG if isinstance(request, Img2ImgRequest) else TXT2IMG
    return script.run(ScriptRun(kind=kind, request=request, values=parsed, context=ctx))


class _NoAppContext:
    """The ``ext.context`` of a built-in loaded for a script test: scripts use ScriptRun.context instead."""

    def __init__(self, name: str):
        self.name = name
        self.data_dir = Path(".")
        self.log = logging.getLogger(f"tests.{name}")

    def __getattr__(self, item: str) -> Any:
        raise AttributeError(f"the script harness's app context has no {item}")


def load_builtin(name: str, context: Any = None) -> Extension:
    """The built-in extension ``webui/builtin_extensions/<name>`` imported and set up as the loader does."""
    folder = BUILTIN_DIR / name
    manifest = read_manifest(folder)
    module = _import(folder, manifest.name, manifest.entry)
    ext = Extension(manifest.name, context or _NoAppContext(manifest.name))
    module.setup(ext)
    return ext


def script_of(ext: Extension, title: str) -> Script:
    return next(s for s in ext.scripts if s.title == title)
