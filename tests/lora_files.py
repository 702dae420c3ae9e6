"""LoRA files for tests, written with real key names computed from a tiny model's own modules.

kohya/A1111 names: ``lora_unet_`` + the diffusers module path with ``.`` -> ``_`` (kohya trains SD1.x on the diffusers
UNet), ``lora_te_text_model_`` + the CLIP module path (``lora_te1_``/``lora_te2_`` on SDXL), or the LDM spelling
(``lora_unet_input_blocks_1_1_...``) that kohya's SDXL LoRAs use.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from webui.models.ldm_convert import UNET_PREFIX, unet_to_ldm

ATTENTION = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
             "attn2.to_out.0")
TEXT = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")


def linear_modules(module: torch.nn.Module, endings: tuple[str, ...]) -> dict[str, torch.nn.Module]:
    return {name: sub for name, sub in module.named_modules()
            if isinstance(sub, torch.nn.Linear) and name.endswith(endings)}


def _pair(weight: torch.Tensor, rank: int, gen: torch.Generator, scale: float) -> dict[str, torch.Tensor]:
    out_f, in_f = weight.shape[:2]
    return {"lora_down.weight": torch.randn(rank, in_f, generator=gen) * scale,
            "lora_up.weight": torch.randn(out_f, rank, generator=gen) * scale,
            "alpha": torch.tensor(float(rank) / 2)}


def kohya_lora(pipe, path: Path, *, seed: int = 0, rank: int = 4, scale: float = 0.3, text: bool = True,
               ldm_names: bool = False, te_prefixes: tuple[str, ...] = ("lora_te_",)) -> Path:
    """A kohya LoRA over every attention projection of the UNet and (``text``) the CLIP self-attention."""
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    unet_modules = linear_modules(pipe.unet, ATTENTION)
    names = {name: "lora_unet_" + name.replace(".", "_") for name in unet_modules}
    if ldm_names:
        ldm = unet_to_ldm({f"{n}.weight": n for n in unet_modules}, pipe.unet.config)
        names = {n: "lora_unet_" + k[len(UNET_PREFIX):].removesuffix(".weight").replace(".", "_")
                 for k, n in ldm.items()}
    for name, module in unet_modules.items():
        for suffix, tensor in _pair(module.weight, rank, gen, scale).items():
            tensors[f"{names[name]}.{suffix}"] = tensor
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if getattr(pipe, "text_encoder_2", None) else [])
    if text:
        for prefix, encoder in zip(te_prefixes, encoders):
            for name, module in linear_modules(encoder, TEXT).items():
                key = prefix + "text_model_" + name.removeprefix("text_model.").replace(".", "_")
                for suffix, tensor in _pair(module.weight, rank, gen, scale).items():
                    tensors[f"{key}.{suffix}"] = tensor
    save_file(tensors, str(path), metadata={"ss_output_name": path.stem})
    return path


def loha_lora(pipe, path: Path, *, seed: int = 1, rank: int = 2, scale: float = 0.5) -> Path:
    """LyCORIS LoHa on the UNet's attention projections."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in linear_modules(pipe.unet, ATTENTION).items():
        out_f, in_f = module.weight.shape
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.hada_w1_a"] = torch.randn(out_f, rank, generator=gen) * scale
        tensors[f"{key}.hada_w1_b"] = torch.randn(rank, in_f, generator=gen) * scale
        tensors[f"{key}.hada_w2_a"] = torch.randn(out_f, rank, generator=gen) * scale
        tensors[f"{key}.hada_w2_b"] = torch.randn(rank, in_f, generator=gen) * scale
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))
    return path


def lokr_lora(pipe, path: Path, *, seed: int = 2, scale: float = 0.2) -> Path:
    """LyCORIS LoKr (full w1, factored w2) on the UNet's attention projections."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in linear_modules(pipe.unet, ATTENTION).items():
        out_f, in_f = module.weight.shape
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lokr_w1"] = torch.randn(4, 4, generator=gen) * scale
        tensors[f"{key}.lokr_w2_a"] = torch.randn(out_f // 4, 2, generator=gen) * scale
        tensors[f"{key}.lokr_w2_b"] = torch.randn(2, in_f // 4, generator=gen) * scale
    save_file(tensors, str(path))
    return path


def locon_lora(pipe, path: Path, *, seed: int = 3, rank: int = 4, scale: float = 0.05) -> Path:
    """LoCon on the UNet's 3x3 resnet convolutions: a 3x3 down conv and a 1x1 up conv."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in pipe.unet.named_modules():
        if isinstance(module, torch.nn.Conv2d) and name.endswith(("conv1", "conv2")) and "resnets" in name:
            out_c, in_c, kh, kw = module.weight.shape
            key = "lora_unet_" + name.replace(".", "_")
            tensors[f"{key}.lora_down.weight"] = torch.randn(rank, in_c, kh, kw, generator=gen) * scale
            tensors[f"{key}.lora_up.weight"] = torch.randn(out_c, rank, 1, 1, generator=gen) * scale
            tensors[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))
    return path
