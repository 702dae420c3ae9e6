"""diffusers -> LDM conversion, the tiny model builders and the shipped tokenizer files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from safetensors import safe_open
from transformers import CLIPTokenizer

from tests.tiny_models import (
    CONFIGS_DIR,
    tiny_sd1_components,
    write_tiny_diffusers_folder,
    write_tiny_single_file,
)
from webui.models.ldm_convert import clip_to_ldm, unet_to_ldm, vae_to_ldm

StateDict = dict[str, torch.Tensor]

_TINY_UNET = dict(
    sample_size=8,
    block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
)
UNET_CONFIGS = {
    "tiny-1-layer": dict(_TINY_UNET, layers_per_block=1),
    "tiny-2-layers-9ch": dict(_TINY_UNET, layers_per_block=2, in_channels=9),
    "sd1-4-levels": dict(
        _TINY_UNET,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    ),
    # Same naming scheme; exercises attention-less first level, linear proj, added embeddings.
    "sdxl-like": dict(
        _TINY_UNET,
        block_out_channels=(32, 64, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 2),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        cross_attention_dim=64,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 32,
    ),
}
VAE_CONFIGS = {
    "tiny": dict(block_out_channels=(32, 64), layers_per_block=1),
    "3-levels": dict(block_out_channels=(32, 32, 64), layers_per_block=2),
}


def assert_state_dicts_equal(actual: StateDict, expected: StateDict) -> None:
    assert actual.keys() == expected.keys(), set(actual) ^ set(expected)
    different = [k for k in expected if not torch.equal(actual[k], expected[k])]
    assert not different, different[:5]


@pytest.fixture(scope="module")
def components() -> dict[str, Any]:
    return tiny_sd1_components(seed=0)


@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_diffusers_folder(tmp_path_factory.mktemp("tiny") / "sd1", seed=0)


# --- shipped tokenizer ---------------------------------------------------------------


@pytest.mark.parametrize("folder, pad_id", [("clip_tokenizer", 49407), ("clip_tokenizer_pad_bang", 0)])
def test_shipped_tokenizer_matches_openai_clip(folder: str, pad_id: int) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(CONFIGS_DIR / folder, local_files_only=True)

    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    ids = tokenizer("hello world").input_ids
    assert (ids[0], ids[-1]) == (49406, 49407)
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    assert tokenizer.pad_token_id == pad_id


# --- round trips through diffusers' own LDM -> diffusers converters ----------------------


@pytest.mark.parametrize("name", UNET_CONFIGS)
def test_unet_round_trip(name: str) -> None:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIGS[name])
    config = dict(unet.config)

    ldm = unet_to_ldm(unet.state_dict(), config)
    assert all(k.startswith("model.diffusion_model.") for k in ldm)
    back = convert_ldm_unet_checkpoint(ldm, config)

    assert_state_dicts_equal(back, unet.state_dict())
    UNet2DConditionModel(**UNET_CONFIGS[name]).load_state_dict(back, strict=True)


@pytest.mark.parametrize("name", VAE_CONFIGS)
def test_vae_round_trip(name: str) -> None:
    levels = len(VAE_CONFIGS[name]["block_out_channels"])
    kwargs = dict(
        VAE_CONFIGS[name],
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        norm_num_groups=32,
        latent_channels=4,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(**kwargs)
    config = dict(vae.config)

    ldm = vae_to_ldm(vae.state_dict(), config)
    channels = VAE_CONFIGS[name]["block_out_channels"][-1]
    assert ldm["first_stage_model.decoder.mid.attn_1.q.weight"].shape == (channels, channels, 1, 1)
    back = convert_ldm_vae_checkpoint(ldm, config)

    assert_state_dicts_equal(back, vae.state_dict())
    AutoencoderKL(**kwargs).load_state_dict(back, strict=True)


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "text_model-prefixed"])
def test_clip_round_trip(components: dict[str, Any], nested: bool) -> None:
    text_encoder = components["text_encoder"]
    original = text_encoder.state_dict()
    source = {f"text_model.{k}": v for k, v in original.items()} if nested else original

    ldm = clip_to_ldm(source)
    assert all(k.startswith("cond_stage_model.transformer.text_model.") for k in ldm)
    # diffusers emits `text_model.*`; transformers >= 5.6 CLIPTextModel has no such wrapper.
    back = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(ldm).items()}

    assert_state_dicts_equal(back, original)
    text_encoder.load_state_dict(back, strict=True)


def test_unknown_keys_are_rejected(components: dict[str, Any]) -> None:
    unet = components["unet"]
    state = dict(unet.state_dict(), **{"some_new_module.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="some_new_module"):
        unet_to_ldm(state, dict(unet.config))


# --- tiny model files ------------------------------------------------------------------


@pytest.mark.parametrize("in_channels, dtype", [(4, torch.float16), (9, torch.float32)])
def test_single_file_has_ldm_layout(tmp_path: Path, in_channels: int, dtype: torch.dtype) -> None:
    path = write_tiny_single_file(tmp_path / "tiny.safetensors", in_channels=in_channels, dtype=dtype)

    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        conv_in = f.get_tensor("model.diffusion_model.input_blocks.0.0.weight")
        position_ids = f.get_tensor("cond_stage_model.transformer.text_model.embeddings.position_ids")
        alphas_cumprod = f.get_tensor("alphas_cumprod")

    for prefix in ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.text_model."):
        assert any(k.startswith(prefix) for k in keys), prefix
    assert conv_in.shape == (32, in_channels, 3, 3) and conv_in.dtype == dtype
    assert position_ids.dtype == torch.int64 and position_ids.tolist() == [list(range(77))]
    assert alphas_cumprod.shape == (1000,)


def test_single_file_loads_in_diffusers(tmp_path: Path, diffusers_folder: Path) -> None:
    """diffusers' own single-file loader reads our file back into the same weights."""
    path = write_tiny_single_file(tmp_path / "tiny.safetensors", seed=0, dtype=torch.float32)

    from_single = StableDiffusionPipeline.from_single_file(
        str(path), config=str(diffusers_folder), local_files_only=True, safety_checker=None
    )
    reference = StableDiffusionPipeline.from_pretrained(diffusers_folder, local_files_only=True, safety_checker=None)

    for name in ("unet", "vae", "text_encoder"):
        assert_state_dicts_equal(getattr(from_single, name).state_dict(), getattr(reference, name).state_dict())


def test_diffusers_folder_generates_an_image(diffusers_folder: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(diffusers_folder, local_files_only=True, safety_checker=None)

    result = pipe(
        "a photo of a cat",
        num_inference_steps=2,
        height=64,
        width=64,
        output_type="pil",
        generator=torch.Generator().manual_seed(0),
    )

    image = np.asarray(result.images[0])
    assert image.shape == (64, 64, 3)
    assert image.std() > 1.0  # random weights must still give a non-constant picture
