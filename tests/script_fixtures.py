"""Test extensions built in code (no files): a grid script that calls generate twice, scripts that fail, and an
always-on panel with A1111 args; plus services over them (``with_extensions``)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import BaseModel, Field

from webui.extensions.api import (Extension, ExtensionError, Params, Script, ScriptResult, ScriptRun,
                                  with_infotext_fields)
from tests.conftest import install, make_settings
from webui.services.container import Services, build_services


class TwoSeeds(BaseModel):
    """Two runs at seed and seed + step, side by side in a grid."""

    step: int = Field(1, ge=1, le=100, title="Seed step", description="added to the seed for the second run")
    label: str = Field("pair", max_length=20, description="written into the infotext")
    mode: Literal["side", "stacked"] = "side"
    fail: bool = False


class Marker(BaseModel):
    strength: float = Field(0.5, ge=0, le=1)
    note: str = Field("", max_length=10)
    on: bool = False


class Recorder:
    """What the scripts saw, and a gate a test may hold between the two runs."""

    def __init__(self):
        self.progress: list[tuple[str, int, int]] = []
        self.interrupted_after_first: bool | None = None
        self.between = threading.Event()   # set by the script after its first run
        self.go_on = threading.Event()     # the script waits on it (when ``hold``) before its second run
        self.hold = False
        self.values: list[BaseModel | None] = []
        self.requests: list = []


def two_seeds(recorder: Recorder):
    def run(job: ScriptRun) -> ScriptResult:
        values = job.values
        assert isinstance(values, TwoSeeds)
        recorder.values.append(values)
        recorder.requests.append(job.request)
        ctx = job.context
        images, infotexts, seeds = [], [], []
        for k, seed in enumerate((job.request.seed, job.request.seed + values.step)):
            if k == 1:
                recorder.between.set()
                if recorder.hold:
                    recorder.go_on.wait(30)
                recorder.interrupted_after_first = ctx.interrupted
                if ctx.interrupted:
                    break
            ctx.progress(f"Run {k + 1} of 2", k, 2)
            recorder.progress.append((f"Run {k + 1} of 2", k, 2))
            if values.fail and k == 1:
                raise ExtensionError("the second run was refused on purpose")
            result = ctx.generate(job.request.model_copy(update={"seed": seed, "n_iter": 1, "batch_size": 1}))
            images += result.images
            seeds += result.seeds
            infotexts += [with_infotext_fields(t, {"Script": "Two seeds", "Pair label": values.label})
                          for t in result.infotexts]
        grid = None
        if images:
            w, h = images[0].size
            across = values.mode == "side"
            grid = Image.new("RGB", (w * len(images), h) if across else (w, h * len(images)), "white")
            for i, image in enumerate(images):
                grid.paste(image, (i * w, 0) if across else (0, i * h))
        return ScriptResult(images=images, infotexts=infotexts, seeds=seeds, grid=grid,
                            grid_infotext=infotexts[0] if infotexts else "")
    return run


def crash(job: ScriptRun) -> ScriptResult:
    return {"oops": 1}["missing"]  # a KeyError: a bug in the script


def plain(job: ScriptRun) -> ScriptResult:
    """Makes an image itself (no generate): it is finished and saved by the service."""
    image = Image.new("RGB", (job.request.width, job.request.height), (200, 30, 30))
    return ScriptResult(images=[image], infotexts=[f"{job.request.prompt}\nSteps: 1, Seed: 7, Script: Plain red"],
                        seeds=[7])


class Upscale(BaseModel):
    upscaler: str = "Lanczos"


def upscaled(job: ScriptRun) -> ScriptResult:
    """Doubles a generated image with an upscaler by name; lists what the context offers in the infotext."""
    ctx = job.context
    result = ctx.generate(job.request)
    image = ctx.upscale(result.images[0], 2 * result.images[0].width, 2 * result.images[0].height,
                        job.values.upscaler)
    names = "/".join(ctx.upscalers())
    models = "/".join(m.name for m in ctx.checkpoints())
    text = with_infotext_fields(result.infotexts[0], {"Upscalers": names, "Checkpoints": models})
    return ScriptResult(images=[image], infotexts=[text], seeds=result.seeds[:1])


def make_extension(recorder: Recorder) -> Extension:
    ext = Extension("testext", context=None)  # type: ignore[arg-type] - the scripts do not use ext.context
    ext.add_script(Script("Two seeds", two_seeds(recorder), params=TwoSeeds,
                          a1111_args=("step", "label", "mode", "fail"), description="two runs in a grid"))
    ext.add_script(Script("Crashing script", crash))
    ext.add_script(Script("Plain red", plain, tabs=("txt2img",)))
    ext.add_script(Script("Upscaled", upscaled, params=Upscale, tabs=("img2img",)))
    ext.add_params(Params(Marker, title="Marker panel", a1111_name="Marker", a1111_args=("on", "strength", "note"),
                          infotext={"strength": "Marker strength", "note": "Marker note"}))
    return ext


def services_with(data_dir: Path, model_files, tiny_loader, *extensions: Extension) -> Services:
    """Services over the tiny checkpoints whose extensions include ``extensions`` (built in code): their hooks,
    values and scripts run as a loaded extension's would."""
    install(model_files["single"], data_dir)
    install(model_files["other"], data_dir)
    return build_services(make_settings(data_dir), load=tiny_loader, extensions=extensions)


def ui_extension() -> Extension:
    """A tab that works, a tab whose build raises, and settings entries of each kind."""
    import gradio as gr

    from webui.extensions.api import Setting

    ext = Extension("uiext", context=None)  # type: ignore[arg-type]

    def good() -> None:
        gr.Markdown("Hello from uiext", elem_id="uiext_hello")

    def bad() -> None:
        raise RuntimeError("no widgets today")

    def custom(defaults: BaseModel) -> dict:
        # The extension's own widgets: a plain number box where the model would give a slider.
        return {"step": gr.Number(value=defaults.step, label="Custom step", elem_id="uiext_custom_step")}

    def broken_panel(defaults: BaseModel) -> dict:
        raise ValueError("panel code is broken")

    def echo(job: ScriptRun) -> ScriptResult:
        result = job.context.generate(job.request.model_copy(update={"seed": job.request.seed + job.values.step}))
        return ScriptResult(images=result.images, infotexts=result.infotexts, seeds=result.seeds)

    ext.add_script(Script("Custom UI", echo, params=TwoSeeds, ui=custom, tabs=("txt2img",)))
    ext.add_script(Script("Broken panel", echo, params=TwoSeeds, ui=broken_panel, tabs=("txt2img",)))
    ext.add_tab("UI ext", good)
    ext.add_tab("Broken", bad)
    ext.add_setting(Setting("greeting", "hi", "Greeting"))
    ext.add_setting(Setting("count", 3, "How many", minimum=1, maximum=10))
    ext.add_setting(Setting("style", "plain", "Style", choices=("plain", "fancy")))
    ext.add_setting(Setting("loud", False, "Loud"))
    return ext
