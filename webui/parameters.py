"""The generation parameters, each declared once.

One row per user-set field of ``Txt2ImgRequest`` / ``Img2ImgRequest``: its type and bounds (the request models take
their ``Field`` from here), the A1111 API body key, the infotext key and how it is written and parsed, the A1111
options key where a server setting supplies it, and the UI widget. Infotext writing and parsing, the A1111 body
mapping, the UI forms and PNG Info's "Send to" all loop over ``PARAMS``, so adding a parameter is adding a row.

A leaf module: no torch, gradio or fastapi, so every layer may import it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pydantic import Field

from webui.hires_fix import SAME_SAMPLER, SAME_SCHEDULER, UPSCALERS
from webui.images import RESIZE_MODES
from webui.samplers import (AUTOMATIC, SCHEDULE_TYPES, find_sampler, normalize_schedule, sampler_names,
                            split_fused_sampler_name)

__all__ = [
    "BY_NAME",
    "IMG2IMG",
    "PARAMS",
    "TXT2IMG",
    "InfotextContext",
    "InfotextRule",
    "Param",
    "Widget",
    "for_task",
    "widget_rows",
    "infotext_params",
    "parse_params",
]

TXT2IMG, IMG2IMG = "txt2img", "img2img"
BOTH = frozenset({TXT2IMG, IMG2IMG})
ONLY_IMG2IMG = frozenset({IMG2IMG})
ONLY_TXT2IMG = frozenset({TXT2IMG})
PROMPT_KEY, NEGATIVE_KEY = "Prompt", "Negative prompt"  # the infotext's first lines, not its ``Key: value`` line
FILL_MODES = ("fill", "original", "latent noise", "latent nothing")
_SIZE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")


@dataclass(frozen=True)
class InfotextContext:
    """What an infotext records besides the request: the seed of this image, the model that ran, and how."""

    seed: int
    model_name: str | None = None
    model_hash: str | None = None
    method: str | None = None  # img2img only: "img2img", "inpaint" or "instruct-pix2pix" (the checkpoint decides)
    subseed: int | None = None  # the variation seed of this image
    vae_name: str | None = None  # the VAE file used (A1111's "VAE"), None: the checkpoint's own
    vae_hash: str | None = None
    refiner: str | None = None  # the refiner's "name [hash]" when sampling switched to it


Write = Callable[[Any, InfotextContext], object]  # (request, context) -> value, or None to leave the key out
Read = Callable[[str], dict[str, Any]]  # raw value -> request fields; ValueError when unparsable


@dataclass(frozen=True)
class InfotextRule:
    """How one infotext key is written and read. Rows may share a rule ("Size" is width and height)."""

    key: str
    write: Write
    read: Read


@dataclass(frozen=True)
class Widget:
    """The UI control of a row. ``limit`` names a ``config.Limits`` field that narrows ``maximum`` per server."""

    kind: str  # "textbox", "dropdown", "slider", "number", "radio" or "checkbox"
    label: str
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    limit: str | None = None
    elem_id: str | None = None  # "{tab}" is replaced by the tab's prefix
    choices: tuple[str, ...] = ()  # radio labels; the request value is the label's index (or bool of it)
    lines: int = 1
    row: str | None = None  # consecutive widgets with the same row name sit side by side
    panel: str | None = None  # a tab's sub-panel holding it (img2img: "inpaint"); None: the main settings
    # For a row both tasks have that each tab places itself: (task, panel) pairs; it is then never shared.
    task_panels: tuple[tuple[str, str | None], ...] = ()

    def to_ui(self, value: Any) -> Any:
        """A request value as the widget shows it (radio: the label)."""
        if self.kind == "radio":
            return self.choices[int(value)]
        return value


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass(frozen=True)
class Param:
    """One generation parameter. ``api_key`` None: not in A1111's body; ``setting``: the option that sets it."""

    name: str
    type: type
    default: Any
    ge: float | None = None
    le: float | None = None
    multiple_of: int | None = None
    tasks: frozenset[str] = BOTH
    api_key: str | None = None
    api_aliases: tuple[str, ...] = ()
    api_default: Any = None  # used when the body leaves the key (and its aliases) out or null
    infotext: tuple[InfotextRule, ...] = ()  # the keys it is written under (several rows may share one)
    setting: str | None = None
    widget: Widget | None = None

    def field(self) -> Any:
        """The pydantic ``Field`` of this row: default and bounds, from this table only."""
        return Field(self.default, ge=self.ge, le=self.le)

    def bounds_text(self) -> str:
        kind = "an integer" if self.type is int else "a number"
        if self.ge is not None and self.le is not None:
            return f"must be {kind} from {_number(self.ge)} to {_number(self.le)}"
        if self.ge is not None:
            return f"must be {kind} of at least {_number(self.ge)}"
        return f"must be {kind}"

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not valid for this row (type and bounds), or None. For values outside a request model."""
        if self.type in (int, float):
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not is_number or (self.type is int and not isinstance(value, int)) or not math.isfinite(value):
                return self.bounds_text()
            if (self.ge is not None and value < self.ge) or (self.le is not None and value > self.le):
                return self.bounds_text()
        elif not isinstance(value, self.type):
            return f"must be a {self.type.__name__}"
        return None

    def ui_maximum(self, limits: Any) -> float | None:
        """The widget's maximum, narrowed by the server's ``Limits`` where the row names one."""
        assert self.widget is not None
        if self.widget.limit is None:
            return self.widget.maximum
        return getattr(limits, self.widget.limit)

    def from_ui(self, value: Any) -> Any:
        """A widget value as the request field (radio label -> index or bool; whole floats -> int)."""
        if self.widget is not None and self.widget.kind == "radio":
            index = self.widget.choices.index(value)
            return bool(index) if self.type is bool else index
        if self.type is int and isinstance(value, float) and value.is_integer():
            return int(value)  # Gradio numbers arrive as floats
        return value


# ------------------------------------------------------------------------------ infotext rules


def _scalar(key: str, name: str, convert: Callable[[str], Any], when: Callable[[Any, InfotextContext], bool]
            = lambda _r, _c: True, value: Callable[[Any], Any] | None = None) -> InfotextRule:
    """A key holding one field as-is, written when ``when`` holds."""
    def write(request: Any, ctx: InfotextContext) -> object:
        if not when(request, ctx):
            return None
        return value(request) if value is not None else getattr(request, name)

    return InfotextRule(key, write, lambda raw: {name: convert(raw)})


def _choice(key: str, name: str, choices: tuple[str, ...], when: Callable[[Any, InfotextContext], bool]) \
        -> InfotextRule:
    """A key holding a field as one of ``choices`` (index or bool in the request, label in the text)."""
    def read(raw: str) -> dict[str, Any]:
        if raw not in choices:
            raise ValueError(raw)
        index = choices.index(raw)
        return {name: bool(index) if len(choices) == 2 else index}

    return InfotextRule(key, lambda r, c: choices[int(getattr(r, name))] if when(r, c) else None, read)


def _read_sampler(raw: str) -> dict[str, Any]:
    """Canonical sampler where we know it; an old fused name ("DPM++ 2M Karras") also gives the schedule."""
    if not raw:
        raise ValueError("empty")
    base, fused = split_fused_sampler_name(raw)
    spec = find_sampler(base)
    fields: dict[str, Any] = {"sampler_name": spec.name if spec else base}
    if fused:
        fields["scheduler"] = fused
    return fields


def _read_schedule(raw: str) -> dict[str, Any]:
    if not raw:
        raise ValueError("empty")
    try:
        return {"scheduler": normalize_schedule(raw)}
    except ValueError:
        return {"scheduler": raw}  # a schedule we don't implement (e.g. "Align Your Steps"): kept as written


def _write_schedule(request: Any, _ctx: InfotextContext) -> object:
    """The schedule that really ran, so the text reproduces the image; left out where it is implicit."""
    effective = request.sampling.effective_schedule
    return None if effective == AUTOMATIC else effective


def _read_bool(raw: str) -> bool:
    """A1111 writes Python's ``True``/``False``; anything else is not a value we can apply."""
    text = raw.strip().lower()
    if text not in ("true", "false"):
        raise ValueError(f"not a boolean: {raw!r}")
    return text == "true"


def _read_size(raw: str) -> dict[str, Any]:
    match = _SIZE.match(raw)
    if not match:
        raise ValueError(raw)
    return {"width": int(match.group(1)), "height": int(match.group(2))}


def _inpainting(request: Any, ctx: InfotextContext) -> bool:
    return ctx.method == "inpaint" and request.mask is not None


SAMPLER = InfotextRule("Sampler", lambda r, _c: r.sampling.spec.name, _read_sampler)
SCHEDULE = InfotextRule("Schedule type", _write_schedule, _read_schedule)
SIZE = InfotextRule("Size", lambda r, _c: f"{r.width}x{r.height}", _read_size)
SEED = InfotextRule("Seed", lambda _r, c: c.seed, lambda raw: {"seed": int(raw)})
MODEL_HASH = InfotextRule("Model hash", lambda _r, c: c.model_hash, lambda raw: {"model_hash": raw})
MODEL = InfotextRule("Model", lambda _r, c: c.model_name, lambda raw: {"model_name": raw})
PROMPT = InfotextRule(PROMPT_KEY, lambda r, _c: r.prompt, lambda raw: {"prompt": raw})
VAE_HASH = InfotextRule("VAE hash", lambda _r, c: c.vae_hash, lambda raw: {"vae_hash": raw})
VAE = InfotextRule("VAE", lambda _r, c: c.vae_name, lambda raw: {"sd_vae": raw})
NEGATIVE = InfotextRule(NEGATIVE_KEY, lambda r, _c: r.negative_prompt, lambda raw: {"negative_prompt": raw})

_RESIZE_LABELS = tuple(RESIZE_MODES[k] for k in sorted(RESIZE_MODES))
_AREAS = ("Whole picture", "Only masked")
_MASK_MODES = ("Inpaint masked", "Inpaint not masked")


def _slider(label: str, minimum: float, maximum: float, step: float, limit: str | None = None,
            elem_id: str | None = None, row: str | None = None, panel: str | None = None) -> Widget:
    return Widget("slider", label, minimum, maximum, step, limit, elem_id, row=row, panel=panel)


# ------------------------------------------------------------------------------------ the table
# Order: the UI's order within each form, and the order extra infotext keys are written in.

PARAMS: tuple[Param, ...] = (
    Param("prompt", str, "", api_key="prompt", infotext=(PROMPT,),
          widget=Widget("textbox", "Prompt", elem_id="{tab}_prompt", lines=3)),
    Param("negative_prompt", str, "", api_key="negative_prompt", infotext=(NEGATIVE,),
          widget=Widget("textbox", "Negative prompt", elem_id="{tab}_negative_prompt", lines=2)),
    Param("sampler_name", str, "DPM++ 2M", api_key="sampler_name", api_aliases=("sampler_index",),
          api_default="Euler", infotext=(SAMPLER,),
          widget=Widget("dropdown", "Sampling method", elem_id="{tab}_sampler", choices=tuple(sampler_names()),
                        row="sampling")),
    Param("scheduler", str, AUTOMATIC, api_key="scheduler", infotext=(SCHEDULE,),
          widget=Widget("dropdown", "Schedule type", elem_id="{tab}_scheduler", row="sampling")),
    Param("steps", int, 20, ge=1, api_key="steps", infotext=(_scalar("Steps", "steps", int),),
          widget=_slider("Sampling steps", 1, 150, 1, limit="max_steps")),
    Param("width", int, 512, ge=64, multiple_of=8, api_key="width", infotext=(SIZE,),
          widget=_slider("Width", 64, 2048, 8, limit="max_width", row="size")),
    Param("height", int, 512, ge=64, multiple_of=8, api_key="height", infotext=(SIZE,),
          widget=_slider("Height", 64, 2048, 8, limit="max_height", row="size")),
    Param("n_iter", int, 1, ge=1, api_key="n_iter", widget=_slider("Batch count", 1, 100, 1, limit="max_batch_count", row="batch")),
    Param("batch_size", int, 1, ge=1, api_key="batch_size",
          widget=_slider("Batch size", 1, 8, 1, limit="max_batch_size", row="batch")),
    Param("cfg_scale", float, 7.0, ge=0.0, le=100.0, api_key="cfg_scale",
          infotext=(_scalar("CFG scale", "cfg_scale", float),), widget=_slider("CFG scale", 1, 30, 0.5)),
    Param("seed", int, -1, ge=-1, le=2**32 - 1, api_key="seed", infotext=(SEED,),
          widget=Widget("number", "Seed (-1 = random)", elem_id="{tab}_seed", row="seed")),
    Param("clip_skip", int, 1, ge=1, le=12, setting="CLIP_stop_at_last_layers",
          infotext=(_scalar("Clip skip", "clip_skip", int, lambda r, _c: r.clip_skip > 1),),  # A1111 omits 1
          widget=_slider("Clip skip", 1, 12, 1)),
    # The checkpoint bar is the tabs' shared widget; the infotext records the model that really ran.
    Param("checkpoint", str, None, setting="sd_model_checkpoint", infotext=(MODEL_HASH, MODEL)),
    Param("resize_mode", int, 0, ge=0, le=3, tasks=ONLY_IMG2IMG, api_key="resize_mode",
          infotext=(_choice("Resize mode", "resize_mode", _RESIZE_LABELS, lambda r, _c: r.resize_mode != 0),),
          widget=Widget("radio", "Resize mode", choices=_RESIZE_LABELS)),
    # txt2img: the hires pass's strength (A1111 writes it only with hires fix on).
    Param("denoising_strength", float, 0.75, ge=0.0, le=1.0, api_key="denoising_strength",
          infotext=(_scalar("Denoising strength", "denoising_strength", float,
                           lambda r, c: r.enable_hr if c.method is None else c.method != "instruct-pix2pix"),),
          widget=Widget("slider", "Denoising strength", 0, 1, 0.01, elem_id="{tab}_denoising", row="strength",
                        task_panels=((IMG2IMG, None), (TXT2IMG, "hires")))),
    Param("image_cfg_scale", float, 1.5, ge=0.0, le=100.0, tasks=ONLY_IMG2IMG, api_key="image_cfg_scale",
          infotext=(_scalar("Image CFG scale", "image_cfg_scale", float,
                           lambda _r, c: c.method == "instruct-pix2pix"),),
          widget=_slider("Image CFG scale (InstructPix2Pix)", 0, 5, 0.05, row="strength")),
    Param("mask_blur", int, 4, ge=0, le=64, tasks=ONLY_IMG2IMG, api_key="mask_blur",
          infotext=(_scalar("Mask blur", "mask_blur", int, _inpainting),), widget=_slider("Mask blur", 0, 64, 1, panel="inpaint")),
    Param("inpainting_fill", int, 1, ge=0, le=3, tasks=ONLY_IMG2IMG, api_key="inpainting_fill",
          infotext=(_choice("Masked content", "inpainting_fill", FILL_MODES, _inpainting),),
          widget=Widget("radio", "Masked content", choices=FILL_MODES, panel="inpaint")),
    Param("inpaint_full_res", bool, False, tasks=ONLY_IMG2IMG, api_key="inpaint_full_res",
          infotext=(_choice("Inpaint area", "inpaint_full_res", _AREAS,
                           lambda r, c: _inpainting(r, c) and r.inpaint_full_res),),
          widget=Widget("radio", "Inpaint area", choices=_AREAS, panel="inpaint")),
    Param("inpaint_full_res_padding", int, 32, ge=0, le=256, tasks=ONLY_IMG2IMG,
          api_key="inpaint_full_res_padding",
          infotext=(_scalar("Masked area padding", "inpaint_full_res_padding", int,
                           lambda r, c: _inpainting(r, c) and r.inpaint_full_res),),
          widget=_slider("Only masked padding, pixels", 0, 256, 4, panel="inpaint")),
    Param("inpainting_mask_invert", bool, False, tasks=ONLY_IMG2IMG, api_key="inpainting_mask_invert",
          infotext=(_choice("Mask mode", "inpainting_mask_invert", _MASK_MODES,
                           lambda r, c: _inpainting(r, c) and r.inpainting_mask_invert),),
          widget=Widget("radio", "Mask mode", choices=_MASK_MODES, panel="inpaint")),
    # Seamless textures: circular padding in the UNet's and VAE's convolutions for the job (A1111's "Tiling").
    Param("tiling", bool, False, api_key="tiling",
          infotext=(_scalar("Tiling", "tiling", _read_bool, lambda r, _c: r.tiling),),
          widget=Widget("checkbox", "Tiling (seamless texture)", elem_id="{tab}_tiling")),
    # The checkpoint bar's "SD VAE" sets the option; None: the option when the job runs. The infotext records
    # the VAE file that really ran (none when the checkpoint's own did).
    Param("sd_vae", str, None, setting="sd_vae", infotext=(VAE_HASH, VAE)),
)


# ------------------------------------------------------------------- noise: variation seeds and RNG source
RANDN_SOURCES = ("GPU", "CPU", "NV")  # A1111's "Random number generator source"; GPU is its default
# Samplers whose step noise comes from the per-image generator, so A1111 writes ENSD for them (its "uses_ensd").
ENSD_SAMPLERS = frozenset({"Euler a", "DPM2 a", "DPM++ 2S a"})
# Samplers whose k-diffusion function takes an eta in A1111; ours run them at its default, 1.
FIXED_ETA_SAMPLERS = frozenset({"Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE",
                                "DPM++ 2M SDE Heun", "DPM++ 3M SDE"})
DDIM = "DDIM"  # its eta (A1111's "Eta DDIM", default 0) is passed to the scheduler


def _ddim_eta(request: Any, _ctx: InfotextContext) -> object:
    eta = request.eta
    return eta if request.sampling.spec.name == DDIM and eta is not None and eta != 0 else None


def _varied(request: Any, _ctx: InfotextContext) -> bool:
    return request.subseed_strength > 0


def _read_resize(raw: str) -> dict[str, Any]:
    size = _read_size(raw)
    return {"seed_resize_from_w": size["width"], "seed_resize_from_h": size["height"]}


def _read_source(raw: str) -> dict[str, Any]:
    if raw not in RANDN_SOURCES:
        raise ValueError(raw)
    return {"randn_source": raw}


SEED_RESIZE = InfotextRule(
    "Seed resize from",
    lambda r, _c: f"{r.seed_resize_from_w}x{r.seed_resize_from_h}"
    if r.seed_resize_from_w > 0 and r.seed_resize_from_h > 0 else None, _read_resize)

NOISE_PARAMS: tuple[Param, ...] = (
    Param("subseed", int, -1, ge=-1, le=2**32 - 1, api_key="subseed",
          infotext=(InfotextRule("Variation seed", lambda r, c: c.subseed if _varied(r, c) else None,
                                 lambda raw: {"subseed": int(raw)}),),
          widget=Widget("number", "Variation seed (-1 = random)", elem_id="{tab}_subseed", row="subseed",
                        panel="seed_extra")),
    Param("subseed_strength", float, 0.0, ge=0.0, le=1.0, api_key="subseed_strength",
          infotext=(_scalar("Variation seed strength", "subseed_strength", float, _varied),),
          widget=_slider("Variation strength", 0, 1, 0.01, elem_id="{tab}_subseed_strength", row="subseed",
                         panel="seed_extra")),
    # A1111's API sends -1 for "no resize"; 0 is its UI's value. Either (or any side <= 0) means none.
    Param("seed_resize_from_w", int, 0, ge=-1, le=8192, api_key="seed_resize_from_w", infotext=(SEED_RESIZE,),
          widget=_slider("Resize seed from width", 0, 2048, 8, elem_id="{tab}_seed_resize_from_w",
                         row="seed_resize", panel="seed_extra")),
    Param("seed_resize_from_h", int, 0, ge=-1, le=8192, api_key="seed_resize_from_h", infotext=(SEED_RESIZE,),
          widget=_slider("Resize seed from height", 0, 2048, 8, elem_id="{tab}_seed_resize_from_h",
                         row="seed_resize", panel="seed_extra")),
    Param("randn_source", str, "GPU", setting="randn_source",
          infotext=(InfotextRule("RNG", lambda r, _c: r.randn_source if r.randn_source != "GPU" else None,
                                 _read_source),),
          widget=Widget("dropdown", "Random number generator source", elem_id="{tab}_randn_source",
                        choices=RANDN_SOURCES, row="noise_source", panel="seed_extra")),
    Param("eta_noise_seed_delta", int, 0, ge=0, le=2**32 - 1, setting="eta_noise_seed_delta",
          infotext=(_scalar("ENSD", "eta_noise_seed_delta", int,
                            lambda r, c: r.eta_noise_seed_delta != 0 and c.method != "instruct-pix2pix"
                            and r.sampling.spec.name in ENSD_SAMPLERS),),
          widget=Widget("number", "Eta noise seed delta (ENSD)", elem_id="{tab}_ensd", row="noise_source",
                        panel="seed_extra")),
    # A1111's body ``eta`` (null: the sampler's default). Honoured for DDIM; 1 (or null) for the samplers above.
    Param("eta", float, None, ge=0.0, le=1.0, api_key="eta",
          infotext=(InfotextRule("Eta DDIM", _ddim_eta, lambda raw: {"eta": float(raw)}),)),
)
PARAMS = PARAMS + NOISE_PARAMS

# ------------------------------------------------------------------- the refiner (webui/pipelines/refiner.py)
ONLY_TXT2IMG = frozenset({TXT2IMG})
NO_REFINER = ("", "None", "none")  # A1111's dropdown and clients send these for "no refiner"


def _refined(_request: Any, ctx: InfotextContext) -> bool:
    return ctx.refiner is not None  # A1111 writes both keys only once sampling has switched


REFINER_PARAMS: tuple[Param, ...] = (
    Param("refiner_checkpoint", str, None, tasks=ONLY_TXT2IMG, api_key="refiner_checkpoint",
          infotext=(InfotextRule("Refiner", lambda _r, c: c.refiner, lambda raw: {"refiner_checkpoint": raw}),),
          widget=Widget("dropdown", "Checkpoint", elem_id="{tab}_refiner_checkpoint", row="refiner",
                        panel="refiner")),
    Param("refiner_switch_at", float, 0.8, ge=0.0, le=1.0, tasks=ONLY_TXT2IMG, api_key="refiner_switch_at",
          infotext=(_scalar("Refiner switch at", "refiner_switch_at", float, _refined),),
          widget=_slider("Switch at", 0.01, 1, 0.01, elem_id="{tab}_refiner_switch_at", row="refiner",
                         panel="refiner")),
)
PARAMS = PARAMS + REFINER_PARAMS

# ------------------------------------------------------- A1111's "Sampler parameters" options (txt2img's k-samplers)
# Which k-diffusion algorithms A1111 hands which option (sd_samplers_kdiffusion.sampler_extra_params, plus eta
# where the function has one); webui/k_samplers.ALGORITHMS runs them the same way (tests/test_sampler_options.py).
CHURN_ALGORITHMS = frozenset({"euler", "heun", "dpm_2"})
S_NOISE_ALGORITHMS = CHURN_ALGORITHMS | {"dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
                                         "dpmpp_2m_sde_heun", "dpmpp_3m_sde"}
ETA_ALGORITHMS = frozenset({"euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m_sde",
                            "dpmpp_2m_sde_heun", "dpmpp_3m_sde"})
SCHEDULE_RHO = {"Karras": 7.0, "Polyexponential": 1.0}  # the schedules that take a rho, and its default


def _k_sampling(request: Any, ctx: InfotextContext) -> str | None:
    """The k-diffusion algorithm a request samples with, or None (diffusers' schedulers: DDIM, PLMS ..., and every
    sampler with an InstructPix2Pix checkpoint)."""
    return (request.sampling.spec.k_algorithm or None) if ctx.method != "instruct-pix2pix" else None


def effective_eta(request: Any) -> float:
    """A1111's eta of the ancestral and SDE samplers: the request's ``eta``, else the ``eta_ancestral`` option."""
    return request.eta if request.eta is not None else request.eta_ancestral


def _takes(algorithms: frozenset[str], name: str, default: float) -> Callable[[Any, InfotextContext], bool]:
    return lambda r, c: _k_sampling(r, c) in algorithms and getattr(r, name) != default


def _overridden(name: str) -> Callable[[Any, InfotextContext], bool]:
    # A1111 applies (and records) sigma min/max to the schedule types it computes itself, not to "Automatic".
    return lambda r, c: bool(_k_sampling(r, c)) and r.sampling.effective_schedule != AUTOMATIC and getattr(r, name) != 0


def _rho_applies(r: Any, c: InfotextContext) -> bool:
    schedule = r.sampling.effective_schedule
    return bool(_k_sampling(r, c)) and schedule in SCHEDULE_RHO and r.rho not in (0, SCHEDULE_RHO[schedule])


def _beta_schedule(r: Any, c: InfotextContext) -> bool:
    return bool(_k_sampling(r, c)) and r.sampling.effective_schedule == "Beta"


# Second spellings that are only read: A1111's option table names these keys differently from its writer.
READ_ONLY_KEYS = frozenset({"Beta scheduler alpha", "Beta scheduler beta", "SGM noise multplier"})


def _read_alias(key: str, name: str, convert: Callable[[str], Any]) -> InfotextRule:
    assert key in READ_ONLY_KEYS
    return InfotextRule(key, lambda _r, _c: None, lambda raw: {name: convert(raw)})


SAMPLER_OPTION_PARAMS: tuple[Param, ...] = (
    Param("eta_ancestral", float, 1.0, ge=0.0, le=1.0, setting="eta_ancestral",
          infotext=(_scalar("Eta", "eta_ancestral", float,
                            lambda r, c: _k_sampling(r, c) in ETA_ALGORITHMS and effective_eta(r) != 1.0,
                            effective_eta),)),
    Param("s_churn", float, 0.0, ge=0.0, le=100.0, api_key="s_churn", setting="s_churn",
          infotext=(_scalar("Sigma churn", "s_churn", float, _takes(CHURN_ALGORITHMS, "s_churn", 0.0)),)),
    Param("s_tmin", float, 0.0, ge=0.0, le=10.0, api_key="s_tmin", setting="s_tmin",
          infotext=(_scalar("Sigma tmin", "s_tmin", float, _takes(CHURN_ALGORITHMS, "s_tmin", 0.0)),)),
    # 0 means infinity, as in A1111.
    Param("s_tmax", float, 0.0, ge=0.0, le=999.0, api_key="s_tmax", setting="s_tmax",
          infotext=(_scalar("Sigma tmax", "s_tmax", float, _takes(CHURN_ALGORITHMS, "s_tmax", 0.0)),)),
    Param("s_noise", float, 1.0, ge=0.0, le=1.1, api_key="s_noise", setting="s_noise",
          infotext=(_scalar("Sigma noise", "s_noise", float, _takes(S_NOISE_ALGORITHMS, "s_noise", 1.0)),)),
    # 0: the model's own (about 0.03 and 14.6 for SD); rho 0: the schedule's default.
    Param("sigma_min", float, 0.0, ge=0.0, le=1000.0, setting="sigma_min",
          infotext=(_scalar("Schedule min sigma", "sigma_min", float, _overridden("sigma_min")),)),
    Param("sigma_max", float, 0.0, ge=0.0, le=1000.0, setting="sigma_max",
          infotext=(_scalar("Schedule max sigma", "sigma_max", float, _overridden("sigma_max")),)),
    Param("rho", float, 0.0, ge=0.0, le=100.0, setting="rho",
          infotext=(_scalar("Schedule rho", "rho", float, _rho_applies),)),
    Param("beta_dist_alpha", float, 0.6, ge=0.01, le=1.0, setting="beta_dist_alpha",
          infotext=(_scalar("Beta schedule alpha", "beta_dist_alpha", float, _beta_schedule),
                    _read_alias("Beta scheduler alpha", "beta_dist_alpha", float))),
    Param("beta_dist_beta", float, 0.6, ge=0.01, le=1.0, setting="beta_dist_beta",
          infotext=(_scalar("Beta schedule beta", "beta_dist_beta", float, _beta_schedule),
                    _read_alias("Beta scheduler beta", "beta_dist_beta", float))),
    Param("always_discard_next_to_last_sigma", bool, False, setting="always_discard_next_to_last_sigma",
          infotext=(_scalar("Discard penultimate sigma", "always_discard_next_to_last_sigma", _read_bool,
                            lambda r, c: bool(_k_sampling(r, c)) and r.always_discard_next_to_last_sigma
                            and not r.sampling.spec.discard_penultimate_sigma),)),
    # A1111 writes "SGM noise multiplier" and its option table reads "SGM noise multplier"; both are read here.
    Param("sgm_noise_multiplier", bool, False, setting="sgm_noise_multiplier",
          infotext=(_scalar("SGM noise multiplier", "sgm_noise_multiplier", _read_bool,
                            lambda r, c: bool(_k_sampling(r, c)) and c.method is None and r.sgm_noise_multiplier),
                    _read_alias("SGM noise multplier", "sgm_noise_multiplier", _read_bool))),
)

PARAMS = PARAMS + SAMPLER_OPTION_PARAMS

# ------------------------------------------------------------------------- hires fix (txt2img's second pass)
# Written as A1111's txt2img writes them, only with hires fix on; reading any of the upscale keys turns it on
# (A1111's paste does the same from "Hires upscale"/"Hires resize"/"Hires upscaler").


def _hires(when: Callable[[Any], bool] = lambda _r: True) -> Callable[[Any, InfotextContext], bool]:
    return lambda r, c: c.method is None and r.enable_hr and when(r)


def _hires_scalar(key: str, name: str, convert: Callable[[str], Any],
                  when: Callable[[Any], bool] = lambda _r: True) -> InfotextRule:
    rule = _scalar(key, name, convert, _hires(when))
    return InfotextRule(key, rule.write, lambda raw: {**rule.read(raw), "enable_hr": True})


def _read_hires_resize(raw: str) -> dict[str, Any]:
    size = _read_size(raw)
    return {"hr_resize_x": size["width"], "hr_resize_y": size["height"], "enable_hr": True}


def _resized(r: Any) -> bool:
    return r.hr_resize_x > 0 or r.hr_resize_y > 0


def _hires_sampler(r: Any, _c: InfotextContext) -> object:
    """Written when the second pass samples with another sampler, as A1111 writes "Hires sampler"."""
    return r.hr_sampler_name if _hires()(r, _c) and r.hr_sampler_name not in ("", SAME_SAMPLER, r.sampler_name) \
        else None


def _hires_schedule(r: Any, _c: InfotextContext) -> object:
    if not _hires()(r, _c) or r.hr_scheduler in ("", SAME_SCHEDULER):
        return None
    return r.hr_scheduler if r.hr_scheduler != r.sampling.effective_schedule else None


def _read_hires_sampler(raw: str) -> dict[str, Any]:
    fields = _read_sampler(raw)
    result = {"hr_sampler_name": fields["sampler_name"]}
    if "scheduler" in fields:
        result["hr_scheduler"] = fields["scheduler"]
    return result


HIRES_RESIZE = InfotextRule("Hires resize", lambda r, c: f"{r.hr_resize_x}x{r.hr_resize_y}"
                            if _hires(_resized)(r, c) else None, _read_hires_resize)


def _hires_slider(label: str, minimum: float, maximum: float, step: float, name: str, row: str,
                  limit: str | None = None) -> Widget:
    return Widget("slider", label, minimum, maximum, step, limit, f"{{tab}}_{name}", row=row, panel="hires")


HIRES_PARAMS: tuple[Param, ...] = (
    Param("enable_hr", bool, False, tasks=ONLY_TXT2IMG, api_key="enable_hr",
          widget=Widget("checkbox", "Hires. fix", elem_id="{tab}_enable_hr", panel="hires")),
    Param("hr_upscaler", str, "Latent", tasks=ONLY_TXT2IMG, api_key="hr_upscaler", api_default="Latent",
          infotext=(_hires_scalar("Hires upscaler", "hr_upscaler", str),),
          widget=Widget("dropdown", "Upscaler", elem_id="{tab}_hr_upscaler", choices=UPSCALERS, row="hires_1",
                        panel="hires")),
    Param("hr_second_pass_steps", int, 0, ge=0, tasks=ONLY_TXT2IMG, api_key="hr_second_pass_steps",
          infotext=(_hires_scalar("Hires steps", "hr_second_pass_steps", int, lambda r: r.hr_second_pass_steps > 0),),
          widget=_hires_slider("Hires steps", 0, 150, 1, "hires_steps", "hires_1",
                               limit="max_steps")),
    Param("hr_scale", float, 2.0, ge=1.0, le=4.0, tasks=ONLY_TXT2IMG, api_key="hr_scale", api_default=2.0,
          infotext=(_hires_scalar("Hires upscale", "hr_scale", float, lambda r: not _resized(r)),),
          widget=_hires_slider("Upscale by", 1, 4, 0.05, "hr_scale", "hires_2")),
    Param("hr_resize_x", int, 0, ge=0, multiple_of=8, tasks=ONLY_TXT2IMG, api_key="hr_resize_x",
          infotext=(HIRES_RESIZE,),
          widget=_hires_slider("Resize width to", 0, 2048, 8, "hr_resize_x", "hires_2",
                               limit="max_width")),
    Param("hr_resize_y", int, 0, ge=0, multiple_of=8, tasks=ONLY_TXT2IMG, api_key="hr_resize_y",
          infotext=(HIRES_RESIZE,),
          widget=_hires_slider("Resize height to", 0, 2048, 8, "hr_resize_y", "hires_2",
                               limit="max_height")),
    Param("hr_sampler_name", str, SAME_SAMPLER, tasks=ONLY_TXT2IMG, api_key="hr_sampler_name",
          api_default=SAME_SAMPLER, infotext=(InfotextRule("Hires sampler", _hires_sampler, _read_hires_sampler),),
          widget=Widget("dropdown", "Hires sampling method", elem_id="{tab}_hr_sampler",
                        choices=(SAME_SAMPLER, *sampler_names()), row="hires_3", panel="hires")),
    Param("hr_scheduler", str, SAME_SCHEDULER, tasks=ONLY_TXT2IMG, api_key="hr_scheduler",
          api_default=SAME_SCHEDULER,
          infotext=(InfotextRule("Hires schedule type", _hires_schedule,
                                 lambda raw: {"hr_scheduler": _read_schedule(raw)["scheduler"]}),),
          widget=Widget("dropdown", "Hires schedule type", elem_id="{tab}_hr_scheduler",
                        choices=(SAME_SCHEDULER, *SCHEDULE_TYPES), row="hires_3", panel="hires")),
    Param("hr_prompt", str, "", tasks=ONLY_TXT2IMG, api_key="hr_prompt",
          infotext=(_hires_scalar("Hires prompt", "hr_prompt", str, lambda r: r.hr_prompt not in ("", r.prompt)),),
          widget=Widget("textbox", "Hires prompt (empty = same prompt)", elem_id="{tab}_hr_prompt", lines=2,
                        row="hires_prompts", panel="hires")),
    Param("hr_negative_prompt", str, "", tasks=ONLY_TXT2IMG, api_key="hr_negative_prompt",
          infotext=(_hires_scalar("Hires negative prompt", "hr_negative_prompt", str,
                                  lambda r: r.hr_negative_prompt not in ("", r.negative_prompt)),),
          widget=Widget("textbox", "Hires negative prompt (empty = same)", elem_id="{tab}_hr_negative_prompt",
                        lines=2, row="hires_prompts", panel="hires")),
    # Another checkpoint for the second pass is refused (422) for now; the same one is accepted.
    Param("hr_checkpoint_name", str, "", tasks=ONLY_TXT2IMG, api_key="hr_checkpoint_name"),
)
PARAMS = PARAMS + HIRES_PARAMS

# A1111's "With img2img, do exactly the amount of steps the slider specifies": the schedule is stretched to
# int(steps / strength) so that ``steps`` steps run (A1111 writes nothing to the infotext for it).
PARAMS = PARAMS + (Param("img2img_fix_steps", bool, False, tasks=ONLY_IMG2IMG, setting="img2img_fix_steps"),)

BY_NAME: MappingProxyType[str, Param] = MappingProxyType({p.name: p for p in PARAMS})


def unapplied_sampler_option(request: Any) -> str | None:
    """The first sampler option a request sets that its sampler would take in A1111 but a diffusers scheduler (an
    InstructPix2Pix job) cannot apply, or None. Options A1111 itself ignores for the sampler pass."""
    algorithm = request.sampling.spec.k_algorithm
    if not algorithm:
        return None
    schedule = request.sampling.effective_schedule
    if algorithm in ETA_ALGORITHMS and effective_eta(request) != 1.0:
        return "eta" if request.eta is not None else "eta_ancestral"
    if algorithm in CHURN_ALGORITHMS and request.s_churn != 0:
        return "s_churn"
    if algorithm in S_NOISE_ALGORITHMS and request.s_noise != 1.0:
        return "s_noise"
    if schedule != AUTOMATIC:
        for name in ("sigma_min", "sigma_max"):
            if getattr(request, name) != 0:
                return name
    if schedule in SCHEDULE_RHO and request.rho not in (0, SCHEDULE_RHO[schedule]):
        return "rho"
    if schedule == "Beta":
        for name in ("beta_dist_alpha", "beta_dist_beta"):
            if getattr(request, name) != BY_NAME[name].default:
                return name
    if request.always_discard_next_to_last_sigma and not request.sampling.spec.discard_penultimate_sigma:
        return "always_discard_next_to_last_sigma"
    return None  # sgm_noise_multiplier: A1111 applies it to txt2img only, as here


def for_task(task: str) -> Iterator[Param]:
    """The rows a ``txt2img`` or ``img2img`` request has."""
    return (p for p in PARAMS if task in p.tasks)


def widget_rows(task: str | None = None, panel: str | None = None, with_prompts: bool = False) -> Iterator[Param]:
    """Rows with a widget in ``panel``, for ``task`` only (None: the settings both tasks share).

    The prompts are left out unless asked for: each tab puts them in its own prompt row.
    """
    wanted = BOTH if task is None else frozenset({task})

    def placed(p: Param) -> bool:
        if p.widget.task_panels:
            return task is not None and task in p.tasks and dict(p.widget.task_panels).get(task, "") == panel
        return p.tasks == wanted and p.widget.panel == panel

    return (p for p in PARAMS if p.widget is not None and placed(p)
            and (with_prompts or p.name not in ("prompt", "negative_prompt")))


def infotext_params(request: Any, ctx: InfotextContext) -> dict[str, object]:
    """The infotext's ``Key: value`` line for ``request`` (None values are left out by the formatter)."""
    task = IMG2IMG if hasattr(request, "init_images") else TXT2IMG
    params: dict[str, object] = {}
    for rule in (rule for p in for_task(task) for rule in p.infotext):
        if rule.key not in (PROMPT_KEY, NEGATIVE_KEY) and rule.key not in params:
            params[rule.key] = rule.write(request, ctx)
    return params


def parse_params(prompt: str, negative_prompt: str, params: dict[str, str]) -> dict[str, Any]:
    """Request fields from a parsed infotext; missing or unparsable values are skipped (infotexts are user data).

    Besides request fields the result may hold ``model_hash``, ``model_name`` and ``vae_hash`` (what the image was
    made with).
    """
    raw = {PROMPT_KEY: prompt, NEGATIVE_KEY: negative_prompt, **params}
    fields: dict[str, Any] = {}
    done: set[str] = set()
    for rule in (rule for p in PARAMS for rule in p.infotext):
        if rule.key in done or rule.key not in raw:
            continue
        done.add(rule.key)
        value = raw[rule.key]
        try:
            fields.update(rule.read(value if rule.key in (PROMPT_KEY, NEGATIVE_KEY) else value.strip()))
        except ValueError:
            continue
    return fields
