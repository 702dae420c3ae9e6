"""The Train tab's textual-inversion form, with A1111's Train-tab labels and defaults.

Thin: the widgets' values become one ``TextualInversionRequest`` (webui/training/ti_request.py); every check
lives there and in the method (webui/training/textual_inversion.py).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import gradio as gr

from webui.training.ti_request import TextualInversionRequest, builtin_templates, ti_from_dict
from webui.ui.train_form_common import FormParts, choices_of, values_by_field

_DEFAULTS = TextualInversionRequest.__dataclass_fields__


def _default(field: str) -> Any:
    return _DEFAULTS[field].default


def build_form(checkpoints: Sequence[str] | Callable[[], Sequence[str]] = ()) -> FormParts:
    """Build the widgets in the current Blocks context. ``checkpoints``: titles offered to train on."""
    widgets: dict[str, gr.components.Component] = {}
    choices = choices_of(checkpoints)
    with gr.Row():
        widgets["name"] = gr.Textbox("", label="Name", placeholder="my-style", elem_id="train_ti_name",
                                     info="The word to use in prompts; saved as embeddings/NAME.safetensors")
        widgets["checkpoint"] = gr.Dropdown(choices=choices, value=choices[0] if choices else None,
                                            allow_custom_value=True, label="Checkpoint to train on",
                                            elem_id="train_ti_checkpoint")
        widgets["overwrite"] = gr.Checkbox(False, label="Overwrite Old Embedding", elem_id="train_ti_overwrite")
    with gr.Row():
        widgets["init_text"] = gr.Textbox(_default("init_text"), label="Initialization text",
                                          elem_id="train_ti_init_text")
        widgets["num_vectors"] = gr.Slider(1, 75, value=_default("num_vectors"), step=1,
                                           label="Number of vectors per token", elem_id="train_ti_num_vectors")
    with gr.Row():
        widgets["dataset"] = gr.Textbox("", label="Dataset directory", placeholder="training/my-style",
                                        info="Inside the data dir; captions from image.txt or the file name",
                                        elem_id="train_ti_dataset")
        widgets["template"] = gr.Dropdown(builtin_templates(), value=_default("template"), allow_custom_value=True,
                                          label="Prompt template",
                                          info="Or a .txt in textual_inversion_templates/ under the data dir",
                                          elem_id="train_ti_template")
    with gr.Row():
        widgets["learn_rate"] = gr.Textbox(_default("learn_rate"), label="Embedding Learning rate",
                                           placeholder="0.005 or 0.005:100, 1e-3:1000, 1e-5",
                                           elem_id="train_ti_learn_rate")
        widgets["batch_size"] = gr.Number(_default("batch_size"), precision=0, label="Batch size",
                                          elem_id="train_ti_batch_size")
        widgets["gradient_accumulation"] = gr.Number(_default("gradient_accumulation"), precision=0,
                                                     label="Gradient accumulation steps",
                                                     elem_id="train_ti_gradient_accumulation")
    with gr.Row():
        widgets["width"] = gr.Slider(64, 2048, value=_default("width"), step=8, label="Width",
                                     elem_id="train_ti_width")
        widgets["height"] = gr.Slider(64, 2048, value=_default("height"), step=8, label="Height",
                                      elem_id="train_ti_height")
        widgets["steps"] = gr.Number(_default("steps"), precision=0, label="Max steps", elem_id="train_ti_steps")
    with gr.Row():
        widgets["sample_every"] = gr.Number(_default("sample_every"), precision=0,
                                            label="Save an image every N steps, 0 to disable",
                                            elem_id="train_ti_sample_every")
        widgets["save_every"] = gr.Number(_default("save_every"), precision=0,
                                          label="Save a resume state every N steps, 0 to disable",
                                          elem_id="train_ti_save_every")
        widgets["sample_prompt"] = gr.Textbox("", label="Preview prompt (empty = from the template)",
                                              elem_id="train_ti_sample_prompt")
    with gr.Row():
        widgets["shuffle_tags"] = gr.Checkbox(False, label="Shuffle tags by ',' when creating prompts.",
                                              elem_id="train_ti_shuffle_tags")
        widgets["tag_drop_out"] = gr.Slider(0, 1, value=0, step=0.1, label="Drop out tags when creating prompts.",
                                            elem_id="train_ti_tag_drop_out")
        widgets["seed"] = gr.Number(_default("seed"), precision=0, label="Seed", elem_id="train_ti_seed")
    button = gr.Button("Train Embedding", variant="primary", elem_id="train_ti_start")
    fields = list(widgets)
    return FormParts(button=button, inputs=list(widgets.values()),
                     to_request=lambda *values: to_request(fields, values))


def to_request(fields: Sequence[str], values: Sequence[Any]) -> TextualInversionRequest:
    return ti_from_dict(values_by_field(fields, values))
