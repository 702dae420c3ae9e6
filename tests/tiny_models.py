"""Builders for tiny random-weight SD1.x models, in the formats our loaders accept.

Plain helpers (no pytest fixtures): conftest wraps them. Everything is built offline
from configs and the tokenizer/scheduler files shipped in ``webui/models/configs``.

The models are wired like SD1.x (CLIP text encoder -> cross-attention UNet -> KL VAE)
but tiny. Two deliberate departures from a real SD1 checkpoint, worth knowing when
writing tests:

* the VAE has 2 levels, so it downsamples by 2 (not 8): 64x64 px <-> 32x32 latents;
* the CLIP vocabulary is the real one (49,408 tokens) so the shipped tokenizer works;
  that embedding dominates the size (~1.6M of ~3.1M parameters).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from webui.models.ldm_convert import CLIP_PREFIX, pipeline_components_to_ldm

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "webui" / "models" / "configs"
TOKENIZER_DIR = CONFIGS_DIR / "clip_tokenizer"
SCHEDULER_CONFIG = CONFIGS_DIR / "scheduler_config.json"

CLIP_MAX_LENGTH = 77


def tiny_unet(in_channels: int = 4) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,  # SD1 naming quirk: this is the number of heads
        norm_num_groups=32,
    )


def tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=64,
    )


def tiny_text_encoder() -> CLIPTextModel:
    config = CLIPTextConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=1,
        vocab_size=49408,  # the real CLIP vocabulary, so the shipped tokenizer's ids are valid
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="quick_gelu",
        projection_dim=32,
    )
    return CLIPTextModel(config)


def tiny_sd1_components(seed: int = 0, in_channels: int = 4) -> dict[str, Any]:
    """Random-weight SD1.x components, keyed like ``StableDiffusionPipeline``'s arguments.

    Seeding before construction makes the default (non-zero) initialisation
    reproducible; it yields finite, non-constant images.
    """
    torch.manual_seed(seed)
    components: dict[str, Any] = {
        "unet": tiny_unet(in_channels),
        "vae": tiny_vae(),
        "text_encoder": tiny_text_encoder(),
        "tokenizer": CLIPTokenizer.from_pretrained(TOKENIZER_DIR, local_files_only=True),
        "scheduler": PNDMScheduler.from_pretrained(CONFIGS_DIR, local_files_only=True),
    }
    for name in ("unet", "vae", "text_encoder"):
        components[name].eval()
    return components


def _sd1_alphas_cumprod(num_steps: int = 1000) -> torch.Tensor:
    """SD1's "scaled_linear" schedule, as stored in real checkpoints."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def _ldm_extras() -> dict[str, torch.Tensor]:
    """Non-weight keys real SD1 files carry; loaders must tolerate (or use) them."""
    return {
        f"{CLIP_PREFIX}text_model.embeddings.position_ids": torch.arange(CLIP_MAX_LENGTH, dtype=torch.int64)[None],
        "alphas_cumprod": _sd1_alphas_cumprod(),
    }


def write_tiny_single_file(
    path: str | Path, seed: int = 0, in_channels: int = 4, dtype: torch.dtype = torch.float16
) -> Path:
    """Write a tiny SD1.x checkpoint in the original LDM single-file layout (.safetensors)."""
    components = tiny_sd1_components(seed, in_channels)
    weights = pipeline_components_to_ldm(components["unet"], components["vae"], components["text_encoder"])
    # Cast and copy: safetensors needs contiguous tensors that own their storage.
    state = {key: tensor.to(dtype).contiguous().clone() for key, tensor in weights.items()}
    state.update(_ldm_extras())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})
    return path


def _model_index() -> dict[str, Any]:
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def write_tiny_diffusers_folder(path: str | Path, seed: int = 0) -> Path:
    """Write a tiny SD1.x model as a diffusers folder, loadable fully offline."""
    root = Path(path)
    components = tiny_sd1_components(seed)
    for name in ("unet", "vae", "text_encoder"):
        components[name].save_pretrained(root / name)
    # Copy the shipped files rather than save_pretrained: that is exactly what we ship.
    shutil.copytree(TOKENIZER_DIR, root / "tokenizer", dirs_exist_ok=True)
    (root / "scheduler").mkdir(parents=True, exist_ok=True)
    shutil.copy(SCHEDULER_CONFIG, root / "scheduler" / "scheduler_config.json")
    (root / "model_index.json").write_text(json.dumps(_model_index(), indent=2) + "\n")
    return root
