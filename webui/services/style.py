"""Style transfer service: CycleGAN / pix2pix generators run as jobs on the same GPU queue as diffusion.

A generator is small (a ResNet-9 is 11.4 M parameters, ~45 MB in fp32), so the last one used stays loaded; it is
reloaded when another model is asked for or its file changes on disk.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from torch import nn

from webui.errors import Cancelled, InvalidRequest, ModelNotFound, OutOfMemory
from webui.models.gan import GanModelInfo, GanRegistry, GeneratorSpec, load_generator
from webui.models.registry import HashCache
from webui.pipelines.style_transfer import transfer
from webui.provenance.credentials import ContentCredentials
from webui.provenance.encode import finish_png
from webui.provenance.policy import ProvenancePolicy
from webui.services.jobs import Job, JobContext, JobQueue
from webui.services.storage import ImageStore
from webui.types import text_problem

log = logging.getLogger(__name__)

MAX_PIXELS = 4096 * 4096  # 16 MP: the output accumulators of a tiled run are ~16 bytes per pixel
MIN_TILE, MAX_TILE = 64, 4096  # what a request may say at all; the server's own cap is lower (below)
# A generator's activations grow with the tile's area: a 4096 px tile took ~15 GB, 1024 px about 1 GB.
DEFAULT_MAX_TILE = 1024


@dataclass(frozen=True)
class StyleTransferRequest:
    model: str                 # a title, "kind/name", name, file name or hash, as GanRegistry.find accepts
    image: Image.Image
    tile: int = 512
    overlap: int = 32
    save: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise InvalidRequest("model", "choose a style transfer model")
        if (problem := text_problem(self.model)) is not None:
            raise InvalidRequest("model", problem)
        if not isinstance(self.image, Image.Image):
            raise InvalidRequest("image", "an image is required")
        if min(self.image.size) < 1:
            raise InvalidRequest("image", "the image is empty")
        if not MIN_TILE <= self.tile <= MAX_TILE:
            raise InvalidRequest("tile", f"must be between {MIN_TILE} and {MAX_TILE}, not {self.tile}")
        if not 0 <= self.overlap <= self.tile // 2:
            raise InvalidRequest("overlap", f"must be between 0 and half the tile ({self.tile // 2})")


@dataclass(frozen=True)
class StyleTransferResult:
    image: Image.Image
    model: str            # the model's title, "CycleGAN/horse2zebra [0123456789]"
    infotext: str
    path: Path | None     # where it was saved, None when save=False or saving failed
    warnings: tuple[str, ...] = ()  # e.g. why it was not saved
    png: bytes = b""      # the final file, provenance applied (what is saved and what the API returns)


class StyleTransferService:
    def __init__(self, models_dir: Path, queue: JobQueue, store: ImageStore, hash_cache: HashCache | None = None,
                 *, device: torch.device | str = "cpu", max_pixels: int = MAX_PIXELS,
                 max_tile: int = DEFAULT_MAX_TILE, allow_external_links: bool = False,
                 credentials: ContentCredentials | None = None,
                 provenance: Callable[[], ProvenancePolicy] = ProvenancePolicy):
        self._registry = GanRegistry(models_dir, hash_cache, allow_external_links=allow_external_links)
        self._registry.refresh()
        self._queue = queue
        self._store = store
        self._device = torch.device(device)
        self._max_pixels = max_pixels
        self._credentials = credentials
        self._provenance = provenance
        self._max_tile = max_tile
        self._lock = threading.Lock()
        self._cached: tuple[tuple[str, int, int], nn.Module, GeneratorSpec] | None = None

    @property
    def registry(self) -> GanRegistry:
        return self._registry

    def list_models(self) -> list[GanModelInfo]:
        return self._registry.list()

    def refresh_models(self) -> list[GanModelInfo]:
        return self._registry.refresh()

    def submit(self, request: StyleTransferRequest) -> Job:
        """Validate, then queue; returns at once with the job (its result is a StyleTransferResult)."""
        self._check_size(request.image)
        if request.tile > self._max_tile:
            raise InvalidRequest("tile", f"{request.tile} is over this server's limit of {self._max_tile} pixels")
        try:
            info = self._registry.find(request.model)
        except ModelNotFound as exc:
            raise InvalidRequest("model", str(exc)) from None
        policy = self._provenance()
        return self._queue.submit("style-transfer", lambda ctx: self._work(ctx, request, info, policy),
                                  request=request)

    def run(self, request: StyleTransferRequest, timeout: float | None = None) -> StyleTransferResult:
        return self.submit(request).wait(timeout)

    def unload(self) -> None:
        """Drop the cached generator (e.g. before a large diffusion model needs the memory)."""
        with self._lock:
            self._cached = None

    def _check_size(self, image: Image.Image) -> None:
        width, height = image.size
        if width * height > self._max_pixels:
            raise InvalidRequest("image", f"{width}x{height} is {width * height / 1e6:.1f} MP, over this server's "
                                          f"limit of {self._max_pixels / 1e6:.1f} MP")

    def _work(self, ctx: JobContext, request: StyleTransferRequest, info: GanModelInfo,
              policy: ProvenancePolicy) -> StyleTransferResult:
        generator = self._generator(info)
        ctx.begin_image(0, 1, steps=0, text=f"Style transfer: {info.title}")

        def on_tile(done: int, total: int) -> None:
            if ctx.interrupted:
                raise Cancelled(f"Style transfer {ctx.limit_message or 'interrupted'}.")
            ctx.on_step(done, total)

        try:
            image = transfer(generator, request.image, request.tile, request.overlap, on_tile=on_tile)
        except torch.cuda.OutOfMemoryError:
            raise OutOfMemory(f"Out of GPU memory running {info.key} with {request.tile}px tiles; "
                              f"try a smaller tile size.") from None
        params = {"Style transfer": info.kind, "Model": info.name, "Model hash": info.short_hash,
                  "Size": f"{image.width}x{image.height}"}
        final = finish_png(image, "", "", params, policy, self._credentials,
                           title=f"Stable Studio style transfer, {info.name}")
        path, warnings = None, ()
        if request.save:
            try:
                # A GAN has no seed: the file is named after the model instead (NNNNN-horse2zebra.png).
                path = self._store.save(final.png, "img2img", seed=0, label=info.name)
            except OSError as exc:  # a full disk costs the file, never the result
                log.warning("Could not save a style transfer image: %s", exc)
                warnings = (f"Image not saved to the outputs folder ({exc.strerror or type(exc).__name__}); "
                            "it is only returned here.",)
        return StyleTransferResult(image=final.image, model=info.title, infotext=final.infotext, path=path,
                                   warnings=warnings, png=final.png)

    def _generator(self, info: GanModelInfo) -> nn.Module:
        try:
            stat = info.path.stat()
        except OSError:
            raise ModelNotFound(f"{info.path} is gone; refresh the style transfer models.") from None
        key = (str(info.path), stat.st_mtime_ns, stat.st_size)  # an edited file is reloaded
        with self._lock:
            if self._cached is not None and self._cached[0] == key:
                return self._cached[1]
            self._cached = None  # free the old generator before loading the next
            model, spec = load_generator(info.path)
            model = model.to(self._device)
            self._cached = (key, model, spec)
            return model
