"""The Train tab's CycleGAN / pix2pix form: the release's options as widgets, one request out.

One form for both GAN methods (a "Model" radio switches between them, and with it the release's per-model
defaults: ResNet-9 + instance norm + LSGAN for CycleGAN, U-Net-256 + batch norm + vanilla GAN for pix2pix).
``to_request`` returns a ``CycleGanRequest`` or a ``Pix2PixRequest``; the training service picks the method by the
request's type. Thin: every check lives in the request and the method (webui/training/gan_*).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import gradio as gr

from webui.errors import InvalidRequest
from webui.training.gan_request import NET_G_CHOICES, CycleGanRequest, Pix2PixRequest
from webui.training.request_fields import from_mapping
from webui.ui.train_form_common import FormParts, choices_of, values_by_field

CYCLEGAN, PIX2PIX = "CycleGAN", "pix2pix"
_CYCLE_DEFAULTS = CycleGanRequest.__dataclass_fields__
_PIX_DEFAULTS = Pix2PixRequest.__dataclass_fields__
# Widgets whose default differs between the two methods, in the order they are built below.
_SWITCHED = ("net_g", "norm", "gan_mode", "pool_size")


def _default(field: str, method: str = CYCLEGAN) -> Any:
    return (_CYCLE_DEFAULTS if method == CYCLEGAN else _PIX_DEFAULTS)[field].default


def build_form(generators: Sequence[str] | Callable[[], Sequence[str]] = ()) -> FormParts:
    """Build the widgets in the current Blocks context. ``generators``: names offered for "Continue from"
    (the style-transfer list, e.g. ``horse2zebra_AtoB``); any name in the method's folder may be typed."""
    widgets: dict[str, gr.components.Component] = {}
    method = gr.Radio([CYCLEGAN, PIX2PIX], value=CYCLEGAN, label="Model", elem_id="train_gan_method",
                      info="CycleGAN: two unpaired folders A and B. pix2pix: paired images (A|B side by side, or "
                           "two folders with matching file names).")
    with gr.Row():
        widgets["name"] = gr.Textbox("", label="Name", placeholder="horse2zebra", elem_id="train_gan_name",
                                     info="Saved as models/CycleGAN/NAME/ or models/pix2pix/NAME/")
        widgets["init_from"] = gr.Dropdown(choices=[""] + choices_of(generators), value="", allow_custom_value=True,
                                           label="Continue from (optional)", elem_id="train_gan_init_from")
        widgets["overwrite"] = gr.Checkbox(False, label="Overwrite an existing model of that name",
                                           elem_id="train_gan_overwrite")
    with gr.Row():
        widgets["dataset_a"] = gr.Textbox("", label="Folder A", placeholder="training/horses",
                                          info="Inside the data dir. pix2pix: input images (same names as in B)",
                                          elem_id="train_gan_dataset_a")
        widgets["dataset_b"] = gr.Textbox("", label="Folder B", placeholder="training/zebras",
                                          elem_id="train_gan_dataset_b")
    with gr.Row(visible=False) as pix_row:
        widgets["dataset"] = gr.Textbox("", label="Folder of A|B images (pix2pix, instead of folders A and B)",
                                        placeholder="training/facades", elem_id="train_gan_dataset")
        widgets["direction"] = gr.Radio(["AtoB", "BtoA"], value="AtoB", label="Direction",
                                        elem_id="train_gan_direction")
        widgets["lambda_l1"] = gr.Number(_default("lambda_l1", PIX2PIX), label="L1 weight (lambda_L1)",
                                         elem_id="train_gan_lambda_l1")
        widgets["dropout"] = gr.Checkbox(True, label="Dropout in the generator", elem_id="train_gan_dropout")
    with gr.Row():
        widgets["load_size"] = gr.Number(_default("load_size"), precision=0, label="Load size (resize to)",
                                         elem_id="train_gan_load_size")
        widgets["crop_size"] = gr.Number(_default("crop_size"), precision=0, label="Crop size (train on)",
                                         elem_id="train_gan_crop_size")
        widgets["flip"] = gr.Checkbox(True, label="Random horizontal flip", elem_id="train_gan_flip")
        widgets["batch_size"] = gr.Number(1, precision=0, label="Batch size", elem_id="train_gan_batch_size")
    with gr.Row():
        widgets["n_epochs"] = gr.Number(_default("n_epochs"), precision=0, label="Epochs at the initial rate",
                                        elem_id="train_gan_n_epochs")
        widgets["n_epochs_decay"] = gr.Number(_default("n_epochs_decay"), precision=0,
                                              label="Epochs decaying to zero", elem_id="train_gan_n_epochs_decay")
        widgets["steps"] = gr.Number(0, precision=0, label="Max steps (0 = by epochs)", elem_id="train_gan_steps")
        widgets["lr"] = gr.Number(_default("lr"), label="Learning rate", elem_id="train_gan_lr")
    with gr.Accordion("Networks and losses", open=False):
        with gr.Row():
            widgets["net_g"] = gr.Dropdown(list(NET_G_CHOICES), value=_default("net_g"), label="Generator",
                                           elem_id="train_gan_net_g")
            widgets["norm"] = gr.Dropdown(["instance", "batch", "none"], value=_default("norm"), label="Norm",
                                          elem_id="train_gan_norm")
            widgets["gan_mode"] = gr.Dropdown(["lsgan", "vanilla"], value=_default("gan_mode"), label="GAN loss",
                                              elem_id="train_gan_gan_mode")
            widgets["pool_size"] = gr.Number(_default("pool_size"), precision=0, label="Image pool size",
                                             elem_id="train_gan_pool_size")
        with gr.Row():
            widgets["ngf"] = gr.Number(64, precision=0, label="Generator filters (ngf)", elem_id="train_gan_ngf")
            widgets["ndf"] = gr.Number(64, precision=0, label="Discriminator filters (ndf)", elem_id="train_gan_ndf")
            widgets["n_layers_d"] = gr.Number(3, precision=0, label="Discriminator layers",
                                              elem_id="train_gan_n_layers_d")
            widgets["beta1"] = gr.Number(_default("beta1"), label="Adam beta1", elem_id="train_gan_beta1")
        with gr.Row(visible=True) as cycle_row:
            widgets["lambda_a"] = gr.Number(_default("lambda_a"), label="Cycle weight A (lambda_A)",
                                            elem_id="train_gan_lambda_a")
            widgets["lambda_b"] = gr.Number(_default("lambda_b"), label="Cycle weight B (lambda_B)",
                                            elem_id="train_gan_lambda_b")
            widgets["lambda_identity"] = gr.Number(_default("lambda_identity"), label="Identity weight",
                                                   elem_id="train_gan_lambda_identity")
        with gr.Row():
            widgets["seed"] = gr.Number(0, precision=0, label="Seed", elem_id="train_gan_seed")
            widgets["save_every"] = gr.Number(0, precision=0, label="Resume state every N steps (0 = at the end)",
                                              elem_id="train_gan_save_every")
            widgets["sample_every"] = gr.Number(100, precision=0, label="Sample images every N steps (0 = never)",
                                                elem_id="train_gan_sample_every")
    button = gr.Button("Train", variant="primary", elem_id="train_gan_start")

    def switch(chosen: str):
        cycle = chosen == CYCLEGAN
        defaults = [gr.update(value=_default(field, chosen)) for field in _SWITCHED]
        return [gr.update(visible=not cycle), gr.update(visible=cycle), *defaults]

    method.change(switch, inputs=[method], outputs=[pix_row, cycle_row, *(widgets[f] for f in _SWITCHED)],
                  show_progress="hidden", api_name=False)
    fields = list(widgets)
    return FormParts(button=button, inputs=[method, *widgets.values()],
                     to_request=lambda chosen, *values: to_request(fields, chosen, values))


def to_request(fields: Sequence[str], method: str, values: Sequence[Any]) -> CycleGanRequest | Pix2PixRequest:
    """The request for the chosen method from the form's values (fields the method does not take are ignored:
    the other method's widgets stay on the page)."""
    if method not in (CYCLEGAN, PIX2PIX):
        raise InvalidRequest("method", f"choose {CYCLEGAN} or {PIX2PIX} (got {method!r})")
    request_type = CycleGanRequest if method == CYCLEGAN else Pix2PixRequest
    names = [field.name for field in dataclasses.fields(request_type)]
    return from_mapping(request_type, values_by_field(fields, values, keep=names))
