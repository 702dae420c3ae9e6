"""Builders for tiny random-weight SD1.x (and SD2.x / SDXL single-file) models, in the formats our loaders accept.

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
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from webui.models.ldm_convert import (CLIP_PREFIX, OPEN_CLIP_PREFIX, SDXL_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX,
                                      clip_to_ldm, open_clip_to_ldm, pipeline_components_to_ldm, unet_to_ldm,
                                      vae_to_ldm)

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


def _save_single_file(path: str | Path, weights: dict[str, torch.Tensor], dtype: torch.dtype) -> Path:
    # Cast and copy: safetensors needs contiguous tensors that own their storage.
    state = {key: (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous().clone()
             for key, tensor in weights.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"format": "pt"})
    return path


def _ldm_state(unet: UNet2DConditionModel, vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    return {**unet_to_ldm(unet.state_dict(), dict(unet.config)), **vae_to_ldm(vae.state_dict(), dict(vae.config))}


# SD 2.x / SDXL: 64-wide heads as in the real models, so every attention width is a multiple of 64 and
# ``attention_head_dim`` (diffusers' legacy name for the head count) is width // 64 per level, which is
# what ``detect`` derives from the shapes.
_UNET_64_WIDE_HEADS = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=64,  # = OpenCLIP width
    attention_head_dim=(1, 2),
    use_linear_projection=True,
    norm_num_groups=32,
)
SD2_UNET = dict(_UNET_64_WIDE_HEADS, upcast_attention=True)
SD2_TEXT = dict(  # the diffusers side: 2 layers kept; the file holds a third that is dropped
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=1,
    vocab_size=49408,
    max_position_embeddings=CLIP_MAX_LENGTH,
    hidden_act="gelu",
)
SDXL_TIME_EMBED_DIM = 256  # SDXL's addition_time_embed_dim; detect assumes it (not in the shapes)
SDXL_CLIP_L = dict(SD2_TEXT, hidden_size=32, intermediate_size=37, hidden_act="quick_gelu")
SDXL_CLIP_G = dict(SD2_TEXT, projection_dim=64)
SDXL_UNET = dict(
    _UNET_64_WIDE_HEADS,
    # Like SDXL: no attention on the (narrower) first level. Narrow enough to keep the file < 20 MB.
    block_out_channels=(32, 64),
    attention_head_dim=(1, 1),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2),
    cross_attention_dim=SDXL_CLIP_L["hidden_size"] + SDXL_CLIP_G["hidden_size"],
    addition_embed_type="text_time",
    addition_time_embed_dim=SDXL_TIME_EMBED_DIM,
    # 6 time ids (original size, crop, target size) + the pooled text_encoder_2 embedding
    projection_class_embeddings_input_dim=6 * SDXL_TIME_EMBED_DIM + SDXL_CLIP_G["projection_dim"],
)


def tiny_sd2_components(seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    return {
        "unet": UNet2DConditionModel(**SD2_UNET).eval(),
        "vae": tiny_vae().eval(),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**SD2_TEXT)).eval(),
    }


def tiny_sdxl_components(seed: int = 0) -> dict[str, Any]:
    torch.manual_seed(seed)
    return {
        "unet": UNet2DConditionModel(**SDXL_UNET).eval(),
        "vae": tiny_vae().eval(),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**SDXL_CLIP_L)).eval(),
        "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_CLIP_G)).eval(),
    }


def write_tiny_sd2_single_file(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """A tiny SD 2.x checkpoint in the LDM layout: linear proj_in/out, OpenCLIP text encoder under
    ``cond_stage_model.model.`` with one extra final resblock and a ``text_projection``, both of which real
    SD 2.x files carry and diffusers' SD 2 text encoder does not use."""
    components = tiny_sd2_components(seed)
    weights = _ldm_state(components["unet"], components["vae"])
    weights.update(open_clip_to_ldm(components["text_encoder"].state_dict(), OPEN_CLIP_PREFIX,
                                    add_dropped_last_layer=True, seed=seed))
    width = SD2_TEXT["hidden_size"]
    weights[f"{OPEN_CLIP_PREFIX}text_projection"] = torch.randn(width, width) * width**-0.5
    return _save_single_file(path, weights, dtype)


def write_tiny_sdxl_single_file(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """A tiny SDXL checkpoint in the LDM layout: ``label_emb`` (text_time) UNet, CLIP-L under
    ``conditioner.embedders.0.transformer.`` and an OpenCLIP-bigG-like encoder with projection under
    ``conditioner.embedders.1.model.`` (all layers kept: SDXL takes the penultimate hidden state itself)."""
    components = tiny_sdxl_components(seed)
    weights = _ldm_state(components["unet"], components["vae"])
    weights.update(clip_to_ldm(components["text_encoder"].state_dict(), prefix=SDXL_CLIP_PREFIX))
    weights[f"{SDXL_CLIP_PREFIX}text_model.embeddings.position_ids"] = \
        torch.arange(CLIP_MAX_LENGTH, dtype=torch.int64)[None]
    weights.update(open_clip_to_ldm(components["text_encoder_2"].state_dict(), SDXL_OPEN_CLIP_PREFIX,
                                    add_dropped_last_layer=False))
    return _save_single_file(path, weights, dtype)


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


# An SDXL refiner as Stability ships it: OpenCLIP-bigG only (``conditioner.embedders.0.model.``), a UNet whose
# added conditioning is 5 time ids (original size, crop, aesthetic score) + the pooled embedding, and, like the
# real one, no attention on its last level while its middle block has several transformer layers.
SDXL_REFINER_OPEN_CLIP_PREFIX = "conditioner.embedders.0.model."
SDXL_REFINER_UNET = dict(
    SDXL_UNET,
    block_out_channels=(32, 64, 64),
    attention_head_dim=(1, 1, 1),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=2,
    cross_attention_dim=SDXL_CLIP_G["hidden_size"],
    projection_class_embeddings_input_dim=5 * SDXL_TIME_EMBED_DIM + SDXL_CLIP_G["projection_dim"],
)


def write_tiny_sdxl_refiner_single_file(path: str | Path, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SDXL_REFINER_UNET).eval()
    weights = _ldm_state(unet, tiny_vae().eval())
    encoder = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_CLIP_G)).eval()
    weights.update(open_clip_to_ldm(encoder.state_dict(), SDXL_REFINER_OPEN_CLIP_PREFIX, add_dropped_last_layer=False))
    return _save_single_file(path, weights, dtype)
