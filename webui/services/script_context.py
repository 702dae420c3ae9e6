"""What a running script may use (the public ``ScriptContext``), over the one job it runs in."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from webui.errors import InvalidRequest
from webui.extensions.api import ExtensionError, ModelInfo
from webui.services.extras import UPSCALERS as RESIZERS
from webui.services.jobs import JobContext
from webui.types import GenerationResult, Txt2ImgRequest

if TYPE_CHECKING:
    from PIL import Image

    from webui.services.generation import GenerationService
    from webui.services.upscaling import UpscalingService


class _StepOfScript:
    """The job's context as one ``generate`` call sees it: its batches count as part of the script's progress
    (batch ``i`` of a run during script step ``done`` of ``total``), so the job's fraction grows across runs
    instead of restarting at 0 for each. Everything else is the job's own context."""

    def __init__(self, ctx: JobContext, done: int, total: int, text: str):
        self._ctx, self._done, self._total, self._text = ctx, done, total, text

    def begin_image(self, index: int, count: int, steps: int, text: str = "") -> None:
        if self._total <= 0:
            self._ctx.begin_image(index, count, steps, text)
            return
        label = f"{self._text} · {text}" if self._text and text else (self._text or text)
        done = min(self._done, self._total - 1)
        self._ctx.begin_image(done * count + index, self._total * count, steps, label)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)


class JobScriptContext:
    """``ScriptContext`` for one script job: ``generate`` runs inside this job (no queueing), ``interrupted`` is
    the job's Interrupt, ``progress`` the job's progress line."""

    def __init__(self, ctx: JobContext, generation: "GenerationService", upscaling: "UpscalingService | None",
                 checkpoints: Callable[[], list[ModelInfo]], log: logging.Logger):
        self._ctx = ctx
        self._generation = generation
        self._upscaling = upscaling
        self._checkpoints = checkpoints
        self.log = log
        self._text, self._done, self._total = "", 0, 0
        self.runs = 0  # generate() calls, for the job's own record
        # What generate() made, by image object: a script that returns those images returns them as they were
        # finished and saved (no second watermark, the saved file beside each).
        self.made: dict[int, tuple[bytes, Path | None]] = {}
        self.last: GenerationResult | None = None

    def generate(self, request: Txt2ImgRequest) -> GenerationResult:
        if not isinstance(request, Txt2ImgRequest):
            raise ExtensionError(f"generate() takes a Txt2ImgRequest or Img2ImgRequest, not {type(request).__name__}")
        self.runs += 1
        try:
            result = self._generation.run_in_job(_StepOfScript(self._ctx, self._done, self._total, self._text),
                                                 request)
        except InvalidRequest as exc:
            # The script built a request the server refuses: say which field, as the script's own error.
            raise ExtensionError(f"a generated request was refused: {exc}") from None
        paths: list[Path | None] = (list(result.paths) if len(result.paths) == len(result.images)
                                    else [None] * len(result.images))
        for image, png, path in zip(result.images, result.pngs, paths):
            self.made[id(image)] = (png, path)
        self.last = result
        return result

    def progress(self, text: str, done: int, total: int) -> None:
        self._text, self._done, self._total = str(text), max(0, int(done)), max(0, int(total))
        self._ctx.set_stage(self._text)
        if self._total:
            # Shown until the next generate() starts its batches: the fraction of the script's steps done.
            self._ctx.begin_image(min(self._done, self._total), self._total, 1, self._text)
        else:
            self._ctx.report(self._text)

    @property
    def interrupted(self) -> bool:
        return self._ctx.interrupted

    def upscale(self, image: "Image.Image", width: int, height: int, upscaler: str) -> "Image.Image":
        width, height = int(width), int(height)
        if width < 1 or height < 1:
            raise ExtensionError(f"upscale: the size {width}x{height} is not valid")
        if upscaler in RESIZERS:
            return image.resize((width, height), RESIZERS[upscaler])
        if self._upscaling is None:
            raise ExtensionError(f"upscale: no upscaler named '{upscaler}' on this server")
        try:
            name = self._upscaling.resolve(upscaler, "upscaler")
        except InvalidRequest as exc:
            raise ExtensionError(f"upscale: {exc}") from None
        return self._upscaling.upscale_with_model(self._ctx, image, (width, height), name)

    def upscalers(self) -> list[str]:
        if self._upscaling is None:
            return list(RESIZERS)
        return self._upscaling.names()

    def checkpoints(self) -> list[ModelInfo]:
        return self._checkpoints()
