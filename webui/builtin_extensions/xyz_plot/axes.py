"""The X/Y/Z plot's axes: what each varies in the request, how its values are typed, checked and labelled.

Labels and their order are A1111's (scripts/xyz_grid.py ``axis_options``), so infotexts and A1111 clients' axis
indices mean the same here. A1111 numbers its axes per tab (txt2img and img2img lists differ); ``A1111_AXES``
keeps both lists, including the axes this app does not have, so that an index maps to the right label or to a
clear refusal.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from webui.extensions.api import IMG2IMG, TXT2IMG

from .values import BOOL, FLOAT, INT, PERMUTATIONS, TEXT

BOTH = (TXT2IMG, IMG2IMG)
T2I = (TXT2IMG,)
I2I = (IMG2IMG,)

# What a name-checked axis is checked against (see plot.py): the app's checkpoints or upscalers.
CHECKPOINT, REFINER, HIRES_UPSCALER = "checkpoint", "refiner", "hires upscaler"

Fields = dict[str, Any]


def _prompt_sr(fields: Fields, value: str, values: list[Any]) -> None:
    # the first value is what is searched for (checked before any image is made)
    fields["prompt"] = fields["prompt"].replace(values[0], value)
    fields["negative_prompt"] = fields["negative_prompt"].replace(values[0], value)


def _prompt_order(fields: Fields, order: tuple[str, ...], values: list[Any]) -> None:
    """The tokens moved into ``order`` where they first stand in the prompt (A1111's apply_order)."""
    prompt: str = fields["prompt"]
    found = sorted((prompt.find(token), token) for token in order)
    parts = []
    for _, token in found:
        at = prompt.find(token)
        parts.append(prompt[:at])
        prompt = prompt[at + len(token):]
    fields["prompt"] = "".join(part + order[i] for i, part in enumerate(parts)) + prompt


@dataclass(frozen=True)
class Axis:
    label: str
    kind: str                                  # values.INT, FLOAT, TEXT, BOOL or PERMUTATIONS
    field: str | None = None                   # the request field the value is set into
    apply: Callable[[Fields, Any, list[Any]], None] | None = None  # instead of ``field``
    tabs: tuple[str, ...] = BOTH
    cost: float = 0.0                          # slow to change (a checkpoint load): varied least often
    names: str | None = None                   # checked against the app's CHECKPOINT / REFINER / HIRES_UPSCALER
    label_style: str = "named"                 # named "Steps: 20", value "Euler a", path, join, nothing

    def set(self, fields: Fields, value: Any, values: list[Any]) -> None:
        if self.apply is not None:
            self.apply(fields, value, values)
        elif self.field is not None:
            fields[self.field] = value

    def caption(self, value: Any) -> str:
        """The grid label of one value (A1111's format_value_add_label and friends)."""
        if isinstance(value, float):
            value = round(value, 8)
            value = int(value) if value.is_integer() and self.kind == INT else value
        if self.label_style == "nothing":
            return ""
        if self.label_style == "value":
            return str(value)
        if self.label_style == "path":
            return os.path.basename(str(value))
        if self.label_style == "join":
            return ", ".join(value)
        return f"{self.label}: {value}"


NOTHING = "Nothing"
AXES: tuple[Axis, ...] = (
    Axis(NOTHING, TEXT, label_style="nothing"),
    Axis("Seed", INT, "seed"),
    Axis("Var. seed", INT, "subseed"),
    Axis("Var. strength", FLOAT, "subseed_strength"),
    Axis("Steps", INT, "steps"),
    Axis("Hires steps", INT, "hr_second_pass_steps", tabs=T2I),
    Axis("CFG Scale", FLOAT, "cfg_scale"),
    Axis("Image CFG Scale", FLOAT, "image_cfg_scale", tabs=I2I),
    Axis("Prompt S/R", TEXT, apply=_prompt_sr, label_style="value"),
    Axis("Prompt order", PERMUTATIONS, apply=_prompt_order, label_style="join"),
    Axis("Sampler", TEXT, "sampler_name", label_style="value"),
    Axis("Hires sampler", TEXT, "hr_sampler_name", tabs=T2I),
    Axis("Checkpoint name", TEXT, "checkpoint", cost=1.0, names=CHECKPOINT, label_style="path"),
    Axis("Sigma Churn", FLOAT, "s_churn"),
    Axis("Sigma min", FLOAT, "s_tmin"),
    Axis("Sigma max", FLOAT, "s_tmax"),
    Axis("Sigma noise", FLOAT, "s_noise"),
    Axis("Schedule type", TEXT, "scheduler"),
    Axis("Schedule min sigma", FLOAT, "sigma_min"),
    Axis("Schedule max sigma", FLOAT, "sigma_max"),
    Axis("Schedule rho", FLOAT, "rho"),
    Axis("Eta", FLOAT, "eta"),
    Axis("Clip skip", INT, "clip_skip"),
    Axis("Denoising", FLOAT, "denoising_strength"),
    Axis("Hires upscaler", TEXT, "hr_upscaler", tabs=T2I, names=HIRES_UPSCALER),
    Axis("VAE", TEXT, "sd_vae", cost=0.7),
    Axis("Always discard next-to-last sigma", BOOL, "always_discard_next_to_last_sigma"),
    Axis("SGM noise multiplier", BOOL, "sgm_noise_multiplier"),
    Axis("Refiner checkpoint", TEXT, "refiner_checkpoint", cost=1.0, names=REFINER, label_style="path"),
    Axis("Refiner switch at", FLOAT, "refiner_switch_at"),
    Axis("RNG source", TEXT, "randn_source"),
    # not in A1111's list (so never reached by an A1111 index): ours
    Axis("Hires upscale", FLOAT, "hr_scale", tabs=T2I),
)

# A1111's axis_options in its order, with the tab each belongs to: index i of a tab's list is what A1111 clients
# send as x_type/y_type/z_type. Labels we do not have are refused by name.
_A1111 = (
    ("Nothing", BOTH), ("Seed", BOTH), ("Var. seed", BOTH), ("Var. strength", BOTH), ("Steps", BOTH),
    ("Hires steps", T2I), ("CFG Scale", BOTH), ("Image CFG Scale", I2I), ("Prompt S/R", BOTH),
    ("Prompt order", BOTH), ("Sampler", T2I), ("Hires sampler", T2I), ("Sampler", I2I), ("Checkpoint name", BOTH),
    ("Negative Guidance minimum sigma", BOTH), ("Sigma Churn", BOTH), ("Sigma min", BOTH), ("Sigma max", BOTH),
    ("Sigma noise", BOTH), ("Schedule type", BOTH), ("Schedule min sigma", BOTH), ("Schedule max sigma", BOTH),
    ("Schedule rho", BOTH), ("Eta", BOTH), ("Clip skip", BOTH), ("Denoising", BOTH),
    ("Initial noise multiplier", BOTH), ("Extra noise", BOTH), ("Hires upscaler", T2I),
    ("Cond. Image Mask Weight", I2I), ("VAE", BOTH), ("Styles", BOTH), ("UniPC Order", BOTH), ("Face restore", BOTH),
    ("Token merging ratio", BOTH), ("Token merging ratio high-res", BOTH),
    ("Always discard next-to-last sigma", BOTH), ("SGM noise multiplier", BOTH), ("Refiner checkpoint", BOTH),
    ("Refiner switch at", BOTH), ("RNG source", BOTH),
)
A1111_AXES: dict[str, tuple[str, ...]] = {tab: tuple(label for label, tabs in _A1111 if tab in tabs) for tab in BOTH}


def axes_for(tab: str) -> tuple[Axis, ...]:
    return tuple(axis for axis in AXES if tab in axis.tabs)


def labels_for(tab: str) -> tuple[str, ...]:
    return tuple(axis.label for axis in axes_for(tab))


def find_axis(tab: str, label: str) -> Axis:
    for axis in axes_for(tab):
        if axis.label.lower() == label.strip().lower():
            return axis
    raise KeyError(label)


def label_of(tab: str, value: Any) -> Any:
    """An axis type as clients send it, as our label: A1111's index into its own list for ``tab``, or a label in
    any case. Unknown ones are returned unchanged for the model to refuse, except an A1111 index of an axis we do
    not have, which raises ValueError naming it."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
        index = int(value)
        a1111 = A1111_AXES[tab]
        if not 0 <= index < len(a1111):
            raise ValueError(f"axis index {index} is not in A1111's {tab} list (0 to {len(a1111) - 1})")
        value = a1111[index]
        try:
            return find_axis(tab, value).label
        except KeyError:
            raise ValueError(f"A1111's axis {index} ('{value}') is not supported here; axes: "
                             f"{', '.join(labels_for(tab))}") from None
    if isinstance(value, str):
        try:
            return find_axis(tab, value).label
        except KeyError:
            return value
    return value
