"""The settings of a LoRA / DreamBooth-LoRA run, as one frozen dataclass (torch-free: the UI and API import it).

``from_dict`` turns an API body (or the form's values) into a request and refuses every bad value with
``InvalidRequest`` naming the field; what needs the disk or the model (folders, images, captions, memory) is
checked by ``webui.training.lora_training.check``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from webui.errors import InvalidRequest

SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear")
PRECISIONS = ("no", "fp16", "bf16")
CROPS = ("bucket", "center")
OPTIMIZERS = ("adamw", "adamw8bit")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,99}$")


@dataclass(frozen=True)
class LoraTrainRequest:
    """One LoRA (``dreambooth=False``) or DreamBooth-LoRA run on a checkpoint from models/Stable-diffusion."""

    base_model: str                      # checkpoint title, name or hash
    data_dir: str                        # folder of images (+ NAME.txt captions unless caption/instance_prompt)
    output_name: str                     # models/Lora/<output_name>.safetensors
    dreambooth: bool = False
    caption: str = ""                    # one caption for every image (LoRA); empty: NAME.txt beside each image
    caption_extension: str = ".txt"
    instance_prompt: str = ""            # DreamBooth: "a photo of sks dog"
    class_data_dir: str = ""             # DreamBooth prior preservation: class images ...
    class_prompt: str = ""               # ... and their prompt
    prior_loss_weight: float = 1.0
    max_train_steps: int = 0             # > 0: this many optimizer steps; 0: ``epochs`` passes over the data
    epochs: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    rank: int = 4
    alpha: float = 4.0
    batch_size: int = 1
    gradient_accumulation: int = 1
    resolution: int = 512
    crop: str = "bucket"                 # "bucket": kohya-style aspect-ratio buckets; "center": square centre crop
    random_flip: bool = False
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"             # "adamw8bit": bitsandbytes' 8-bit AdamW (CUDA only)
    train_text_encoder: bool = False
    seed: int = 0
    sample_prompts: tuple[str, ...] = ()
    sample_every: int = 0                # steps; 0: samples only at the end (when prompts are given)
    sample_steps: int = 20
    save_every: int = 0                  # steps between resume states; 0: only at the end
    keep_states: int = 2                 # resume files kept per run
    save_on_cancel: bool = False         # write the LoRA as it stands when the run is cancelled
    allow_generation_between_steps: bool = True
    resume_from: str = ""                # a training job id or a resume-state file
    method: str = field(default="lora", repr=False)

    @property
    def prompt_for_all(self) -> str:
        """The caption every image shares, or "" when captions come from files."""
        return self.instance_prompt if self.dreambooth else self.caption

    def settings_json(self) -> dict[str, Any]:
        """The settings as JSON-able values (written into the artifact's metadata)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


def _coerce(name: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise InvalidRequest(name, "must be true or false")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise InvalidRequest(name, "must be a whole number")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidRequest(name, "must be a finite number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise InvalidRequest(name, "must be text")
        return value.strip()
    if isinstance(value, str):  # tuple[str, ...]: one prompt a line is what the form sends
        value = [line for line in value.splitlines() if line.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(name, "must be a list of prompts")
    return tuple(v.strip() for v in value if v.strip())


_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "tuple[str, ...]": tuple}


def _bounds(r: LoraTrainRequest) -> None:
    def need(ok: bool, name: str, message: str) -> None:
        if not ok:
            raise InvalidRequest(name, message)

    need(bool(r.base_model), "base_model", "choose a checkpoint to train on")
    need(bool(r.data_dir), "data_dir", "give the folder of training images")
    need(bool(_NAME.match(r.output_name)) and ".." not in r.output_name, "output_name",
         "1-100 letters, digits, spaces, '_', '-' or '.', starting with a letter or digit")
    need(r.max_train_steps >= 0, "max_train_steps", "must be 0 (use epochs) or more")
    need(1 <= r.epochs <= 10_000, "epochs", "must be between 1 and 10000")
    need(r.max_train_steps <= 1_000_000, "max_train_steps", "must be at most 1000000")
    need(0 < r.learning_rate <= 1, "learning_rate", "must be above 0 and at most 1")
    need(r.lr_scheduler in SCHEDULERS, "lr_scheduler", f"must be one of {', '.join(SCHEDULERS)}")
    need(r.lr_warmup_steps >= 0, "lr_warmup_steps", "must be 0 or more")
    need(1 <= r.rank <= 1024, "rank", "must be between 1 and 1024")
    need(0 < r.alpha <= 4096, "alpha", "must be above 0 and at most 4096")
    need(1 <= r.batch_size <= 64, "batch_size", "must be between 1 and 64")
    need(1 <= r.gradient_accumulation <= 256, "gradient_accumulation", "must be between 1 and 256")
    need(16 <= r.resolution <= 4096 and r.resolution % 8 == 0, "resolution",
         "must be a multiple of 8 between 16 and 4096")
    need(r.crop in CROPS, "crop", f"must be one of {', '.join(CROPS)}")
    need(r.mixed_precision in PRECISIONS, "mixed_precision", f"must be one of {', '.join(PRECISIONS)}")
    need(r.optimizer in OPTIMIZERS, "optimizer", f"must be one of {', '.join(OPTIMIZERS)}")
    need(0 <= r.seed < 2**63, "seed", "must be between 0 and 2^63-1")
    need(r.sample_every >= 0, "sample_every", "must be 0 or more")
    need(1 <= r.sample_steps <= 150, "sample_steps", "must be between 1 and 150")
    need(len(r.sample_prompts) <= 8, "sample_prompts", "at most 8 prompts")
    need(r.save_every >= 0, "save_every", "must be 0 or more")
    need(1 <= r.keep_states <= 100, "keep_states", "must be between 1 and 100")
    need(r.prior_loss_weight >= 0, "prior_loss_weight", "must be 0 or more")
    if r.dreambooth:
        need(bool(r.instance_prompt), "instance_prompt", 'DreamBooth needs an instance prompt, e.g. "a photo of '
                                                         'sks dog"')
        if r.class_data_dir:
            need(bool(r.class_prompt), "class_prompt", 'prior preservation needs a class prompt, e.g. "a photo of '
                                                       'a dog"')
    else:
        need(not r.class_data_dir, "class_data_dir", "class images are for DreamBooth runs only")
    need(r.caption_extension.startswith(".") and len(r.caption_extension) > 1, "caption_extension",
         'must start with "." (e.g. ".txt")')


def from_dict(body: Mapping[str, Any], *, method: str = "lora") -> LoraTrainRequest:
    """Build a request from JSON-like values; unknown keys and bad values raise ``InvalidRequest``."""
    known = {f.name: f for f in fields(LoraTrainRequest) if f.name != "method"}
    values: dict[str, Any] = {}
    for key, value in body.items():
        if key == "method":
            continue
        if key not in known:
            raise InvalidRequest(str(key), f"unknown setting for {method} training")
        values[key] = _coerce(key, value, _TYPES[str(known[key].type)])
    for required in ("base_model", "data_dir", "output_name"):
        values.setdefault(required, "")
    values["dreambooth"] = method == "dreambooth_lora" or values.get("dreambooth", False)
    request = LoraTrainRequest(**values, method=method)
    _bounds(request)
    return request


def json_schema() -> dict[str, Any]:
    """A JSON schema of the request (for GET /studio/v1/training/methods)."""
    names = {bool: "boolean", int: "integer", float: "number", str: "string", tuple: "array"}
    props: dict[str, Any] = {}
    for f in fields(LoraTrainRequest):
        if f.name == "method":
            continue
        kind = _TYPES[str(f.type)]
        prop: dict[str, Any] = {"type": names[kind]}
        if kind is tuple:
            prop["items"] = {"type": "string"}
        elif f.default is not dataclasses.MISSING:
            prop["default"] = f.default
        props[f.name] = prop
    for name, choices in (("lr_scheduler", SCHEDULERS), ("mixed_precision", PRECISIONS), ("crop", CROPS),
                          ("optimizer", OPTIMIZERS)):
        props[name]["enum"] = list(choices)
    return {"type": "object", "properties": props, "required": ["base_model", "data_dir", "output_name"],
            "additionalProperties": False}
