"""Extras: upscaling images with the built-in resizers or upscaler models, as a job on the device queue.

The Extras tab and ``/sdapi/v1/extra-single-image`` / ``extra-batch-images`` are thin over ``UpscalingService``.
One request is one job (kind "extras"), so an upscale shares the device with generation and never runs beside it.
The last upscaler model used stays on the job's device as a resident (kind "upscaler", one at a time).

The steps are A1111's ``postprocessing_upscale``: upscaler 1 to the size (by a factor, or to a box, optionally
cropped to it), upscaler 2 over the same source blended in at its visibility, then the info text
(``Postprocess upscale by: 2, Postprocess upscaler: ...``). Results are saved in ``outputs/extras-images/`` with
that text in the PNG's ``postprocessing`` chunk and the source's ``parameters`` kept, as A1111 writes them.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from PIL import Image, PngImagePlugin

from webui.atomic import atomic_write_bytes
from webui.errors import Cancelled, InvalidRequest, ModelLoadError, ModelNotFound, OutOfMemory
from webui.models.face_restorers import FaceRestorerRegistry
from webui.models.upscalers import UpscalerFile, UpscalerRegistry, load_upscaler
from webui.pipelines.upscale import upscale_to
from webui.image_io import open_image
from webui.services import extras
from webui.services.folders import FolderPolicy, unused_name
from webui.services.jobs import Job, JobContext, JobKind, JobQueue
from webui.services.storage import ImageStore
from webui.types import UpscaleRequest

__all__ = ["ExtrasRequest", "ExtrasResult", "UpscalingService"]

log = logging.getLogger(__name__)

UPSCALER_KIND = "upscaler"  # residents of this kind: one at a time per device
DEFAULT_TILE, DEFAULT_OVERLAP = 192, 8  # A1111's ESRGAN_tile / ESRGAN_tile_overlap defaults
MAX_BATCH = 64  # images in one extras job (A1111 has no limit; each costs memory until the job ends)


@dataclass(frozen=True)
class ExtrasRequest:
    images: tuple[Image.Image, ...]
    spec: UpscaleRequest
    names: tuple[str | None, ...] = ()  # each source's file name (batch): its output is named after it
    upscale_first: bool = False     # A1111: face restoration before or after upscaling
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0
    save: bool = True
    # Batch from a server folder (instead of ``images``): checked by the folder policy, as img2img Batch is.
    input_dir: str | None = None
    output_dir: str | None = None  # None: outputs/extras-images/


@dataclass(frozen=True)
class ExtrasResult:
    images: tuple[Image.Image, ...]  # for a server folder, the first MAX_BATCH only (the rest are on disk)
    infotexts: tuple[str, ...]      # A1111's postprocessing text of each image
    paths: tuple[Path | None, ...]  # where each was saved (None: not saved)
    pngs: tuple[bytes, ...]         # each image as a PNG with its texts: what is saved and what the API returns
    warnings: tuple[str, ...] = field(default_factory=tuple)


class UpscalingService:
    def __init__(self, models_dir: Path, queue: JobQueue, store: ImageStore, *, allow_external_links: bool = False,
                 max_pixels: int = extras.MAX_PIXELS,
                 tile_options: Callable[[], tuple[int, int]] = lambda: (DEFAULT_TILE, DEFAULT_OVERLAP),
                 folders: FolderPolicy | None = None):
        """``tile_options``: the current (ESRGAN_tile, ESRGAN_tile_overlap) options; ``folders``: where batch
        folders may be (None: no batch from folders)."""
        self.registry = UpscalerRegistry(models_dir, allow_external_links=allow_external_links)
        self.registry.refresh()
        self.face_restorers = FaceRestorerRegistry(models_dir, allow_external_links=allow_external_links)
        self.face_restorers.refresh()
        self._queue = queue
        self._store = store
        self._max_pixels = max_pixels
        self._tile_options = tile_options
        self._folders = folders
        self._scales: dict[tuple[str, int, int], int | None] = {}
        self._scales_lock = threading.Lock()
        queue.register(JobKind("extras", self._job))

    # ------------------------------------------------------------------------------------------- listings

    def names(self) -> list[str]:
        """Every upscaler a request may name: the built-in resizers, then the model files."""
        return [*extras.UPSCALERS, *(item.name for item in self.registry.list())]

    def models(self) -> list[UpscalerFile]:
        return self.registry.list()

    def scale_of(self, file: UpscalerFile) -> int | None:
        """The model's native scale (read once per file version by detecting it); None if it does not load."""
        try:
            version = file.version
        except OSError:
            return None
        with self._scales_lock:
            if version in self._scales:
                return self._scales[version]
        try:
            scale: int | None = int(load_upscaler(file.path).scale)
        except (ModelLoadError, OSError) as exc:
            log.warning("Upscaler %s: %s", file.name, exc)
            scale = None
        with self._scales_lock:
            self._scales[version] = scale
        return scale

    def refresh(self) -> list[str]:
        self.registry.refresh()
        self.face_restorers.refresh()
        return self.names()

    def resolve(self, name: str, field_name: str) -> str:
        """The canonical name of an upscaler, or InvalidRequest naming ``field_name`` and the choices."""
        if name in extras.UPSCALERS:
            return name
        try:
            return self.registry.find(name).name
        except ModelNotFound:
            raise InvalidRequest(field_name, f"unknown upscaler '{name}'. Available: "
                                             f"{', '.join(self.names())}") from None

    # ---------------------------------------------------------------------------------------------- jobs

    def check(self, request: ExtrasRequest) -> ExtrasRequest:
        """Validate everything that can be checked before queueing; returns the request with canonical names."""
        if request.input_dir is not None:
            self._folder_files(request)
            return self.check_settings(request)
        if not request.images:
            raise InvalidRequest("image", "no image given")
        if len(request.images) > MAX_BATCH:
            raise InvalidRequest("imageList", f"{len(request.images)} images; at most {MAX_BATCH} per request")
        request = self.check_settings(request)
        spec = request.spec
        if request.names and len(request.names) != len(request.images):
            raise InvalidRequest("imageList", "one name per image")
        for index, image in enumerate(request.images):
            size = extras.target_size(image.size, spec)
            extras.check_size(size, spec.size_field)
            if size[0] * size[1] > self._max_pixels:
                raise InvalidRequest(spec.size_field, f"image {index + 1} would be {size[0]}x{size[1]}, over "
                                                      f"this server's limit of {self._max_pixels / 1e6:.1f} MP")
        return request

    def check_settings(self, request: ExtrasRequest) -> ExtrasRequest:
        """The upscaler names (made canonical) and face restoration; the images are not looked at."""
        spec = request.spec.model_copy(update={"upscaler_1": self.resolve(request.spec.upscaler_1, "upscaler_1"),
                                               "upscaler_2": self.resolve(request.spec.upscaler_2, "upscaler_2")})
        for name, value in (("gfpgan_visibility", request.gfpgan_visibility),
                            ("codeformer_visibility", request.codeformer_visibility)):
            if value > 0:
                raise InvalidRequest(name, self.face_restorers.unavailable_reason())
        return dataclasses.replace(request, spec=spec)

    @property
    def folders_enabled(self) -> bool:
        return self._folders is not None and self._folders.enabled

    def _folder_files(self, request: ExtrasRequest) -> tuple[list[Path], Path | None]:
        if self._folders is None:
            raise InvalidRequest("input_dir", "server folders are not available here")
        files = self._folders.input_files(request.input_dir or "", "input_dir")
        output = (request.output_dir or "").strip()
        return files, self._folders.output_folder(output, "output_dir") if output else None

    def submit(self, request: ExtrasRequest) -> Job:
        return self._queue.submit("extras", self.check(request))

    def run(self, request: ExtrasRequest, timeout: float | None = None) -> ExtrasResult:
        return self.submit(request).wait(timeout)

    def _sources(self, request: ExtrasRequest, files: list[Path],
                 warnings: list[str]) -> Iterator[tuple[Image.Image, str | None]]:
        """The request's images with their names; a folder's are opened one at a time (an unreadable file is
        skipped with a warning naming it)."""
        if request.input_dir is None:
            yield from zip(request.images, request.names or (None,) * len(request.images))
            return
        for path in files:
            try:
                image = open_image(path, path.name, max_pixels=self._max_pixels)
            except (InvalidRequest, OSError) as exc:
                warnings.append(f"Skipped {path.name}: {exc}")
                continue
            yield image, path.name

    def _job(self, ctx: JobContext, request: ExtrasRequest) -> ExtrasResult:
        images, infotexts, paths, pngs, warnings = [], [], [], [], []
        files, target = [], None
        if request.input_dir is not None:  # checked again: the folder may have changed while the job waited
            files, target = self._folder_files(request)
        count = len(files) if request.input_dir is not None else len(request.images)

        def model_resize(image: Image.Image, size: tuple[int, int], name: str) -> Image.Image:
            return self._model_resize(ctx, image, size, name)

        for index, (image, name) in enumerate(self._sources(request, files, warnings)):
            if ctx.interrupted:  # Interrupt keeps what is done, as A1111's
                if not infotexts:
                    raise Cancelled(f"Upscaling {ctx.limit_message or 'interrupted'}.")
                warnings.append(f"Interrupted after {len(infotexts)} of {count} images.")
                break
            ctx.begin_image(index, count, steps=0, text=f"Upscaling image {index + 1} of {count}")
            try:
                result, info = extras.upscale(image, request.spec, model_resize=model_resize)
            except Cancelled:
                if not infotexts:
                    raise
                warnings.append(f"Interrupted after {len(infotexts)} of {count} images.")
                break
            except InvalidRequest as exc:
                if request.input_dir is None:
                    raise
                warnings.append(f"Skipped {name}: {exc}")  # one oversized file does not stop a folder
                continue
            text = extras.info_text(info)
            png = _png(result, text, image)
            path = None
            if request.save or target is not None:
                try:
                    if target is not None:  # a batch folder's output: <input name>.png, never overwriting
                        path = unused_name(target, Path(name or "extras").stem)
                        atomic_write_bytes(path, png)
                    else:
                        path = self._store.save(png, "extras", seed=0, label=Path(name).stem if name else "extras")
                except OSError as exc:  # a full disk costs the file, never the result
                    log.warning("Could not save an extras image: %s", exc)
                    warnings.append(f"Image not saved to the outputs folder ({exc.strerror or type(exc).__name__}); "
                                    "it is only returned here.")
            if len(images) < MAX_BATCH:  # a folder can hold thousands: only the first are kept in memory
                images.append(result)
                pngs.append(png)
            infotexts.append(text)
            paths.append(path)
        return ExtrasResult(tuple(images), tuple(infotexts), tuple(paths), tuple(pngs), tuple(warnings))

    def upscale_with_model(self, ctx: JobContext, image: Image.Image, size: tuple[int, int], name: str) -> Image.Image:
        """``image`` upscaled to exactly ``size`` by the model ``name`` on the job's device, inside another job
        (hires fix): the job's own step progress is left alone."""
        return self._model_resize(ctx, image, size, name, report=False)

    def _model_resize(self, ctx: JobContext, image: Image.Image, size: tuple[int, int], name: str,
                      report: bool = True) -> Image.Image:
        try:
            file = self.registry.find(name)
            version = file.version
        except (ModelNotFound, OSError):
            raise ModelNotFound(f"upscaler '{name}' is gone; refresh the upscaler list.") from None
        model = ctx.device.resident(f"{UPSCALER_KIND}:{file.name}", lambda: load_upscaler(file.path),
                                    kind=UPSCALER_KIND, version=version, place=_place, max_of_kind=1)
        tile, overlap = self._tile_options()

        def on_tile(done: int, total: int) -> None:
            if ctx.interrupted:
                raise Cancelled(f"Upscaling {ctx.limit_message or 'interrupted'}.")
            if report:
                ctx.on_step(done, total)

        try:
            return upscale_to(model, image, size, tile, overlap, on_tile=on_tile)
        except torch.cuda.OutOfMemoryError:
            raise OutOfMemory(f"Out of GPU memory upscaling with {file.name} at {tile}px tiles; lower the option "
                              "ESRGAN_tile.") from None


def _place(descriptor: Any, device: torch.device) -> None:
    # fp32 everywhere: SwinIR has no fp16 support in spandrel, and the CPU has no fast half precision.
    descriptor.to(device)


def _png(image: Image.Image, postprocessing: str, source: Image.Image) -> bytes:
    """A1111's extras PNG: the ``postprocessing`` text, and the source's generation ``parameters`` kept."""
    info = PngImagePlugin.PngInfo()
    parameters = source.info.get("parameters")
    if isinstance(parameters, str):
        info.add_text("parameters", parameters)
    info.add_text("postprocessing", postprocessing)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()

