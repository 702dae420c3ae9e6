"""Typed requests and results shared by the UI, the REST API and the services.

Requests validate their intrinsic rules here (types, ranges, multiples of 8, finite numbers) so every
entry point rejects the same bad input with the same message; configurable limits are checked by the service.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from webui.errors import InvalidRequest
from webui.hires_fix import SAME_CHECKPOINT, SAME_SAMPLER, SAME_SCHEDULER, UPSCALERS, HiresSize, hires_size
from webui.parameters import BY_NAME as P
from webui.parameters import NO_REFINER, PARAMS, RANDN_SOURCES
from webui.samplers import Sampling

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
    """txt2img's fields; defaults and bounds come from ``webui.parameters`` (each declared once there)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    prompt: str = P["prompt"].field()
    negative_prompt: str = P["negative_prompt"].field()
    sampler_name: str = P["sampler_name"].field()  # canonical after validation ("DPM++ 2M Karras" is split)
    scheduler: str = P["scheduler"].field()
    steps: int = P["steps"].field()
    cfg_scale: float = P["cfg_scale"].field()
    width: int = P["width"].field()
    height: int = P["height"].field()
    seed: int = P["seed"].field()
    batch_size: int = P["batch_size"].field()
    n_iter: int = P["n_iter"].field()
    clip_skip: int = P["clip_skip"].field()
    checkpoint: str | None = P["checkpoint"].field()  # title or name; None uses the current model
    tiling: bool = P["tiling"].field()
    save_images: bool = True
    # Extensions' own values, keyed by extension name ({"name": {field: value}}); each extension's typed model
    # checks its entry at the service boundary (webui/extensions/host.py). Never positional.
    extensions: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Noise (webui/pipelines/noise.py): variation seed, seed resize, A1111's RNG source and eta noise seed delta.
    subseed: int = P["subseed"].field()
    subseed_strength: float = P["subseed_strength"].field()
    seed_resize_from_w: int = P["seed_resize_from_w"].field()
    seed_resize_from_h: int = P["seed_resize_from_h"].field()
    randn_source: str = P["randn_source"].field()
    eta_noise_seed_delta: int = P["eta_noise_seed_delta"].field()
    eta: float | None = P["eta"].field()
    sd_vae: str | None = P["sd_vae"].field()  # Automatic, None or a models/VAE file; None: the sd_vae option
    # The refiner (A1111 1.6+): a checkpoint's title, name or hash, and the fraction of sampling done on the base.
    refiner_checkpoint: str | None = P["refiner_checkpoint"].field()
    refiner_switch_at: float = P["refiner_switch_at"].field()
    # A1111's "Sampler parameters" options (webui/pipelines/sampler_options.py); txt2img's k-samplers take them.
    eta_ancestral: float = P["eta_ancestral"].field()
    s_churn: float = P["s_churn"].field()
    s_tmin: float = P["s_tmin"].field()
    s_tmax: float = P["s_tmax"].field()
    s_noise: float = P["s_noise"].field()
    sigma_min: float = P["sigma_min"].field()
    sigma_max: float = P["sigma_max"].field()
    rho: float = P["rho"].field()
    beta_dist_alpha: float = P["beta_dist_alpha"].field()
    beta_dist_beta: float = P["beta_dist_beta"].field()
    always_discard_next_to_last_sigma: bool = P["always_discard_next_to_last_sigma"].field()
    sgm_noise_multiplier: bool = P["sgm_noise_multiplier"].field()
    # Hires fix (webui/pipelines/hires.py): a second, img2img pass at a larger size. txt2img only.
    enable_hr: bool = P["enable_hr"].field()
    denoising_strength: float = P["denoising_strength"].field()
    hr_upscaler: str = P["hr_upscaler"].field()
    hr_second_pass_steps: int = P["hr_second_pass_steps"].field()
    hr_scale: float = P["hr_scale"].field()
    hr_resize_x: int = P["hr_resize_x"].field()
    hr_resize_y: int = P["hr_resize_y"].field()
    hr_sampler_name: str = P["hr_sampler_name"].field()  # canonical after validation, or SAME_SAMPLER
    hr_scheduler: str = P["hr_scheduler"].field()  # canonical after validation, or SAME_SCHEDULER
    hr_prompt: str = P["hr_prompt"].field()
    hr_negative_prompt: str = P["hr_negative_prompt"].field()
    hr_checkpoint_name: str = P["hr_checkpoint_name"].field()

    @model_validator(mode="before")
    @classmethod
    def _canonical_sampling(cls, data: Any) -> Any:
        """Sampler and schedule resolved once, here, so every later reader sees canonical names."""
        if not isinstance(data, dict):
            return data
        name = data.get("sampler_name", P["sampler_name"].default)
        scheduler = data.get("scheduler", P["scheduler"].default)
        if not isinstance(name, str) or not isinstance(scheduler, str) or text_problem(name) or \
                text_problem(scheduler):
            return data  # the field validators name the problem
        try:
            sampling = Sampling.resolve(name, scheduler)
        except ValueError as exc:
            raise InvalidRequest("sampler_name", str(exc)) from None
        return {**data, "sampler_name": sampling.spec.name, "scheduler": sampling.schedule}

    @field_validator("prompt", "negative_prompt", "sampler_name", "scheduler", "checkpoint", "sd_vae",
                     "hr_upscaler", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
                     "hr_checkpoint_name")
    @classmethod
    def _encodable(cls, value: str | None) -> str | None:
        if value is not None and (problem := text_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @field_validator("refiner_checkpoint")
    @classmethod
    def _refiner(cls, value: str | None) -> str | None:
        if value is not None and (problem := text_problem(value)) is not None:
            raise ValueError(problem)
        return None if value is None or value.strip() in NO_REFINER else value

    @field_validator("randn_source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if value not in RANDN_SOURCES:
            raise ValueError(f"must be one of {', '.join(RANDN_SOURCES)} (got {safe_label(value)!r})")
        return value

    @model_validator(mode="after")
    def _sigma_range(self) -> "Txt2ImgRequest":
        if self.sigma_min and self.sigma_max and self.sigma_min >= self.sigma_max:
            raise InvalidRequest("sigma_min", f"must be below sigma_max ({self.sigma_max:g}), or 0 for the model's")
        return self

    @field_validator(*(p.name for p in PARAMS if p.multiple_of))
    @classmethod
    def _multiple(cls, value: int, info: ValidationInfo) -> int:
        # Latents are 1/8 of the image size; other sizes would be silently cropped.
        step = P[info.field_name].multiple_of
        if value % step:
            raise ValueError(f"must be a multiple of {step} (got {value})")
        return value

    @field_validator("hr_prompt", "hr_negative_prompt", mode="before")
    @classmethod
    def _empty_hires_prompt(cls, value: Any) -> Any:
        # An untouched textbox reaches Gradio API clients as null: the same as empty (the first pass's prompt).
        return "" if value is None else value

    @model_validator(mode="after")
    def _hires_we_can_run(self) -> "Txt2ImgRequest":
        """Hires fields are checked when hires fix is on (A1111 ignores them otherwise); names made canonical."""
        if not self.enable_hr:
            return self
        # Any other hr_upscaler may be an upscaler model (models/ESRGAN...): the generation service checks it.
        if not self.hr_upscaler.strip():
            raise InvalidRequest("hr_upscaler", f"choose one of {', '.join(UPSCALERS)} or an upscaler model "
                                                "(GET /sdapi/v1/upscalers and /sdapi/v1/latent-upscale-modes)")
        if self.hr_checkpoint_name not in ("", SAME_CHECKPOINT):
            raise InvalidRequest("hr_checkpoint_name", "another checkpoint for the hires pass is not supported "
                                                       f"yet; send \"{SAME_CHECKPOINT}\" or leave it out")
        same_sampler = self.hr_sampler_name in ("", SAME_SAMPLER)
        same_schedule = self.hr_scheduler in ("", SAME_SCHEDULER)
        try:
            sampling = Sampling.resolve(self.sampler_name if same_sampler else self.hr_sampler_name,
                                        self.scheduler if same_schedule else self.hr_scheduler)
        except ValueError as exc:
            raise InvalidRequest("hr_scheduler" if same_sampler else "hr_sampler_name", str(exc)) from None
        # frozen model: the canonical names are set the way pydantic itself sets fields
        object.__setattr__(self, "hr_sampler_name", SAME_SAMPLER if same_sampler else sampling.spec.name)
        object.__setattr__(self, "hr_scheduler", SAME_SCHEDULER if same_schedule else sampling.schedule)
        return self

    @property
    def sampling(self) -> Sampling:
        """The sampler spec and schedule this request runs with (its fields are already canonical)."""
        return Sampling.resolve(self.sampler_name, self.scheduler)

    @property
    def hires_sampling(self) -> Sampling:
        """The hires pass's sampler and schedule: the first pass's where the request says "use same"."""
        same_sampler = self.hr_sampler_name in ("", SAME_SAMPLER)
        same_schedule = self.hr_scheduler in ("", SAME_SCHEDULER)
        return Sampling.resolve(self.sampler_name if same_sampler else self.hr_sampler_name,
                                self.scheduler if same_schedule else self.hr_scheduler)

    @property
    def hires_size(self) -> HiresSize:
        """Where the hires pass upscales to (A1111's calculate_target_resolution)."""
        return hires_size(self.width, self.height, self.hr_scale, self.hr_resize_x, self.hr_resize_y)

    @classmethod
    def parse(cls, **fields: Any) -> "Txt2ImgRequest":
        """Build a request, turning pydantic's error into an InvalidRequest naming the first bad field."""
        return validated(cls, fields)


class Img2ImgRequest(Txt2ImgRequest):
    """img2img, inpainting (with ``mask``) and InstructPix2Pix (8-channel checkpoints), A1111's fields."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True)

    init_images: list[Any] = Field(default_factory=list)  # PIL images; empty only in a batch template
    resize_mode: int = P["resize_mode"].field()  # just resize, crop and resize, resize and fill, latent upscale
    denoising_strength: float = P["denoising_strength"].field()
    image_cfg_scale: float = P["image_cfg_scale"].field()  # InstructPix2Pix only
    mask: Any = None  # PIL image, white = repaint
    mask_blur: int = P["mask_blur"].field()
    inpainting_fill: int = P["inpainting_fill"].field()  # fill, original, latent noise, latent nothing
    inpaint_full_res: bool = P["inpaint_full_res"].field()  # "only masked": the masked region at full resolution
    inpaint_full_res_padding: int = P["inpaint_full_res_padding"].field()
    inpainting_mask_invert: bool = P["inpainting_mask_invert"].field()
    img2img_fix_steps: bool = P["img2img_fix_steps"].field()  # A1111's option: exactly ``steps`` steps run

    @model_validator(mode="after")
    def _no_hires(self) -> "Img2ImgRequest":
        if self.enable_hr:
            raise InvalidRequest("enable_hr", "hires fix is a txt2img option; send enable_hr: false")
        return self

    @field_validator("init_images")
    @classmethod
    def _images(cls, value: list[Any]) -> list[Any]:
        if not all(_is_image(image) for image in value):
            raise ValueError("must be images")
        return value


def _is_image(value: Any) -> bool:
    return hasattr(value, "size") and hasattr(value, "convert")


class _CheckedRequest(BaseModel):
    """A request that raises InvalidRequest (naming the field, in the API's words) when constructed wrongly."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False, arbitrary_types_allowed=True)
    _api_names: ClassVar[dict[str, str]] = {}  # field -> the name clients send it under

    def __init__(self, **fields: Any) -> None:
        try:
            super().__init__(**fields)
        except ValidationError as exc:
            raise _invalid(exc, type(self).__name__, self._api_names) from None


STYLE_MIN_TILE, STYLE_MAX_TILE = 64, 4096  # what a request may say at all; each server caps the tile lower


class StyleTransferRequest(_CheckedRequest):
    """One CycleGAN / pix2pix pass; ``model`` is a title, "kind/name", name, file name or hash."""

    model: str
    image: Any  # PIL image
    tile: int = Field(512, ge=STYLE_MIN_TILE, le=STYLE_MAX_TILE)
    overlap: int = Field(32, ge=0)
    save: bool = True

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("choose a style transfer model")
        if (problem := text_problem(value)) is not None:
            raise ValueError(problem)
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: Any) -> Any:
        if not _is_image(value):
            raise ValueError("an image is required")
        if min(value.size) < 1:
            raise ValueError("the image is empty")
        return value

    @field_validator("overlap")
    @classmethod
    def _overlap(cls, value: int, info: ValidationInfo) -> int:
        tile = info.data.get("tile")
        if tile is not None and value > tile // 2:
            raise ValueError(f"must be between 0 and half the tile ({tile // 2})")
        return value


UPSCALE_MAX_SIDE = 4096
UPSCALE_MAX_SCALE = 8.0  # A1111's bound; also keeps width * scale finite (1e308 overflowed into a 500)


class UpscaleRequest(_CheckedRequest):
    """A plain resize of one image (``extra-single-image``): ``to_size`` False means scale by ``scale``.

    Upscaler names are checked by the extras service, which knows which exist.
    """

    _api_names: ClassVar[dict[str, str]] = {
        "scale": "upscaling_resize", "width": "upscaling_resize_w", "height": "upscaling_resize_h",
        "crop": "upscaling_crop", "upscaler_2_visibility": "extras_upscaler_2_visibility"}

    to_size: bool = False
    scale: float = 2.0
    width: int = 512
    height: int = 512
    crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    upscaler_2_visibility: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sizes(self) -> "UpscaleRequest":
        # Only the mode in use is checked: clients send both sets of fields with A1111's defaults.
        if not self.to_size and not 0 < self.scale <= UPSCALE_MAX_SCALE:
            raise InvalidRequest("upscaling_resize", f"must be greater than 0 and at most {UPSCALE_MAX_SCALE:g}")
        if self.to_size:
            for name, value in (("upscaling_resize_w", self.width), ("upscaling_resize_h", self.height)):
                if not 1 <= value <= UPSCALE_MAX_SIDE:
                    raise InvalidRequest(name, f"must be from 1 to {UPSCALE_MAX_SIDE}")
        return self

    @property
    def size_field(self) -> str:
        """The request field to blame when the result is too large."""
        return "upscaling_resize_w" if self.to_size else "upscaling_resize"


def _invalid(exc: ValidationError, model_name: str, names: dict[str, str] | None = None) -> InvalidRequest:
    first = exc.errors()[0]
    loc = [str(part) for part in first["loc"]]
    if loc and names:
        loc[0] = names.get(loc[0], loc[0])
    return InvalidRequest(".".join(loc) or model_name, first["msg"].removeprefix("Value error, "))


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
        raise _invalid(exc, model.__name__) from None


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
    stage: str = ""  # a script's own progress ("Cell 3 of 12"), kept while its generations report their steps
    preview: "Image.Image | None" = None
    preview_id: int = 0
    preview_renders: int = 0  # live previews drawn: only while someone watches (webui/services/jobs.py)
    metrics: Mapping[str, float] = field(default_factory=dict)  # named figures: a training job's loss, lr
    interrupting: bool = False  # Interrupt was pressed; the job stops at its next check
    skipping: bool = False  # Skip was pressed for the current batch

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
    interrupted: bool = False
    pngs: list[bytes] = field(default_factory=list)  # the final files (provenance applied), one per image
    warnings: list[str] = field(default_factory=list)  # e.g. why images were not saved; never in the infotext
    # What the job ran with, for the API's A1111 ``info`` (built in webui/api, not here).
    request: Txt2ImgRequest | None = None
    base_seed: int = -1
    started: float = 0.0  # time.time() when the job started
    model_name: str | None = None
    model_hash: str | None = None
    model_variant: str | None = None  # "normal", "inpaint" or "instruct-pix2pix"
    subseeds: list[int] = field(default_factory=list)  # the variation seed of each image
    base_subseed: int = -1
    vae_name: str | None = None  # the VAE file used (None: the checkpoint's own)
    vae_hash: str | None = None
    grid: "Image.Image | None" = None  # A1111's batch grid, when the return_grid option asks for it
    grid_path: Path | None = None      # where the grid was saved (grid_save)
    images_start_with_grid: bool = False  # a script's result: images[0] is its grid (A1111's index_of_first_image)
    replica: str | None = None  # scale-out: the Ray replica that made the images (None: this process)


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
