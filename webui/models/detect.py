"""Read a single-file checkpoint's header and work out what it is from tensor NAMES and SHAPES.

Like ComfyUI's model detection, nothing here assumes full-size weights: channel counts, depths and widths are
read off the shapes, so pruned, distilled and tiny test checkpoints go through the same path as full files.
No torch import: a header is JSON, so listing and detection stay cheap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webui.errors import ModelLoadError
from webui.models.safetensors_file import read_header

Shapes = dict[str, tuple[int, ...]]

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_L_SD1 = "cond_stage_model.transformer."
OPENCLIP_SD2 = "cond_stage_model.model."
CLIP_L_SDXL = "conditioner.embedders.0.transformer."
OPENCLIP_SDXL = "conditioner.embedders.1.model."
OPENCLIP_SDXL_REFINER = "conditioner.embedders.0.model."  # an SDXL refiner's only text encoder (OpenCLIP-bigG)



@dataclass(frozen=True)
class ModelSpec:
    """What a checkpoint is, plus the diffusers configs that rebuild its components."""

    family: str          # "sd1", "sd2" or "sdxl"
    variant: str         # "normal", "inpaint", "instruct-pix2pix" or "refiner" (SDXL refiner: OpenCLIP-G only)
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]
    text_configs: tuple[dict[str, Any], ...]  # CLIPTextConfig kwargs, one per text encoder
    default_size: int
    needs_vpred_check: bool = False  # SD2.x: v-prediction is not in the shapes (see loader)
    notes: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        names = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
        suffix = {"normal": "", "inpaint": " inpainting", "instruct-pix2pix": " InstructPix2Pix",
                  "refiner": " refiner"}
        return names[self.family] + suffix[self.variant]


def read_safetensors_header(path: Path) -> Shapes:
    """Return {tensor name: shape}, refusing files that are not complete safetensors data."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            parsed = read_header(fh, size)
            fh.seek(0)
            head = fh.read(8)
    except OSError as exc:
        raise ModelLoadError(f"Cannot read {path.name}: {exc.strerror or exc}") from exc
    if parsed is None:
        # Only once it fails to parse as safetensors: a valid header length can start with these bytes too.
        is_zip = head.startswith(b"PK\x03\x04")  # torch.save's zip format
        is_pickle = head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")
        if is_zip or is_pickle:
            raise ModelLoadError(
                f"{path.name} is a pickle (PyTorch zip/pickle data) with a .safetensors name. Pickles can run "
                "code when loaded, so it is refused. Convert it to real safetensors, or rename it to .ckpt and "
                "start with --allow-pickle if you trust its source.")
        if size < 8:
            raise ModelLoadError(f"{path.name} is not a safetensors file: it is only {size} bytes long.")
        raise ModelLoadError(f"{path.name} is not a valid safetensors file (corrupt or truncated header).")
    header, header_len = parsed
    data_size = size - 8 - header_len
    shapes: Shapes = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = meta["data_offsets"]
            shapes[name] = tuple(int(d) for d in meta["shape"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{path.name} is not a valid safetensors file (bad entry for {name}).") from exc
        if end > data_size:
            raise ModelLoadError(
                f"{path.name} is truncated: tensor {name} ends at byte {end} but the file holds {data_size} bytes "
                "of data. Download it again.")
    return shapes


def detect(shapes: Shapes, filename: str = "checkpoint") -> ModelSpec:
    """Identify family and variant, and derive component configs from the shapes."""
    family = _family(shapes, filename)
    unet = _strip(shapes, UNET)
    vae = _strip(shapes, VAE)
    if not vae:
        raise ModelLoadError(f"{filename} has no VAE weights ({VAE}*); it is not a complete checkpoint.")
    unet_config = _unet_config(unet, family, filename)
    variant = {4: "normal", 8: "instruct-pix2pix", 9: "inpaint"}.get(unet_config["in_channels"])
    if variant is None:
        raise ModelLoadError(
            f"{filename}: UNet with {unet_config['in_channels']} input channels is not a known Stable Diffusion "
            "variant (expected 4, 8 for InstructPix2Pix or 9 for inpainting).")
    if family == "sdxl" and _is_sdxl_refiner(shapes):
        variant = "refiner" if variant == "normal" else variant
        text = (_openclip_config(_strip(shapes, OPENCLIP_SDXL_REFINER), drop_last_layer=False),)
    elif family == "sd1":
        text = (_clip_config(_strip(shapes, CLIP_L_SD1), "quick_gelu"),)
    elif family == "sd2":
        text = (_openclip_config(_strip(shapes, OPENCLIP_SD2), drop_last_layer=True),)
    else:
        text = (_clip_config(_strip(shapes, CLIP_L_SDXL), "quick_gelu"),
                _openclip_config(_strip(shapes, OPENCLIP_SDXL), drop_last_layer=False))
    return ModelSpec(
        family=family,
        variant=variant,
        unet_config=unet_config,
        vae_config=_vae_config(vae, family),
        text_configs=text,
        default_size={"sd1": 512, "sd2": 512, "sdxl": 1024}[family],
        needs_vpred_check=family == "sd2" and variant == "normal",
    )


def _family(shapes: Shapes, filename: str) -> str:
    has = lambda prefix: any(k.startswith(prefix) for k in shapes)  # noqa: E731
    if not has(UNET):
        raise ModelLoadError(
            f"{filename} is not a Stable Diffusion checkpoint in the original single-file layout (no "
            f"'{UNET}*' tensors). LoRAs go in models/Lora, VAEs in models/VAE.")
    if has(CLIP_L_SDXL) and has(OPENCLIP_SDXL) and f"{UNET}label_emb.0.0.weight" in shapes:
        return "sdxl"
    if _is_sdxl_refiner(shapes):
        return "sdxl"  # the same latent space as SDXL; ModelSpec.variant says "refiner"
    if has(OPENCLIP_SD2):
        return "sd2"
    if has(CLIP_L_SD1):
        return "sd1"
    raise ModelLoadError(
        f"{filename}: unknown model layout (no text encoder recognised). Supported: SD 1.x, SD 2.x, SDXL.")


def _is_sdxl_refiner(shapes: Shapes) -> bool:
    """Stability's SDXL refiner: OpenCLIP-bigG alone as embedder 0, and SDXL's label embedding in the UNet."""
    return (not any(k.startswith(CLIP_L_SDXL) for k in shapes) and f"{UNET}label_emb.0.0.weight" in shapes
            and any(k.startswith(OPENCLIP_SDXL_REFINER) for k in shapes))


def _strip(shapes: Shapes, prefix: str) -> Shapes:
    return {k[len(prefix):]: v for k, v in shapes.items() if k.startswith(prefix)}


def _count(shapes: Shapes, pattern: str) -> int:
    """Count distinct integers K for keys matching a regex with one (\\d+) group."""
    rx = re.compile(pattern)
    return len({m.group(1) for k in shapes if (m := rx.match(k))})


def _need(shapes: Shapes, key: str, filename: str) -> tuple[int, ...]:
    try:
        return shapes[key]
    except KeyError:
        raise ModelLoadError(f"{filename}: UNet tensor '{key}' missing; the file is incomplete or of an "
                             "unknown layout.") from None


def _unet_config(unet: Shapes, family: str, filename: str) -> dict[str, Any]:
    model_ch, in_ch = _need(unet, "input_blocks.0.0.weight", filename)[:2]
    n_inputs = _count(unet, r"input_blocks\.(\d+)\.")
    channels: list[int] = []
    attention: list[bool] = []
    depths: list[int] = []
    res_per_level: list[int] = []
    res_count, level_attn, level_depth, level_ch = 0, False, 1, model_ch
    for n in range(1, n_inputs):
        if f"input_blocks.{n}.0.op.weight" in unet:  # downsample closes a level
            channels.append(level_ch), attention.append(level_attn), depths.append(level_depth)
            res_per_level.append(res_count)
            res_count, level_attn, level_depth = 0, False, 1
            continue
        res_count += 1
        level_ch = _need(unet, f"input_blocks.{n}.0.out_layers.3.weight", filename)[0]
        depth = _count(unet, rf"input_blocks\.{n}\.1\.transformer_blocks\.(\d+)\.")
        if depth:
            level_attn, level_depth = True, depth
    channels.append(level_ch), attention.append(level_attn), depths.append(level_depth)
    res_per_level.append(res_count)
    if len(set(res_per_level)) != 1:
        raise ModelLoadError(f"{filename}: uneven res blocks per level {res_per_level}; unsupported UNet.")

    k_shape = next((v for k, v in unet.items() if k.endswith("attn2.to_k.weight")), None)
    if k_shape is None:
        raise ModelLoadError(f"{filename}: UNet has no cross-attention; not a text-to-image Stable Diffusion model.")
    proj_in = next(v for k, v in unet.items() if k.endswith("proj_in.weight"))
    mid_depth = _count(unet, r"middle_block\.1\.transformer_blocks\.(\d+)\.")
    config: dict[str, Any] = {
        "sample_size": {"sd1": 64, "sd2": 64, "sdxl": 128}[family],
        "in_channels": in_ch,
        "out_channels": _need(unet, "out.2.weight", filename)[0],
        "block_out_channels": channels,
        "layers_per_block": res_per_level[0],
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "cross_attention_dim": k_shape[1],
        "use_linear_projection": len(proj_in) == 2,
        "transformer_layers_per_block": depths if family == "sdxl" else 1,
        "norm_num_groups": 32,
    }
    if family == "sdxl" and not attention[-1] and mid_depth:
        # diffusers gives the middle block the last level's depth; a level without attention ignores its own, so
        # it carries the middle block's (the SDXL refiner: no attention on its last level, 4 layers in the middle).
        config["transformer_layers_per_block"] = depths[:-1] + [mid_depth]
    if mid_depth == 0:
        config["mid_block_type"] = "UNetMidBlock2D"
    if family == "sd1":
        config["attention_head_dim"] = 8  # SD 1.x: 8 heads (diffusers' legacy name); heads are not in the shapes
    else:
        # SD 2.x and SDXL use 64-wide heads; diffusers' legacy "attention_head_dim" holds the head count.
        config["attention_head_dim"] = [max(1, ch // 64) for ch in channels]
    if family == "sd2":
        config["upcast_attention"] = True  # SD 2.1 overflows in fp16 attention otherwise
    if family == "sdxl":
        label_in = _need(unet, "label_emb.0.0.weight", filename)[1]
        config.update(addition_embed_type="text_time", addition_time_embed_dim=256,
                      projection_class_embeddings_input_dim=label_in)
    return config


def _vae_config(vae: Shapes, family: str) -> dict[str, Any]:
    levels = _count(vae, r"encoder\.down\.(\d+)\.")
    channels = [vae[f"encoder.down.{n}.block.0.conv1.weight"][0] for n in range(levels)]
    return {
        "in_channels": vae["encoder.conv_in.weight"][1],
        "out_channels": vae["decoder.conv_out.weight"][0],
        "block_out_channels": channels,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "layers_per_block": _count(vae, r"encoder\.down\.0\.block\.(\d+)\."),
        "latent_channels": vae["encoder.conv_out.weight"][0] // 2,
        "norm_num_groups": 32,
        "sample_size": 1024 if family == "sdxl" else 512,
        "scaling_factor": 0.13025 if family == "sdxl" else 0.18215,
    }


def _heads(hidden: int) -> int:
    return max(1, hidden // 64)  # CLIP and OpenCLIP both use 64-wide heads


def _clip_config(text: Shapes, act: str) -> dict[str, Any]:
    text = {k.removeprefix("text_model."): v for k, v in text.items()}
    if "embeddings.token_embedding.weight" not in text:
        raise ModelLoadError("text encoder weights missing or of an unknown layout.")
    vocab, hidden = text["embeddings.token_embedding.weight"]
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": text["encoder.layers.0.mlp.fc1.weight"][0],
        "num_hidden_layers": _count(text, r"encoder\.layers\.(\d+)\."),
        "num_attention_heads": _heads(hidden),
        "max_position_embeddings": text["embeddings.position_embedding.weight"][0],
        "hidden_act": act,
        "projection_dim": 768,
    }


def _openclip_config(text: Shapes, drop_last_layer: bool) -> dict[str, Any]:
    if "token_embedding.weight" not in text:
        raise ModelLoadError("OpenCLIP text encoder weights missing or of an unknown layout.")
    vocab, hidden = text["token_embedding.weight"]
    layers = _count(text, r"transformer\.resblocks\.(\d+)\.")
    proj = text.get("text_projection")
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": text["transformer.resblocks.0.mlp.c_fc.weight"][0],
        # SD 2.x conditions on the penultimate layer, so diffusers' config simply has one layer fewer.
        "num_hidden_layers": layers - 1 if drop_last_layer else layers,
        "num_attention_heads": _heads(hidden),
        "max_position_embeddings": text["positional_embedding"][0],
        "hidden_act": "gelu",
        "projection_dim": proj[1] if proj else hidden,
    }
