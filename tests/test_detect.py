"""Architecture detection from safetensors headers: shapes, not file names or sizes, decide."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from webui.errors import ModelLoadError
from webui.models import detect


def test_tiny_sd1_detected_from_shapes(model_files):
    spec = detect.detect(detect.read_safetensors_header(model_files["single"]), "tiny")
    assert (spec.family, spec.variant) == ("sd1", "normal")
    assert spec.unet_config["block_out_channels"] == [32, 64]
    assert spec.unet_config["down_block_types"] == ["CrossAttnDownBlock2D", "DownBlock2D"]
    assert spec.unet_config["cross_attention_dim"] == 32
    assert spec.unet_config["layers_per_block"] == 1
    assert spec.vae_config["block_out_channels"] == [32, 64]
    assert spec.text_configs[0]["hidden_size"] == 32
    assert spec.text_configs[0]["num_hidden_layers"] == 2
    assert spec.label == "SD 1.x"


def test_inpainting_variant_from_input_channels(model_files):
    spec = detect.detect(detect.read_safetensors_header(model_files["inpaint"]), "inpaint")
    assert spec.variant == "inpaint"
    assert spec.unet_config["in_channels"] == 9


def _full_sd15_shapes() -> dict[str, tuple[int, ...]]:
    """The shapes of a real SD 1.5 checkpoint, from diffusers' own SD1.5 configs, without any weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from webui.models.ldm_convert import pipeline_components_to_ldm

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=2)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12))
    state = pipeline_components_to_ldm(unet, vae, text)
    return {k: tuple(v.shape) for k, v in state.items()}


def test_full_size_sd15_layout_gives_the_standard_configs():
    spec = detect.detect(_full_sd15_shapes(), "v1-5-pruned-emaonly.safetensors")
    unet = spec.unet_config
    assert spec.family == "sd1"
    assert unet["block_out_channels"] == [320, 640, 1280, 1280]
    assert unet["layers_per_block"] == 2
    assert unet["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert unet["up_block_types"] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert unet["cross_attention_dim"] == 768
    assert unet["use_linear_projection"] is False
    assert spec.vae_config["block_out_channels"] == [128, 256, 512, 512]
    assert spec.text_configs[0]["num_attention_heads"] == 12
    assert spec.default_size == 512


def _write_header(path, header: dict, data: bytes = b"") -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def test_truncated_file_is_named_and_explained(tmp_path, model_files):
    data = model_files["single"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"cut\.safetensors is truncated"):
        detect.read_safetensors_header(cut)


def test_pickle_in_disguise_is_refused(tmp_path):
    fake = tmp_path / "evil.safetensors"
    fake.write_bytes(pickle.dumps({"model": [1, 2, 3]}))
    with pytest.raises(ModelLoadError, match=r"evil\.safetensors is a pickle"):
        detect.read_safetensors_header(fake)
    zipped = tmp_path / "zipped.safetensors"
    torch.save({"a": torch.zeros(2)}, zipped)  # torch's zip format starts with "PK"
    with pytest.raises(ModelLoadError, match="pickle"):
        detect.read_safetensors_header(zipped)


@pytest.mark.parametrize("content", [b"", b"abc", b"\xff" * 64])
def test_garbage_is_not_a_safetensors_file(tmp_path, content):
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(content)
    with pytest.raises(ModelLoadError, match=r"garbage\.safetensors"):
        detect.read_safetensors_header(bad)


def test_unknown_layout_gets_a_clear_message(tmp_path):
    lora = tmp_path / "some-lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320)}, lora)
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion checkpoint.*models/Lora"):
        detect.detect(detect.read_safetensors_header(lora), lora.name)


def test_unet_without_text_encoder_is_unknown_layout():
    shapes = {"model.diffusion_model.input_blocks.0.0.weight": (32, 4, 3, 3),
              "first_stage_model.encoder.conv_in.weight": (32, 3, 3, 3)}
    with pytest.raises(ModelLoadError, match="unknown model layout"):
        detect.detect(shapes, "odd.safetensors")


def test_header_entries_past_end_of_file_are_truncation(tmp_path):
    path = tmp_path / "short.safetensors"
    _write_header(path, {"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8)
    with pytest.raises(ModelLoadError, match="truncated"):
        detect.read_safetensors_header(path)
