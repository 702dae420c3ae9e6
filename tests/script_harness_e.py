"""Running built-in scripts before part C's ScriptService lands: ``DirectScriptContext`` is a real ScriptContext
over the services (``generate`` queues a txt2img/img2img job and waits; ``upscale`` uses the Extras service's
resizers), and ``load_builtin`` imports a built-in extension the way the loader does."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from PIL import Image

from webui.extensions.api import Extension, GenerationRequest, ModelInfo, Script, ScriptResult, ScriptRun
from webui.extensions.loader import BUILTIN_DIR, _import
from webui.extensions.manifest import read_manifest
from webui.services.container import Services
from webui.services.extras import UPSCALERS
from webui.types import GenerationResult, Img2ImgRequest


class DirectScriptContext:
    """ScriptContext over the services: every ``generate`` is its own queued job (waited)."""

    def __init__(self, services: Services):
        self.services = services
        self.log = logging.getLogger("tests.script")
        self.progress_calls: list[tuple[str, int, int]] = []
        self.requests: list[GenerationRequest] = []  # what the script asked to generate, in order
        self.results: list[GenerationResult] = []     # what each generate returned
        self.interrupt_after: int | None = None      # report ``interrupted`` once this many generates ran

    def generate(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        if isinstance(request, Img2ImgRequest):
            result = self.services.generation.img2img(request, timeout=120)
        else:
            result = self.services.generation.txt2img(request, timeout=120)
        self.results.append(result)
        return result

    def progress(self, text: str, done: int, total: int) -> None:
        self.progress_calls.append((text, done, total))

    @property
    def interrupted(self) -> bool:
        return self.interrupt_after is not None and len(self.requests) >= self.interrupt_after

    def upscale(self, image: Image.Image, width: int, height: int, upscaler: str) -> Image.Image:
        if upscaler not in UPSCALERS:
            raise ValueError(f"the harness only has the built-in resizers, not {upscaler}")
        return image.resize((width, height), UPSCALERS[upscaler])

    def upscalers(self) -> list[str]:
        return list(UPSCALERS)

    def checkpoints(self) -> list[ModelInfo]:
        return [ModelInfo(title=i.title, name=i.model_name, hash=i.short_hash)
                for i in self.services.registry.list()]


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


def run_script(script: Script, kind: str, request: GenerationRequest, values: dict[str, Any],
               context: DirectScriptContext) -> ScriptResult:
    """The script run as ScriptService will: values validated by its model first."""
    parsed = script.params.model_validate(values) if script.params is not None else None
    return script.run(ScriptRun(kind=kind, request=request, values=parsed, context=context))
