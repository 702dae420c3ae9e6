"""The generation forms start, on every page load, from the Settings tab's "Defaults" (sampler, schedule type,
steps, CFG scale), as A1111's users set them in its ui-config; the API keeps A1111's own defaults.

Only a field still at the value the page was built with is changed: a value typed while the page loaded (a quick
user, a browser test) is never overwritten."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.parameters import BY_NAME
from webui.samplers import schedules_for
from webui.services.options import OptionsService
from webui.ui.generation_form import Widgets

FIELDS = {"sampler_name": "studio_default_sampler", "scheduler": "studio_default_scheduler",
          "steps": "studio_default_steps", "cfg_scale": "studio_default_cfg_scale"}


def _untouched(name: str, value: Any) -> bool:
    built = BY_NAME[name].default
    if isinstance(built, (int, float)) and not isinstance(built, bool):
        try:
            return float(value) == float(built)
        except (TypeError, ValueError):
            return False
    return value == built


def values(options: OptionsService, sampler: Any = None, scheduler: Any = None, steps: Any = None,
           cfg_scale: Any = None) -> list[Any]:
    """(sampler, scheduler, steps, cfg) updates for one form showing these values: each field still at the built
    default gets the option's default; the schedule choices follow a sampler that changes."""
    current = {"sampler_name": sampler, "scheduler": scheduler, "steps": steps, "cfg_scale": cfg_scale}
    wanted = {name: options.value(key) for name, key in FIELDS.items()}
    out: dict[str, Any] = {name: gr.update() for name in FIELDS}
    for name in ("steps", "cfg_scale"):
        if _untouched(name, current[name]) and not _untouched(name, wanted[name]):
            out[name] = wanted[name]
    if _untouched("sampler_name", sampler) and wanted["sampler_name"] != sampler:
        sampler = wanted["sampler_name"]
        choices = list(schedules_for(sampler))
        keep = scheduler if scheduler in choices else "Automatic"
        out["sampler_name"] = sampler
        out["scheduler"] = gr.update(choices=choices, value=keep)
    if _untouched("scheduler", scheduler) and wanted["scheduler"] != scheduler:
        choices = list(schedules_for(sampler))
        if wanted["scheduler"] in choices:
            out["scheduler"] = gr.update(choices=choices, value=wanted["scheduler"])
    return [out[name] for name in FIELDS]


def wire(demo: gr.Blocks, forms: list[Widgets], options: OptionsService) -> None:
    fields = [form[name] for form in forms for name in FIELDS]

    def load(*shown: Any) -> list[Any]:
        per_form = len(FIELDS)
        return [update for start in range(0, len(shown), per_form)
                for update in values(options, *shown[start:start + per_form])]

    demo.load(load, fields, fields, api_visibility="private")
