"""The generation forms start, on every page load, from the Settings tab's "Defaults" (sampler, schedule type,
steps, CFG scale), as A1111's users set them in its ui-config; the API keeps A1111's own defaults."""

from __future__ import annotations

from typing import Any

import gradio as gr

from webui.samplers import schedules_for
from webui.services.options import OptionsService
from webui.ui.generation_form import Widgets

FIELDS = {"sampler_name": "studio_default_sampler", "scheduler": "studio_default_scheduler",
          "steps": "studio_default_steps", "cfg_scale": "studio_default_cfg_scale"}


def values(options: OptionsService) -> list[Any]:
    """(sampler, scheduler update, steps, cfg) for one form: the schedule choices follow the sampler."""
    sampler = options.value(FIELDS["sampler_name"])
    choices = list(schedules_for(sampler))
    scheduler = options.value(FIELDS["scheduler"])
    return [sampler, gr.update(choices=choices, value=scheduler if scheduler in choices else "Automatic"),
            options.value(FIELDS["steps"]), options.value(FIELDS["cfg_scale"])]


def wire(demo: gr.Blocks, forms: list[Widgets], options: OptionsService) -> None:
    outputs = [form[name] for form in forms for name in FIELDS]
    demo.load(lambda: values(options) * len(forms), None, outputs, api_visibility="private")
