"""The txt2img tab: widgets in, a typed request out, progress streamed back. No generation logic lives here."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from webui.hires_fix import UPSCALERS as HIRES_UPSCALERS
from webui.parameters import BY_NAME, TXT2IMG, Param, widget_rows
from webui.services.container import Services
from webui.types import Txt2ImgRequest
from webui.ui import extra_networks, prompt_tools, scripts_area, styles
from webui.ui.generation_form import (Outputs, PromptRow, Widgets, build_outputs, build_prompt_row,
                                      build_settings_and_reuse, build_widgets, option_fields, request_fields, wire,
                                      wire_reuse)


@dataclass
class Txt2ImgTab:
    row: PromptRow
    settings: Widgets
    outputs: Outputs
    networks: extra_networks.ExtraNetworksPanel | None = None
    scripts: scripts_area.ScriptsArea | None = None  # the Script dropdown and the extensions' panels

    def fields(self) -> Widgets:
        """Widgets by request field name (PNG Info and History fill these)."""
        return {"prompt": self.row.prompt, "negative_prompt": self.row.negative_prompt, **self.settings}


def refiner_choices(services: Services) -> list[str]:
    """A1111's refiner dropdown: "None", then every checkpoint by title."""
    return ["None"] + [info.title for info in services.registry.list()]


def build_refiner(services: Services) -> Widgets:
    """A1111's "Refiner" accordion: the checkpoint to switch to and when (widgets from the parameter table).

    A pasted infotext may name a refiner by "name [hash]" or one not on disk: the dropdown keeps such a value and
    the job says clearly when it cannot be found.
    """
    with gr.Accordion("Refiner", open=False, elem_id="txt2img_refiner"):
        widgets = build_widgets(widget_rows("txt2img", panel="refiner"), "txt2img", services.settings.limits,
                                refiner_checkpoint={"choices": refiner_choices(services), "value": "None",
                                                    "allow_custom_value": True})
    dropdown = widgets["refiner_checkpoint"]
    # The checkpoints may have changed since the page was built (refresh, downloads): list them anew on focus.
    dropdown.focus(lambda: gr.update(choices=refiner_choices(services)), None, dropdown, api_visibility="private")
    return widgets


def hires_upscalers(services: Services) -> list[str]:
    """Hires fix's upscalers: the latent modes and built-in resizers, then the upscaler model files."""
    models = [m.name for m in services.upscaling.models()] if services.upscaling is not None else []
    return [*HIRES_UPSCALERS, *models]


def _hires_rows() -> list[Param]:
    """The accordion's rows in A1111's order: the strength (a row img2img shares) after the hires steps."""
    rows = [p for p in widget_rows(TXT2IMG, panel="hires") if p.name != "denoising_strength"]
    at = next(i for i, p in enumerate(rows) if p.name == "hr_second_pass_steps") + 1
    return [*rows[:at], BY_NAME["denoising_strength"], *rows[at:]]


def build(services: Services, checkpoint: gr.Dropdown) -> Txt2ImgTab:
    row = build_prompt_row("txt2img", "a watercolor fox in a snowy forest",
                           under_buttons=lambda: styles.build(services, "txt2img"))
    networks = extra_networks.build(services, "txt2img")
    with gr.Row():
        with gr.Column():
            settings, reuse = build_settings_and_reuse(services, "txt2img")
            # A1111's "Hires. fix": upscale and run a second, img2img pass (webui/pipelines/hires.py).
            with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hires_fix"):
                settings.update(build_widgets(_hires_rows(), "txt2img", services.settings.limits,
                                              hr_upscaler={"choices": hires_upscalers(services)}))
                hr_upscaler = settings["hr_upscaler"]
                # Upscaler models may be added while the page is open: list them anew on focus.
                hr_upscaler.focus(lambda: gr.update(choices=hires_upscalers(services)), None, hr_upscaler,
                                  api_visibility="private")
            settings.update(build_refiner(services))
            area = scripts_area.build(services, TXT2IMG)
        with gr.Column():
            outputs = build_outputs("txt2img", services.settings.exposed)
    tab = Txt2ImgTab(row, settings, outputs, networks, area)

    def submit(values: dict, confirm=None):
        fields = dict(option_fields(services, TXT2IMG, settings), **request_fields(values, settings),
                      prompt=values[row.prompt], negative_prompt=values[row.negative_prompt])
        fields = styles.styled_fields(services, values[row.extra.dropdown], fields)
        request = Txt2ImgRequest.parse(checkpoint=values[checkpoint] or None, **fields,
                                       extensions=area.extension_values(values))
        return area.submit(services, request, values,
                           lambda plain: services.generation.submit_txt2img(plain, confirm))

    inputs = (set(settings.values()) | {row.prompt, row.negative_prompt, checkpoint, row.extra.dropdown}
              | area.inputs())
    wire(services, row, outputs, inputs, submit, api_name="txt2img")
    styles.wire(services, row.extra, row)
    prompt_tools.wire_token_counters(services, row, row.extra.dropdown, settings["steps"])
    wire_reuse(reuse, outputs.info, settings)
    return tab
