"""Random-weight model files for the benchmarks: a tiny SD1.x single-file checkpoint (CPU smoke runs) and a kohya
LoRA for whatever pipeline is loaded. Speed depends on the architecture, not on the weight values.

The tiny model is wired like SD1.x but small (UNet (32, 64), VAE (32, 64) downsampling by 2, CLIP hidden 32 with
the real 49,408-token vocabulary so the shipped tokenizer works), the same shapes as the test suite's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from webui.models.ldm_convert import CLIP_PREFIX, pipeline_components_to_ldm

CLIP_MAX_LENGTH = 77
UNET_ATTENTION = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
                  "attn2.to_v", "attn2.to_out.0")
TEXT_ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj")


def tiny_sd1_modules(seed: int = 0) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        latent_channels=4, layers_per_block=1, norm_num_groups=32, sample_size=64)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=1, vocab_size=49408,
        max_position_embeddings=CLIP_MAX_LENGTH, hidden_act="quick_gelu", projection_dim=32))
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval()}


def write_sd1_checkpoint(modules: dict[str, torch.nn.Module], path: Path, dtype: torch.dtype = torch.float16) -> Path:
    """An SD1.x ``.safetensors`` file in the original LDM layout, as a user drops into models/Stable-diffusion."""
    from safetensors.torch import save_file

    weights = pipeline_components_to_ldm(modules["unet"], modules["vae"], modules["text_encoder"])
    # safetensors needs contiguous tensors that own their storage
    state = {key: (t.to(dtype) if t.is_floating_point() else t).contiguous().clone() for key, t in weights.items()}
    state[f"{CLIP_PREFIX}text_model.embeddings.position_ids"] = torch.arange(CLIP_MAX_LENGTH)[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})
    return path


def write_kohya_lora(pipe, path: Path, *, rank: int = 8, seed: int = 0) -> Path:
    """A kohya/A1111 LoRA over every attention projection of ``pipe``'s UNet and CLIP self-attention (fp16, random
    small deltas), named from the pipeline's own modules."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}

    def add(key: str, module: torch.nn.Linear) -> None:
        out_features, in_features = module.weight.shape
        tensors[f"{key}.lora_down.weight"] = (torch.randn(rank, in_features, generator=gen) * 0.01).half()
        tensors[f"{key}.lora_up.weight"] = (torch.randn(out_features, rank, generator=gen) * 0.01).half()
        tensors[f"{key}.alpha"] = torch.tensor(float(rank))

    for name, module in pipe.unet.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(UNET_ATTENTION):
            add("lora_unet_" + name.replace(".", "_"), module)
    for name, module in pipe.text_encoder.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith(TEXT_ATTENTION):
            add("lora_te_text_model_" + name.removeprefix("text_model.").replace(".", "_"), module)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"ss_output_name": path.stem})
    return path
