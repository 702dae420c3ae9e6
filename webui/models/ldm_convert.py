"""Convert diffusers/transformers state dicts to the original LDM single-file layout.

diffusers only ships the LDM -> diffusers direction
(``diffusers.loaders.single_file_utils.convert_ldm_*``). This module is its inverse for
SD1.x-style models, so that we can write ``.safetensors`` checkpoints in the layout
A1111 and ``from_single_file`` expect (``model.diffusion_model.*``,
``first_stage_model.*``, ``cond_stage_model.transformer.text_model.*``), plus the OpenCLIP
text encoder layout of SD2.x and SDXL's second encoder (``open_clip_to_ldm``).

Design: every diffusers key is ``<module path>.<param>``. We build a table from
diffusers module paths to LDM module paths (derived from the model config, so any
number of levels / layers per block works) and rename each key by its longest
matching module prefix. Keys we cannot place raise instead of being dropped silently,
because a checkpoint missing weights would only fail much later, at load time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

StateDict = dict[str, Tensor]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD 2.x
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

# transformers CLIP layer param -> OpenCLIP resblock param (q/k/v are fused separately).
_OPEN_CLIP_LAYER_RENAMES = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}

# ResnetBlock2D parameter names: diffusers -> LDM (UNet ResBlock uses Sequential indices).
_UNET_RESNET_RENAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET_RENAMES = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION_RENAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
# LDM's VAE attention uses 1x1 convs where diffusers uses linears: these need [C, C, 1, 1].
_VAE_CONV_ATTENTION_PARAMS = {"q.weight", "k.weight", "v.weight", "proj_out.weight"}

_UNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    # class/added-condition embeddings (upscaler, SDXL) share LDM's ``label_emb``.
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "class_embedding": "label_emb",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}

_VAE_TOP_LEVEL = {
    "encoder.conv_in": "encoder.conv_in",
    "encoder.conv_out": "encoder.conv_out",
    "encoder.conv_norm_out": "encoder.norm_out",
    "decoder.conv_in": "decoder.conv_in",
    "decoder.conv_out": "decoder.conv_out",
    "decoder.conv_norm_out": "decoder.norm_out",
    "quant_conv": "quant_conv",
    "post_quant_conv": "post_quant_conv",
}


class _Module:
    """Target of one diffusers module path: its LDM path and how to rename its params."""

    def __init__(self, ldm_path: str, renames: Mapping[str, str] | None = None) -> None:
        self.ldm_path = ldm_path
        self.renames = renames or {}

    def rename(self, param: str) -> str:
        for old, new in self.renames.items():
            if param == old or param.startswith(old + "."):
                return new + param[len(old) :]
        return param


ModuleMap = dict[str, _Module]


def _layers_per_block(config: Mapping[str, Any]) -> int:
    layers = config["layers_per_block"]
    if isinstance(layers, int):
        return layers
    # LDM numbers input/output blocks with a single stride, so per-level counts must agree.
    if len(set(layers)) != 1:
        raise ValueError(f"LDM layout needs the same layers_per_block on every level, got {layers}")
    return int(layers[0])


def _unet_module_map(config: Mapping[str, Any]) -> ModuleMap:
    """diffusers UNet2DConditionModel module paths -> LDM ``UNetModel`` paths."""
    num_levels = len(config["block_out_channels"])
    layers = _layers_per_block(config)
    modules: ModuleMap = {path: _Module(ldm) for path, ldm in _UNET_TOP_LEVEL.items()}

    # input_blocks: [conv_in] then per level `layers` x (resnet[, attention]) and a downsampler.
    for level in range(num_levels):
        for j in range(layers):
            index = 1 + level * (layers + 1) + j
            modules[f"down_blocks.{level}.resnets.{j}"] = _Module(f"input_blocks.{index}.0", _UNET_RESNET_RENAMES)
            modules[f"down_blocks.{level}.attentions.{j}"] = _Module(f"input_blocks.{index}.1")
        downsampler = 1 + level * (layers + 1) + layers
        modules[f"down_blocks.{level}.downsamplers.0.conv"] = _Module(f"input_blocks.{downsampler}.0.op")

    # middle_block: resnet, attention, resnet.
    modules["mid_block.resnets.0"] = _Module("middle_block.0", _UNET_RESNET_RENAMES)
    modules["mid_block.attentions.0"] = _Module("middle_block.1")
    modules["mid_block.resnets.1"] = _Module("middle_block.2", _UNET_RESNET_RENAMES)

    # output_blocks: per level `layers + 1` x (resnet[, attention][, upsampler on the last]).
    for level in range(num_levels):
        for j in range(layers + 1):
            index = level * (layers + 1) + j
            modules[f"up_blocks.{level}.resnets.{j}"] = _Module(f"output_blocks.{index}.0", _UNET_RESNET_RENAMES)
            modules[f"up_blocks.{level}.attentions.{j}"] = _Module(f"output_blocks.{index}.1")
    return modules


def _unet_upsampler_paths(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> ModuleMap:
    """Where each UNet upsampler goes in ``output_blocks``.

    It follows the level's last resnet: slot ``.2`` if that level has attention, else ``.1``.
    """
    layers = _layers_per_block(config)
    modules: ModuleMap = {}
    for level in range(len(config["block_out_channels"])):
        index = level * (layers + 1) + layers
        has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in state_dict)
        slot = 2 if has_attention else 1
        modules[f"up_blocks.{level}.upsamplers.0.conv"] = _Module(f"output_blocks.{index}.{slot}.conv")
    return modules


def _vae_module_map(config: Mapping[str, Any]) -> ModuleMap:
    """diffusers AutoencoderKL module paths -> LDM ``AutoencoderKL`` paths."""
    num_down = len(config["down_block_types"])
    num_up = len(config["up_block_types"])
    layers = config["layers_per_block"]
    modules: ModuleMap = {path: _Module(ldm) for path, ldm in _VAE_TOP_LEVEL.items()}

    for i in range(num_down):
        for j in range(layers):
            modules[f"encoder.down_blocks.{i}.resnets.{j}"] = _Module(
                f"encoder.down.{i}.block.{j}", _VAE_RESNET_RENAMES
            )
        modules[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = _Module(f"encoder.down.{i}.downsample.conv")

    # LDM numbers the decoder levels from the lowest resolution up; diffusers in execution order.
    for i in range(num_up):
        ldm_level = num_up - 1 - i
        for j in range(layers + 1):
            modules[f"decoder.up_blocks.{i}.resnets.{j}"] = _Module(
                f"decoder.up.{ldm_level}.block.{j}", _VAE_RESNET_RENAMES
            )
        modules[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = _Module(f"decoder.up.{ldm_level}.upsample.conv")

    for coder in ("encoder", "decoder"):
        for k in range(2):
            modules[f"{coder}.mid_block.resnets.{k}"] = _Module(f"{coder}.mid.block_{k + 1}", _VAE_RESNET_RENAMES)
        modules[f"{coder}.mid_block.attentions.0"] = _Module(f"{coder}.mid.attn_1", _VAE_ATTENTION_RENAMES)
    return modules


def _module_prefixes(key: str) -> Iterator[tuple[str, str]]:
    """Yield (module path, param name) splits of ``key``, longest module path first."""
    parts = key.split(".")
    for n in range(len(parts) - 1, 0, -1):
        yield ".".join(parts[:n]), ".".join(parts[n:])


def _rename_keys(state_dict: Mapping[str, Tensor], modules: ModuleMap, prefix: str) -> StateDict:
    converted: StateDict = {}
    unmapped: list[str] = []
    for key, tensor in state_dict.items():
        for module_path, param in _module_prefixes(key):
            target = modules.get(module_path)
            if target is not None:
                converted[f"{prefix}{target.ldm_path}.{target.rename(param)}"] = tensor
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise KeyError(f"no LDM equivalent for {len(unmapped)} keys, e.g. {unmapped[:5]}")
    return converted


def unet_to_ldm(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> StateDict:
    """diffusers ``UNet2DConditionModel`` state dict -> ``model.diffusion_model.*`` keys."""
    modules = _unet_module_map(config) | _unet_upsampler_paths(state_dict, config)
    return _rename_keys(state_dict, modules, UNET_PREFIX)


def vae_to_ldm(state_dict: Mapping[str, Tensor], config: Mapping[str, Any]) -> StateDict:
    """diffusers ``AutoencoderKL`` state dict -> ``first_stage_model.*`` keys."""
    converted = _rename_keys(state_dict, _vae_module_map(config), VAE_PREFIX)
    for key, tensor in converted.items():
        is_conv_param = ".mid.attn_1." in key and key.split(".mid.attn_1.")[1] in _VAE_CONV_ATTENTION_PARAMS
        if is_conv_param and tensor.ndim == 2:
            converted[key] = tensor.reshape(*tensor.shape, 1, 1)
    return converted


def clip_to_ldm(state_dict: Mapping[str, Tensor], prefix: str = CLIP_PREFIX) -> StateDict:
    """transformers ``CLIPTextModel`` state dict -> ``cond_stage_model.transformer.text_model.*``.

    transformers >= 5.6 flattened ``CLIPTextModel`` (keys start at ``embeddings.``);
    older versions and ``CLIPTextModelWithProjection`` nest under ``text_model.``.
    Both are accepted. ``prefix`` lets SDXL reuse this (``conditioner.embedders.0.transformer.``).
    """
    converted: StateDict = {}
    for key, tensor in state_dict.items():
        if key.startswith("text_model."):
            key = key[len("text_model.") :]
        converted[f"{prefix}text_model.{key}"] = tensor
    return converted


def open_clip_to_ldm(state_dict: Mapping[str, Tensor], prefix: str = OPEN_CLIP_PREFIX,
                     add_dropped_last_layer: bool = False, seed: int = 0) -> StateDict:
    """transformers ``CLIPTextModel[WithProjection]`` state dict -> OpenCLIP layout under ``prefix``.

    Inverse of diffusers' ``convert_open_clip_checkpoint``: q/k/v projections are fused into
    ``attn.in_proj_weight``/``in_proj_bias`` ([q; k; v] rows), ``text_projection.weight`` is
    stored transposed as ``text_projection`` ([width, projection]).

    SD 2.x conditions on the penultimate layer, so its diffusers text encoder has one layer
    fewer than the OpenCLIP model in the file. ``add_dropped_last_layer`` appends that final
    resblock (random weights from ``seed``, same shapes as the last kept one) so the file
    looks like a real SD 2.x checkpoint; loaders must drop it again.
    """
    flat = {k.removeprefix("text_model."): v for k, v in state_dict.items() if not k.endswith("position_ids")}
    converted: StateDict = {}
    layers: dict[int, dict[str, Tensor]] = {}
    unmapped: list[str] = []
    for key, tensor in flat.items():
        if key.startswith("encoder.layers."):
            index, param = key[len("encoder.layers.") :].split(".", 1)
            layers.setdefault(int(index), {})[param] = tensor
        elif key == "embeddings.token_embedding.weight":
            converted[f"{prefix}token_embedding.weight"] = tensor
        elif key == "embeddings.position_embedding.weight":
            converted[f"{prefix}positional_embedding"] = tensor
        elif key.startswith("final_layer_norm."):
            converted[f"{prefix}ln_final.{key.split('.', 1)[1]}"] = tensor
        elif key == "text_projection.weight":
            converted[f"{prefix}text_projection"] = tensor.T.contiguous()
        else:
            unmapped.append(key)
    if unmapped:
        raise KeyError(f"no OpenCLIP equivalent for {len(unmapped)} keys, e.g. {unmapped[:5]}")
    if add_dropped_last_layer:
        if not layers:
            raise ValueError("cannot add a dropped last layer to a text encoder without layers")
        generator = torch.Generator().manual_seed(seed)
        template = layers[max(layers)]
        layers[max(layers) + 1] = {
            param: (torch.randn(t.shape, generator=generator) * 0.02).to(t.dtype) for param, t in template.items()
        }
    for index, params in sorted(layers.items()):
        block = f"{prefix}transformer.resblocks.{index}."
        for kind in ("weight", "bias"):
            converted[f"{block}attn.in_proj_{kind}"] = torch.cat(
                [params.pop(f"self_attn.{name}_proj.{kind}") for name in ("q", "k", "v")]
            )
        for param, tensor in params.items():
            module, kind = param.rsplit(".", 1)
            if module not in _OPEN_CLIP_LAYER_RENAMES:
                raise KeyError(f"no OpenCLIP equivalent for text encoder layer {index} param {param}")
            converted[f"{block}{_OPEN_CLIP_LAYER_RENAMES[module]}.{kind}"] = tensor
    return converted


def _config_of(model: nn.Module) -> dict[str, Any]:
    return dict(model.config)  # diffusers configs are FrozenDicts


def pipeline_components_to_ldm(unet: nn.Module, vae: nn.Module, text_encoder: nn.Module) -> StateDict:
    """One LDM single-file state dict from diffusers/transformers SD1.x components."""
    return {
        **unet_to_ldm(unet.state_dict(), _config_of(unet)),
        **vae_to_ldm(vae.state_dict(), _config_of(vae)),
        **clip_to_ldm(text_encoder.state_dict()),
    }
