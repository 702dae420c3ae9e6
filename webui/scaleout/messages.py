"""What travels between the front and a replica: plain, picklable data (no Ray import).

Images travel as PNG bytes (lossless, and far smaller than pickled pixel buffers); the requests themselves are the
same typed objects the single-process app queues.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from webui.types import GenerationResult, Txt2ImgRequest

# The front's options a replica's generation reads per job (its own config.json would otherwise decide them).
RELAYED_OPTIONS = ("sd_vae", "live_previews_enable", "show_progress_every_n_steps", "show_progress_type",
                   "live_preview_content", "ESRGAN_tile", "ESRGAN_tile_overlap")


@dataclass(frozen=True)
class CheckpointRef:
    """A checkpoint as the front knows it: a replica must run exactly this file (same sha256)."""

    name: str      # relative to models/Stable-diffusion, e.g. "sub/v1-5.safetensors"
    title: str     # "sub/v1-5.safetensors [6ce0161689]"
    sha256: str
    size: int


@dataclass(frozen=True)
class RemoteJob:
    """One generation the front sends to a replica. ``kind``: "txt2img" or "img2img"; ``request`` names its
    checkpoints by title (``checkpoints`` says which files those are); ``avoid``: replica ids that already failed
    to load a checkpoint of this job (such a replica declines it, so Serve routes it again)."""

    job_id: str
    kind: str
    request: Txt2ImgRequest
    checkpoints: tuple[CheckpointRef, ...]
    safety_check: bool
    options: dict[str, Any]
    avoid: tuple[str, ...] = ()


@dataclass(frozen=True)
class Signals:
    """What the front tells a running replica job: Interrupt, Skip (a count: each press skips one image) and
    whether anyone watches it (live previews are drawn only then)."""

    interrupt: bool = False
    skips: int = 0
    watched: bool = False


@dataclass(frozen=True)
class ProgressEvent:
    changes: dict[str, Any]          # Progress fields (step, steps, image_index, textinfo, ...) without preview
    preview_png: bytes | None = None  # a new live preview, when one was drawn
    replica_id: str = ""


@dataclass(frozen=True)
class RemoteFailure:
    """A job that failed on a replica. ``reason``: "invalid" (InvalidRequest: ``field`` names it), "load" (the
    replica could not get or load a checkpoint: the job may run elsewhere), "declined" (listed in ``avoid``),
    "cancelled", "oom" or "error"."""

    reason: str
    message: str
    field: str | None = None
    replica_id: str = ""


@dataclass
class RemoteResult:
    """A replica's images (unmarked: the front applies provenance and saves) and what the job ran with."""

    pngs: list[bytes]
    infotexts: list[str]
    seeds: list[int]
    subseeds: list[int]
    request: Txt2ImgRequest
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    base_seed: int = -1
    base_subseed: int = -1
    started: float = 0.0
    model_name: str | None = None
    model_hash: str | None = None
    model_variant: str | None = None
    vae_name: str | None = None
    vae_hash: str | None = None
    replica_id: str = ""

    @classmethod
    def pack(cls, result: GenerationResult, replica_id: str) -> "RemoteResult":
        return cls(pngs=[png_bytes(image) for image in result.images], infotexts=list(result.infotexts),
                   seeds=list(result.seeds), subseeds=list(result.subseeds), request=result.request,
                   warnings=list(result.warnings), interrupted=result.interrupted, base_seed=result.base_seed,
                   base_subseed=result.base_subseed, started=result.started, model_name=result.model_name,
                   model_hash=result.model_hash, model_variant=result.model_variant, vae_name=result.vae_name,
                   vae_hash=result.vae_hash, replica_id=replica_id)

    def unpack(self) -> GenerationResult:
        """A GenerationResult with the replica's images (no files, no PNGs yet: the front finishes them)."""
        return GenerationResult(images=[open_png(data) for data in self.pngs], seeds=list(self.seeds),
                                infotexts=list(self.infotexts), warnings=list(self.warnings),
                                interrupted=self.interrupted, request=self.request, base_seed=self.base_seed,
                                started=self.started, model_name=self.model_name, model_hash=self.model_hash,
                                model_variant=self.model_variant, subseeds=list(self.subseeds),
                                base_subseed=self.base_subseed, vae_name=self.vae_name, vae_hash=self.vae_hash,
                                replica=self.replica_id)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast: it is decoded again at once on the front
    return buffer.getvalue()


def open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
