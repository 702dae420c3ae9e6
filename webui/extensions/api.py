"""The public API for Stable Studio extensions: the ONLY module of ours an extension imports.

Versioned with semver (``API_VERSION``): within one major version nothing here is removed or changes meaning;
an extension's ``extension.toml`` names the range it works with (``api = ">=1.0,<2"``). See docs/extensions.md.

An extension is a folder ``extensions/<name>/`` with ``extension.toml`` and an entry module (``main.py``) that
defines ``setup(ext: Extension) -> None``. ``setup`` registers what the extension adds:

* hooks, called in a defined order (extensions in name order, built-ins first; within one extension in the order
  registered): ``on_before_job``, ``on_step``, ``on_image``, ``on_image_saved``, ``on_model_loaded``,
  ``on_app_started``. A hook that raises is reported and skipped for that call; the job goes on and its info
  says which hook failed;
* typed per-job values (``Params``: a pydantic model; the UI builds widgets from it; the request carries
  ``extensions={"<name>": {...}}``; A1111's ``alwayson_scripts`` maps onto it);
* selectable scripts (``Script``: A1111's Script dropdown and the API's ``script_name``/``script_args``);
* a tab, and settings entries in the Settings tab.

What an extension may use of the running app comes through ``ext.context`` (``Context``), never raw internals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, TypeVar, Union

from pydantic import BaseModel

from webui.infotext import format_infotext, parse_infotext
from webui.types import GenerationResult, Img2ImgRequest, Txt2ImgRequest

if TYPE_CHECKING:
    import torch
    from fastapi import APIRouter
    from PIL import Image

API_VERSION = "1.0.0"

TXT2IMG = "txt2img"
IMG2IMG = "img2img"
GenerationRequest = Union[Txt2ImgRequest, Img2ImgRequest]

__all__ = [
    "API_VERSION", "TXT2IMG", "IMG2IMG", "GenerationRequest", "Txt2ImgRequest", "Img2ImgRequest",
    "GenerationResult", "ExtensionError", "JobStart", "StepState", "ImageResult", "SavedImage", "ModelInfo",
    "AppStart", "Params", "Script", "ScriptRun", "ScriptContext", "ScriptResult", "Setting", "Context", "Extension",
    "infotext_fields", "with_infotext_fields",
]


class ExtensionError(Exception):
    """Raise from a hook or a script to refuse a request with this message (shown to the user as it is)."""


def infotext_fields(infotext: str) -> dict[str, str]:
    """The ``key: value`` fields of an A1111 infotext's last line (prompts excluded)."""
    return dict(parse_infotext(infotext).params)


def with_infotext_fields(infotext: str, fields: Mapping[str, object]) -> str:
    """``infotext`` with ``fields`` added (or replaced) at the end of its parameters line, as A1111 writes them."""
    parsed = parse_infotext(infotext)
    return format_infotext(parsed.prompt, parsed.negative_prompt, {**parsed.params, **fields})


# ---- Hook parameters: one typed object per hook; the fields marked "may change" are read back after the hook ----

@dataclass
class JobStart:
    """``on_before_job``: a txt2img or img2img job about to run on its device."""

    kind: str                      # TXT2IMG or IMG2IMG
    request: GenerationRequest     # may change: assign ``request.model_copy(update=...)``; checked again
    values: BaseModel | None       # this extension's values for the job (its Params model), None when none sent


@dataclass
class StepState:
    """``on_step``: after each denoising step. Several extensions' step hooks compose: each sees the latents the
    previous one left (as diffusers' ``MultiPipelineCallbacks``)."""

    kind: str
    step: int                      # steps done, from 1
    steps: int                     # steps of this image (a hires job counts both passes, as its progress does)
    latents: "torch.Tensor"        # may change: replace with a tensor of the same shape, dtype and device
    guidance_scale: float          # may change: the CFG scale of the steps that follow
    values: BaseModel | None
    cancel_requested: bool = False

    def cancel(self) -> None:
        """End the job after this step, keeping what it made (as the Interrupt button does)."""
        self.cancel_requested = True


@dataclass
class ImageResult:
    """``on_image``: one finished image, before the safety checker, provenance and saving."""

    kind: str
    request: GenerationRequest
    image: "Image.Image"           # may change: replace it (same or any size)
    index: int                     # of the image within the job, from 0
    seed: int
    infotext: dict[str, str]       # may change: add fields; they are written into the image's infotext
    values: BaseModel | None


@dataclass(frozen=True)
class SavedImage:
    """``on_image_saved``: a file written under outputs/ (images, grids)."""

    kind: str
    path: Path
    infotext: str
    request: GenerationRequest | None


@dataclass(frozen=True)
class ModelInfo:
    """A checkpoint: on ``on_model_loaded``, and in ``Context.checkpoints()``."""

    title: str                     # "name.safetensors [abcdef1234]", as A1111 shows it
    name: str                      # without the extension, as infotext writes "Model:"
    hash: str | None               # A1111's short hash, when known
    family: str | None = None      # "sd1", "sd2" or "sdxl" once loaded


@dataclass(frozen=True)
class AppStart:
    """``on_app_started``: add REST routes on ``router``; they are served under ``/ext/<name>/`` with the API's
    login and security checks."""

    router: "APIRouter"


# ---- Registrations ----

Builder = Callable[[BaseModel], Mapping[str, Any]]
"""A Gradio block of one's own: called inside the panel with the model's defaults, it creates Gradio components
and returns ``{field name: component}``; the values of those components fill the model."""


@dataclass(frozen=True)
class Params:
    """Typed values an extension takes with every job (A1111's always-on script), shown as a panel in the Scripts
    area of the given tabs; the widgets are built from ``model`` (bool: checkbox, bounded number: slider, other
    number: number box, Literal/Enum: dropdown, str: text box) unless ``ui`` builds them."""

    model: type[BaseModel]
    title: str = ""                             # the panel's title (default: the extension's name)
    tabs: tuple[str, ...] = (TXT2IMG, IMG2IMG)
    a1111_name: str | None = None               # the key A1111 clients send in ``alwayson_scripts``
    a1111_args: tuple[str, ...] = ()            # field names in the order of A1111's ``args`` list
    infotext: Mapping[str, str] = field(default_factory=dict)  # field -> infotext key: written, and read back
    ui: Builder | None = None


@dataclass(frozen=True)
class ScriptResult:
    """What a script returns. ``grid`` (when any) is shown and returned first and saved like A1111's grids."""

    images: list["Image.Image"]
    infotexts: list[str]
    seeds: list[int] = field(default_factory=list)
    grid: "Image.Image | None" = None
    grid_infotext: str = ""
    warnings: list[str] = field(default_factory=list)


class ScriptContext(Protocol):
    """What a running script may do; it runs as ONE job on the queue (one progress bar, one Interrupt)."""

    log: logging.Logger

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """One plain txt2img or img2img run inside this job: hooks, safety, saving as ``request`` says."""

    def progress(self, text: str, done: int, total: int) -> None:
        """The script's own progress ("Cell 3 of 12"), shown with the job's."""

    @property
    def interrupted(self) -> bool:
        """The user pressed Interrupt: return what is done."""

    def upscale(self, image: "Image.Image", width: int, height: int, upscaler: str) -> "Image.Image":
        """``image`` resized to ``width`` x ``height`` with an upscaler by name (as ``upscalers()`` lists)."""

    def upscalers(self) -> list[str]: ...

    def checkpoints(self) -> list[ModelInfo]: ...


@dataclass(frozen=True)
class ScriptRun:
    kind: str                       # TXT2IMG or IMG2IMG
    request: GenerationRequest      # the form's (or the API body's) request
    values: BaseModel | None        # the script's own values (its ``params`` model)
    context: ScriptContext


@dataclass(frozen=True)
class Script:
    """A selectable alternative to a plain run: A1111's Script dropdown, the API's ``script_name``."""

    title: str                                  # shown in the dropdown; ``script_name`` matches it, any case
    run: Callable[[ScriptRun], ScriptResult]
    params: type[BaseModel] | None = None
    tabs: tuple[str, ...] = (TXT2IMG, IMG2IMG)
    a1111_args: tuple[str, ...] = ()            # field names in the order of A1111's ``script_args``
    ui: Builder | None = None
    description: str = ""


@dataclass(frozen=True)
class Setting:
    """An entry in the Settings tab, under the extension's name; read with ``context.setting(key)``."""

    key: str
    default: Any                    # bool, int, float or str; the widget follows its type
    label: str
    choices: tuple[str, ...] = ()   # a dropdown
    minimum: float | None = None    # a slider when both bounds are given
    maximum: float | None = None


class Context(Protocol):
    """The running app as an extension may use it (``ext.context``)."""

    name: str
    data_dir: Path                  # <data dir>/extension-data/<name>/, the extension's own files
    log: logging.Logger

    def setting(self, key: str) -> Any:
        """The user's value of one of this extension's settings (its default until changed)."""

    def txt2img(self, request: Txt2ImgRequest) -> GenerationResult:
        """Queue a txt2img job like the UI does and wait for it."""

    def img2img(self, request: Img2ImgRequest) -> GenerationResult: ...

    def checkpoints(self) -> list[ModelInfo]: ...

    def load_image(self, source: Path | bytes) -> "Image.Image":
        """An image file or bytes, with the server's size and format limits (ExtensionError naming the problem)."""

    def save_image(self, image: "Image.Image", infotext: str = "", category: str = "extensions") -> Path:
        """Written atomically under ``outputs/<category>/`` with the infotext; returns its path."""

    def progress(self) -> dict[str, Any]:
        """The queue's progress as ``GET /sdapi/v1/progress`` reports it."""


H = TypeVar("H", bound=Callable[..., Any])


class Extension:
    """What ``setup(ext)`` receives: register hooks (usable as decorators), values, scripts and UI."""

    def __init__(self, name: str, context: Context):
        self.name = name
        self.context = context
        self.hooks: dict[str, list[Callable[..., Any]]] = {
            "before_job": [], "step": [], "image": [], "image_saved": [], "model_loaded": [], "app_started": []}
        self.params: Params | None = None
        self.scripts: list[Script] = []
        self.tabs: list[tuple[str, Callable[[], None]]] = []
        self.settings: list[Setting] = []

    def _hook(self, kind: str, fn: H) -> H:
        self.hooks[kind].append(fn)
        return fn

    def on_before_job(self, fn: Callable[[JobStart], None]) -> Callable[[JobStart], None]:
        return self._hook("before_job", fn)

    def on_step(self, fn: Callable[[StepState], None]) -> Callable[[StepState], None]:
        return self._hook("step", fn)

    def on_image(self, fn: Callable[[ImageResult], None]) -> Callable[[ImageResult], None]:
        return self._hook("image", fn)

    def on_image_saved(self, fn: Callable[[SavedImage], None]) -> Callable[[SavedImage], None]:
        return self._hook("image_saved", fn)

    def on_model_loaded(self, fn: Callable[[ModelInfo], None]) -> Callable[[ModelInfo], None]:
        return self._hook("model_loaded", fn)

    def on_app_started(self, fn: Callable[[AppStart], None]) -> Callable[[AppStart], None]:
        return self._hook("app_started", fn)

    def add_params(self, params: Params) -> None:
        if self.params is not None:
            raise ExtensionError(f"{self.name}: add_params may be called once")
        self.params = params

    def add_script(self, script: Script) -> None:
        self.scripts.append(script)

    def add_tab(self, title: str, build: Callable[[], None]) -> None:
        """A top-level tab; ``build`` creates its Gradio components (inside ``gr.Tab(title)``)."""
        self.tabs.append((title, build))

    def add_setting(self, setting: Setting) -> None:
        self.settings.append(setting)


# ---- Image helpers (part D)
from webui.extensions.images import GridLabel, labelled_grid  # noqa: E402  (appended: the helpers' own section)

__all__ += ["GridLabel", "labelled_grid"]

# ---- Image helpers (part E): tiled processing (webui/extensions/tiles.py)
from webui.extensions.tiles import Tile, TileGrid, combine_tiles, split_tiles  # noqa: E402

__all__ += ["Tile", "TileGrid", "split_tiles", "combine_tiles"]
