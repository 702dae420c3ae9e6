"""The Train tab's forms. A form is a button, its input widgets, and ``to_request`` turning the widgets' values into
the method's typed request (raising ``InvalidRequest`` naming the field); the tab wires the button to the training
service and the shared monitor. This module holds the contract (``FormParts``) and the LoRA / DreamBooth form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import gradio as gr

from webui.training.lora_request import CROPS, OPTIMIZERS, PRECISIONS, SCHEDULERS, LoraTrainRequest, from_dict


@dataclass
class FormParts:
    """What a Train-tab form gives the tab: its start button, the widgets read on click (in order), and how
    their values become a request."""

    button: gr.Button
    inputs: list[gr.components.Component]
    to_request: Callable[..., object]
    names: list[str] = field(default_factory=list)  # the setting each input fills (for the tab's error focus)


LORA = "LoRA"
DREAMBOOTH = "DreamBooth LoRA"
_DEFAULT = LoraTrainRequest(base_model="", data_dir="", output_name="")


def build_form(checkpoints: Sequence[str] = ()) -> FormParts:
    """The LoRA / DreamBooth-LoRA form (``checkpoints``: the base-model choices)."""
    widgets: dict[str, gr.components.Component] = {}
    d = _DEFAULT
    with gr.Row():
        kind = gr.Radio([LORA, DREAMBOOTH], value=LORA, label="Method", elem_id="train_lora_method")
        widgets["base_model"] = gr.Dropdown(list(checkpoints), value=checkpoints[0] if checkpoints else None,
                                            label="Base checkpoint", elem_id="train_lora_base_model",
                                            allow_custom_value=True)
        widgets["output_name"] = gr.Textbox(label="Output name (models/Lora/NAME.safetensors)",
                                            elem_id="train_lora_output_name")
    with gr.Row():
        widgets["data_dir"] = gr.Textbox(label="Image folder (image.png + image.txt captions)",
                                         elem_id="train_lora_data_dir")
        widgets["caption"] = gr.Textbox(label="One caption for all images (LoRA; empty: the .txt files)",
                                        elem_id="train_lora_caption")
    with gr.Row():
        widgets["instance_prompt"] = gr.Textbox(label="Instance prompt (DreamBooth)",
                                                placeholder="a photo of sks dog", elem_id="train_lora_instance")
        widgets["class_data_dir"] = gr.Textbox(label="Class images folder (DreamBooth prior preservation)",
                                               elem_id="train_lora_class_dir")
        widgets["class_prompt"] = gr.Textbox(label="Class prompt", placeholder="a photo of a dog",
                                             elem_id="train_lora_class_prompt")
        widgets["prior_loss_weight"] = gr.Number(d.prior_loss_weight, label="Prior loss weight", minimum=0)
    with gr.Row():
        widgets["max_train_steps"] = gr.Number(500, label="Steps (0: use epochs)", precision=0, minimum=0,
                                               elem_id="train_lora_steps")
        widgets["epochs"] = gr.Number(d.epochs, label="Epochs", precision=0, minimum=1)
        widgets["learning_rate"] = gr.Number(d.learning_rate, label="Learning rate", elem_id="train_lora_lr")
        widgets["lr_scheduler"] = gr.Dropdown(list(SCHEDULERS), value=d.lr_scheduler, label="LR scheduler")
        widgets["lr_warmup_steps"] = gr.Number(d.lr_warmup_steps, label="Warmup steps", precision=0, minimum=0)
    with gr.Row():
        widgets["rank"] = gr.Number(16, label="Rank", precision=0, minimum=1, elem_id="train_lora_rank")
        widgets["alpha"] = gr.Number(16, label="Alpha", minimum=0)
        widgets["batch_size"] = gr.Number(d.batch_size, label="Batch size", precision=0, minimum=1)
        widgets["gradient_accumulation"] = gr.Number(d.gradient_accumulation, label="Gradient accumulation",
                                                     precision=0, minimum=1)
        widgets["resolution"] = gr.Number(d.resolution, label="Resolution", precision=0, minimum=16,
                                          elem_id="train_lora_resolution")
        widgets["crop"] = gr.Radio(list(CROPS), value=d.crop, label="Aspect-ratio buckets or centre crop")
    with gr.Accordion("More settings", open=False):
        with gr.Row():
            widgets["mixed_precision"] = gr.Dropdown(list(PRECISIONS), value=d.mixed_precision,
                                                     label="Mixed precision")
            widgets["optimizer"] = gr.Dropdown(list(OPTIMIZERS), value=d.optimizer,
                                               label="Optimizer (adamw8bit: bitsandbytes, CUDA only)")
            widgets["seed"] = gr.Number(d.seed, label="Seed", precision=0, minimum=0)
            widgets["caption_extension"] = gr.Textbox(d.caption_extension, label="Caption file extension")
        with gr.Row():
            widgets["train_text_encoder"] = gr.Checkbox(d.train_text_encoder, label="Train the text encoder(s)")
            widgets["gradient_checkpointing"] = gr.Checkbox(d.gradient_checkpointing,
                                                            label="Gradient checkpointing (less memory, slower)")
            widgets["random_flip"] = gr.Checkbox(d.random_flip, label="Random horizontal flip")
            widgets["allow_generation_between_steps"] = gr.Checkbox(
                d.allow_generation_between_steps, label="Let generations run between training steps")
            widgets["save_on_cancel"] = gr.Checkbox(d.save_on_cancel, label="Save the LoRA when cancelled")
        with gr.Row():
            widgets["sample_prompts"] = gr.Textbox(label="Sample prompts (one a line)", lines=2,
                                                   elem_id="train_lora_sample_prompts")
            widgets["sample_every"] = gr.Number(d.sample_every, label="Sample every N steps (0: at the end)",
                                                precision=0, minimum=0, elem_id="train_lora_sample_every")
            widgets["sample_steps"] = gr.Number(d.sample_steps, label="Sample sampling steps", precision=0,
                                                minimum=1, elem_id="train_lora_sample_steps")
        with gr.Row():
            widgets["save_every"] = gr.Number(d.save_every, label="Resume state every N steps (0: at the end)",
                                              precision=0, minimum=0)
            widgets["keep_states"] = gr.Number(d.keep_states, label="Resume states kept", precision=0, minimum=1)
            widgets["resume_from"] = gr.Textbox(label="Resume from (a training job id or state file)",
                                                elem_id="train_lora_resume_from")
    button = gr.Button("Start training", variant="primary", elem_id="train_lora_start")
    names = list(widgets)

    def to_request(method: str, *values: Any) -> LoraTrainRequest:
        body = {name: value for name, value in zip(names, values) if value is not None}
        return from_dict(body, method="dreambooth_lora" if method == DREAMBOOTH else "lora")

    return FormParts(button=button, inputs=[kind, *widgets.values()], to_request=to_request,
                     names=["method", *names])
