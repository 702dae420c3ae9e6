"""Typed requests and results shared by the UI, the REST API and the services.

Requests validate their intrinsic rules here (types, ranges, multiples of 8, finite numbers) so every
entry point rejects the same bad input with the same message; configurable limits are checked by the service.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from webui.errors import InvalidRequest

if TYPE_CHECKING:
    from PIL import Image

LONE_SURROGATE = "contains invalid Unicode (lone surrogate)"


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be used as text, or None.

    JSON's ``\\udcff`` escape decodes to a lone surrogate, which no encoder (UTF-8 responses, PNG text chunks,
    the tokenizer) accepts: refused up front rather than failing as a 500 halfway through a job.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return LONE_SURROGATE
    return None


def safe_label(value: str) -> str:
    """``value`` with anything unencodable escaped, for echoing a user's key or name back in a message."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def find_bad_value(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first string or number anywhere in a decoded JSON value that no response could carry back.

    Returns ``(dotted path, reason)``: lone surrogates in strings (or keys) and NaN/Infinity (Python's JSON
    parser accepts those literals, and Starlette refuses to send them back).
    """
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:  # iterative: a deeply nested body must not hit the recursion limit
        where, item = stack.pop()
        if isinstance(item, str):
            if (problem := text_problem(item)) is not None:
                return where or "body", problem
        elif isinstance(item, float):
            if not math.isfinite(item):
                return where or "body", "must be a finite number"
        elif isinstance(item, dict):
            for key, sub in reversed(list(item.items())):
                name = f"{where}.{key}" if where else str(key)
                if isinstance(key, str) and text_problem(key) is not None:
                    return safe_label(name), f"key {LONE_SURROGATE}"
                stack.append((name, sub))
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{where}.{i}" if where else str(i), sub) for i, sub in reversed(list(enumerate(item))))
    return None


class Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    prompt: str = ""
    negative_prompt: str = ""
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    steps: int = Field(20, ge=1)
    cfg_scale: float = Field(7.0, ge=0.0, le=100.0)
    width: int = Field(512, ge=64)
    height: int = Field(512, ge=64)
    seed: int = Field(-1, ge=-1, le=2**32 - 1)
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    clip_skip: int = Field(1, ge=1, le=12)
    checkpoint: str | None = None  # title or name; None uses the current model
    save_images: bool = True

    @field_validator("prompt", "negative_prompt", "sampler_name", "scheduler", "checkpoint")
    @classmethod
    def _encodable(cls, value: str | None) -> str | None:
        if value is not None and (problem := text_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        # Latents are 1/8 of the image size; other sizes would be silently cropped.
        if value % 8:
            raise ValueError(f"must be a multiple of 8 (got {value})")
        return value

    @classmethod
    def parse(cls, **fields: Any) -> "Txt2ImgRequest":
        """Build a request, turning pydantic's error into an InvalidRequest naming the first bad field."""
        return validated(cls, fields)


class Img2ImgRequest(Txt2ImgRequest):
    """img2img, inpainting (with ``mask``) and InstructPix2Pix (8-channel checkpoints), A1111's fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True)

    init_images: list[Any] = Field(default_factory=list)  # PIL images; empty only in a batch template
    resize_mode: int = Field(0, ge=0, le=3)  # just resize, crop and resize, resize and fill, latent upscale
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    image_cfg_scale: float = Field(1.5, ge=0.0, le=100.0)  # InstructPix2Pix only
    mask: Any = None  # PIL image, white = repaint
    mask_blur: int = Field(4, ge=0, le=64)
    inpainting_fill: int = Field(1, ge=0, le=3)  # fill, original, latent noise, latent nothing
    inpaint_full_res: bool = False  # "only masked": inpaint the masked region at full resolution
    inpaint_full_res_padding: int = Field(32, ge=0, le=256)
    inpainting_mask_invert: bool = False

    @field_validator("init_images")
    @classmethod
    def _images(cls, value: list[Any]) -> list[Any]:
        if not all(hasattr(image, "size") and hasattr(image, "convert") for image in value):
            raise ValueError("must be images")
        return value


class Img2ImgBatchRequest(BaseModel):
    """img2img over every image of a server folder, with the template's settings (paths checked by the service)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    template: Img2ImgRequest
    input_dir: str
    output_dir: str | None = None


def validated(model: type[BaseModel], fields: dict[str, Any]):
    try:
        return model(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(part) for part in first["loc"]) or model.__name__
        raise InvalidRequest(name, first["msg"].removeprefix("Value error, ")) from None


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # only in the history: the process ended while the job ran


@dataclass(frozen=True)
class Progress:
    """A snapshot of one job, cheap to copy to the UI or the progress endpoint."""

    job_id: str
    state: JobState
    step: int = 0
    steps: int = 0
    image_index: int = 0
    image_count: int = 0
    eta_seconds: float | None = None
    textinfo: str = ""
    preview: "Image.Image | None" = None
    preview_id: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)  # named figures: a training job's loss, lr

    @property
    def fraction(self) -> float:
        if self.state is JobState.DONE:
            return 1.0
        if not self.steps or not self.image_count:
            return 0.0
        done = self.image_index * self.steps + self.step
        return min(1.0, done / (self.steps * self.image_count))


@dataclass
class GenerationResult:
    images: list["Image.Image"]
    seeds: list[int]
    infotexts: list[str]
    paths: list[Path] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    pngs: list[bytes] = field(default_factory=list)  # the final files (provenance applied), one per image
    warnings: list[str] = field(default_factory=list)  # e.g. why images were not saved; never in the infotext


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint on disk as the registry sees it (no weights loaded)."""

    path: Path
    name: str            # file or folder name relative to the checkpoints dir, e.g. "sub/v1-5.safetensors"
    model_name: str      # name without extension, as A1111 writes "Model:" in infotext
    kind: str            # "safetensors", "ckpt" or "diffusers"
    short_hash: str | None  # first 10 hex of sha256 (None for diffusers folders)
    sha256: str | None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]" if self.short_hash else self.name
