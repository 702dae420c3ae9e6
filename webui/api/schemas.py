"""HTTP request/response shapes of A1111's ``/sdapi/v1``, with its field names and defaults.

Clients send many fields we accept and ignore (``do_not_save_grid``, ``comments`` ...): the request models
allow extra keys, but every field we use is typed, and NaN/Infinity are rejected, in extra keys too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from webui.errors import InvalidRequest
from webui.types import find_bad_value


class ApiBody(BaseModel):
    """A request body whose every string (keys included) and number could be echoed back in a response.

    Checked on the raw JSON before field validation, so extra keys that are echoed in ``parameters`` are covered
    too; raises InvalidRequest (422 naming the field) rather than a ValueError, whose location would be the body.
    """

    @model_validator(mode="before")
    @classmethod
    def _no_unsendable_values(cls, data: Any) -> Any:
        if (bad := find_bad_value(data)) is not None:
            raise InvalidRequest(*bad)
        return data


class Txt2ImgBody(ApiBody):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    eta: float | None = None  # null: the sampler's default
    sampler_name: str | None = None
    sampler_index: str | None = None  # older clients send the sampler here
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50  # A1111's API default (the UI's is 20)
    cfg_scale: float = 7.0
    width: int | None = None  # null or left out: the checkpoint's native size (A1111: 512)
    height: int | None = None
    denoising_strength: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    send_images: bool = True
    save_images: bool = False
    enable_hr: bool = False
    # hires fix (txt2img), A1111's defaults; null or "" for the sampler/scheduler/checkpoint: the first pass's
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    tiling: bool | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    extensions: dict[str, Any] = Field(default_factory=dict)  # ours: {"<extension>": {field: value}}
    refiner_checkpoint: str | None = None  # txt2img: a checkpoint's title, name or hash; "None"/"": no refiner
    refiner_switch_at: float | None = None  # null: 0.8
    # A1111's sampler parameters in the body (null: the option of the same name)
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None
    s_noise: float | None = None


class Img2ImgBody(Txt2ImgBody):
    init_images: list[str] = Field(default_factory=list)  # base64 or data: URLs
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur: int = 4
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    include_init_images: bool = False


class ImagesResponse(BaseModel):
    images: list[str] | None
    parameters: dict[str, Any]
    info: str


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None
    current_task: str | None = None


class SdModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None = None


class PngInfoBody(ApiBody):
    image: str


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]
