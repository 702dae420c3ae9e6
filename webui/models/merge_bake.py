"""What a merge bakes into a checkpoint, placed on its single-file (LDM) keys: LoRA deltas and a VAE file.

LoRA deltas arrive keyed by diffusers parameter names with their component prefix (``unet.…``,
``text_encoder.…``, ``text_encoder_2.…``; ``lora_weights.module_deltas``). The UNet names are mapped with
``ldm_convert``'s own table (built once per architecture from the names alone, on an empty model), the CLIP-L
names by prefix, and OpenCLIP's q/k/v by their row slice of the fused ``attn.in_proj_weight``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace

import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from webui.errors import InvalidRequest, ModelLoadError
from webui.models import detect
from webui.models.ldm_convert import _OPEN_CLIP_LAYER_RENAMES, clip_to_ldm, unet_to_ldm, vae_to_ldm
from webui.models.vae import LDM_PREFIX, _IGNORED, _read

Delta = torch.Tensor | tuple[torch.Tensor, slice]  # a whole weight's delta, or one for a row slice of it


def unet_names(spec: detect.ModelSpec) -> dict[str, str]:
    """diffusers UNet parameter name -> LDM key, for the architecture ``spec`` describes."""
    with init_empty_weights():  # names only: no memory for weights
        unet = UNet2DConditionModel(**spec.unet_config)
    names = {name: name for name in unet.state_dict()}
    return {diffusers: ldm for ldm, diffusers in unet_to_ldm(names, dict(unet.config)).items()}


def empty_pipe(spec: detect.ModelSpec) -> SimpleNamespace:
    """The architecture's UNet and text encoders with empty (meta) weights, named as a loaded pipe names them:
    what a LoRA reader needs to know which layer a name means, without the memory of the weights."""
    # The same classes the loader builds (webui/models/loader.py _text_encoders).
    if spec.family == "sdxl":
        classes = [CLIPTextModelWithProjection] if spec.variant == "refiner" else [CLIPTextModel,
                                                                                  CLIPTextModelWithProjection]
    else:
        classes = [CLIPTextModel]
    with init_empty_weights():
        unet = UNet2DConditionModel(**spec.unet_config)
        encoders = [cls(CLIPTextConfig(**config)) for cls, config in zip(classes, spec.text_configs)]
    if spec.variant == "refiner":
        encoders = [None, *encoders]
    return SimpleNamespace(unet=unet, text_encoder=encoders[0] if encoders else None,
                           text_encoder_2=encoders[1] if len(encoders) > 1 else None)


def _text_prefixes(spec: detect.ModelSpec) -> dict[str, tuple[str, bool]]:
    """diffusers component -> (LDM prefix, is OpenCLIP)."""
    if spec.family == "sd1":
        return {"text_encoder": (detect.CLIP_L_SD1, False)}
    if spec.family == "sd2":
        return {"text_encoder": (detect.OPENCLIP_SD2, True)}
    if spec.variant == "refiner":
        return {"text_encoder_2": (detect.OPENCLIP_SDXL_REFINER, True)}
    return {"text_encoder": (detect.CLIP_L_SDXL, False), "text_encoder_2": (detect.OPENCLIP_SDXL, True)}


def _open_clip_target(name: str, prefix: str, width: int) -> tuple[str, slice | None] | None:
    """OpenCLIP key (and row slice, for q/k/v) of a transformers CLIP layer parameter; None when unknown."""
    name = name.removeprefix("text_model.")
    if not name.startswith("encoder.layers."):
        return None
    index, param = name[len("encoder.layers."):].split(".", 1)
    block = f"{prefix}transformer.resblocks.{index}."
    for i, proj in enumerate(("q", "k", "v")):
        for kind in ("weight", "bias"):
            if param == f"self_attn.{proj}_proj.{kind}":
                return f"{block}attn.in_proj_{kind}", slice(i * width, (i + 1) * width)
    module, _, kind = param.rpartition(".")
    if module in _OPEN_CLIP_LAYER_RENAMES:
        return f"{block}{_OPEN_CLIP_LAYER_RENAMES[module]}.{kind}", None
    return None


def ldm_deltas(deltas: Mapping[str, torch.Tensor], spec: detect.ModelSpec, shapes: Mapping[str, tuple[int, ...]],
               field: str = "loras") -> dict[str, Delta]:
    """Place diffusers-named deltas on the checkpoint's LDM keys (summing deltas that land on the same key);
    InvalidRequest naming ``field`` for a name this architecture does not have."""
    unet = unet_names(spec) if any(k.startswith("unet.") for k in deltas) else {}
    texts = _text_prefixes(spec)
    placed: dict[str, Delta] = {}
    for name, delta in deltas.items():
        component, _, param = name.partition(".")
        target: tuple[str, slice | None] | None = None
        if component == "unet":
            target = (unet[param], None) if param in unet else None
        elif component in texts:
            prefix, open_clip = texts[component]
            if open_clip:
                width = shapes.get(f"{prefix}token_embedding.weight", (0, 0))[1]
                target = _open_clip_target(param, prefix, width)
            else:
                target = (next(iter(clip_to_ldm({param: None}, prefix))), None)
        if target is None or target[0] not in shapes:
            raise InvalidRequest(field, f"a LoRA changes {name}, which this {spec.label} checkpoint does not have "
                                        "(a LoRA for another architecture?)")
        key, rows = target
        delta = delta.float()
        if rows is not None:
            key = f"{key}#{rows.start}"  # one entry per slice; merged below
            placed[key] = (placed[key][0] + delta, rows) if key in placed else (delta, rows)
        else:
            placed[key] = placed[key] + delta if key in placed else delta
    return _fuse_slices(placed, shapes)


def _fuse_slices(placed: dict[str, Delta], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Delta]:
    """q/k/v slices of one fused weight become one whole-weight delta (zeros where a LoRA left a slice alone)."""
    out: dict[str, Delta] = {}
    for key, delta in placed.items():
        if not isinstance(delta, tuple):
            out[key] = out[key] + delta if key in out else delta
            continue
        base = key.rsplit("#", 1)[0]
        whole = out.get(base)
        if whole is None:
            whole = torch.zeros(shapes[base], dtype=torch.float32)
        assert isinstance(whole, torch.Tensor)
        whole[delta[1]] += delta[0]
        out[base] = whole
    return out


def read_vae(path: Path, spec: detect.ModelSpec, *, allow_pickle: bool, field: str = "bake_vae"
             ) -> dict[str, torch.Tensor]:
    """A VAE file's weights on the checkpoint's ``first_stage_model.*`` keys (LDM layout with or without the
    prefix, or diffusers layout, as ``models/VAE`` accepts)."""
    try:
        state = _read(path, allow_pickle)
    except ModelLoadError as exc:
        raise InvalidRequest(field, str(exc)) from None
    state = {k.removeprefix(LDM_PREFIX): v for k, v in state.items() if not k.startswith(_IGNORED)}
    if not any(k.startswith(("encoder.", "decoder.")) for k in state):
        raise InvalidRequest(field, f"{path.name} holds no VAE weights (no encoder.*/decoder.* tensors)")
    if any(".up_blocks." in k or ".down_blocks." in k for k in state):  # diffusers layout
        try:
            return vae_to_ldm(state, spec.vae_config)
        except (KeyError, ValueError) as exc:
            raise InvalidRequest(field, f"{path.name} is not a VAE this merger can place ({exc})") from None
    return {LDM_PREFIX + k: v for k, v in state.items()}
