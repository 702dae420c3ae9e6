"""SD 2.x and SDXL single files (LDM layout, tiny random weights): detection, strict loading, generation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from tests.conftest import install, make_settings
from tests.tiny_models import (SD2_TEXT, SD2_UNET, SDXL_CLIP_G, SDXL_CLIP_L, SDXL_UNET, tiny_vae,
                               write_tiny_sd2_single_file, write_tiny_sdxl_single_file)
from webui.models import detect, loader
from webui.models.ldm_convert import (OPEN_CLIP_PREFIX, SDXL_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX, clip_to_ldm,
                                      open_clip_to_ldm, unet_to_ldm, vae_to_ldm)
from webui.models.registry import HashCache, ModelRegistry
from webui.services.container import build_services
from webui.types import Txt2ImgRequest

FAMILIES = ("sd2", "sdxl")
BUILDERS = {"sd2": write_tiny_sd2_single_file, "sdxl": write_tiny_sdxl_single_file}
UNET_CONFIGS = {"sd2": SD2_UNET, "sdxl": SDXL_UNET}
TEXT_CONFIGS = {"sd2": (SD2_TEXT,), "sdxl": (SDXL_CLIP_L, SDXL_CLIP_G)}


@pytest.fixture(scope="module")
def family_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("family-files")
    return {family: build(root / f"tiny-{family}.safetensors", seed=4) for family, build in BUILDERS.items()}


def _checkpoint(path: Path, data_dir: Path):
    installed = install(path, data_dir)
    registry = ModelRegistry(installed.parent, HashCache(data_dir / "cache.json"))
    registry.refresh()
    return registry.find(installed.name)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def test_builders_write_small_files(family_files):
    for path in family_files.values():
        assert path.stat().st_size < 20 * 1024 * 1024


def test_open_clip_to_ldm_inverts_diffusers_converter():
    torch.manual_seed(0)
    bigg = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_CLIP_G))
    ldm = open_clip_to_ldm(bigg.state_dict(), SDXL_OPEN_CLIP_PREFIX)
    assert ldm[f"{SDXL_OPEN_CLIP_PREFIX}transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * 64, 64)
    assert ldm[f"{SDXL_OPEN_CLIP_PREFIX}text_projection"].shape == (64, SDXL_CLIP_G["projection_dim"])
    back = convert_open_clip_checkpoint(bigg, ldm, prefix=SDXL_OPEN_CLIP_PREFIX)
    original = bigg.state_dict()
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)

    sd2 = CLIPTextModel(CLIPTextConfig(**SD2_TEXT))
    ldm = open_clip_to_ldm(sd2.state_dict(), OPEN_CLIP_PREFIX, add_dropped_last_layer=True)
    blocks = {k.split(".")[4] for k in ldm if ".resblocks." in k}
    assert blocks == {"0", "1", "2"}  # one more than the diffusers model, as in a real SD 2.x file
    back = {k.removeprefix("text_model."): v for k, v in convert_open_clip_checkpoint(sd2, ldm).items()
            if not k.startswith("text_model.encoder.layers.2.")}  # diffusers only drops index 23 itself
    original = sd2.state_dict()
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)


@pytest.mark.parametrize("family", FAMILIES)
def test_family_and_configs_come_from_the_shapes(family_files, family):
    spec = detect.detect(detect.read_safetensors_header(family_files[family]), family_files[family].name)
    assert (spec.family, spec.variant) == (family, "normal")
    built = {k: v for k, v in UNET_CONFIGS[family].items() if k != "sample_size"}  # detect uses the real size
    assert {k: _plain(spec.unet_config.get(k)) for k in built} == {k: _plain(v) for k, v in built.items()}
    assert len(spec.text_configs) == len(TEXT_CONFIGS[family])
    for derived, built_text in zip(spec.text_configs, TEXT_CONFIGS[family]):
        assert {k: derived[k] for k in built_text} == built_text
    vae = tiny_vae().config
    assert spec.vae_config["block_out_channels"] == list(vae.block_out_channels)
    assert spec.vae_config["layers_per_block"] == vae.layers_per_block
    assert spec.default_size == {"sd2": 512, "sdxl": 1024}[family]


def _export(family: str, pipe) -> dict[str, torch.Tensor]:
    """The loaded pipeline written back in the LDM layout."""
    state = {**unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config)),
             **vae_to_ldm(pipe.vae.state_dict(), dict(pipe.vae.config))}
    if family == "sd2":
        state.update(open_clip_to_ldm(pipe.text_encoder.state_dict(), OPEN_CLIP_PREFIX))
    else:
        state.update(clip_to_ldm(pipe.text_encoder.state_dict(), prefix=SDXL_CLIP_PREFIX))
        state.update(open_clip_to_ldm(pipe.text_encoder_2.state_dict(), SDXL_OPEN_CLIP_PREFIX))
    return state


@pytest.mark.parametrize("family", FAMILIES)
def test_every_tensor_of_the_file_lands_in_the_model(family_files, data_dir, family):
    info = _checkpoint(family_files[family], data_dir)
    model = loader.load(info, torch.float32)
    assert model.family == family
    file_state = load_file(str(info.path))
    exported = _export(family, model.pipe)
    # Only what the model is known not to use is left over.
    if family == "sd2":
        dropped = {k for k in file_state if k.startswith(f"{OPEN_CLIP_PREFIX}transformer.resblocks.2.")}
        assert len(dropped) == 12  # the unused final OpenCLIP layer
        dropped.add(f"{OPEN_CLIP_PREFIX}text_projection")
    else:
        dropped = {f"{SDXL_CLIP_PREFIX}text_model.embeddings.position_ids"}
    assert set(file_state) - set(exported) == dropped
    assert set(exported) <= set(file_state)
    different = [k for k in exported if not torch.equal(exported[k], file_state[k].float())]
    assert not different, different[:5]

    # Spot checks straight through the LDM names, independent of our own exporter.
    unet = model.pipe.unet
    assert torch.equal(unet.conv_in.weight, file_state["model.diffusion_model.input_blocks.0.0.weight"].float())
    if family == "sd2":
        qkv = file_state[f"{OPEN_CLIP_PREFIX}transformer.resblocks.1.attn.in_proj_weight"].float()
        layer = model.pipe.text_encoder.encoder.layers[1].self_attn
        assert torch.equal(layer.k_proj.weight, qkv[64:128])
        assert len(model.pipe.text_encoder.encoder.layers) == 2
    else:
        assert torch.equal(unet.add_embedding.linear_1.weight,
                           file_state["model.diffusion_model.label_emb.0.0.weight"].float())
        assert torch.equal(model.pipe.text_encoder_2.text_projection.weight,
                           file_state[f"{SDXL_OPEN_CLIP_PREFIX}text_projection"].float().T)


@pytest.mark.parametrize("family", FAMILIES)
def test_txt2img_generates_an_image(family_files, data_dir, family, tiny_loader):
    install(family_files[family], data_dir)
    services = build_services(make_settings(data_dir), load=tiny_loader)
    try:
        request = Txt2ImgRequest(prompt="a (red:1.2) fox", negative_prompt="blurry", seed=3, width=64, height=64,
                                 steps=3, save_images=False)
        result = services.generation.txt2img(request)
    finally:
        services.queue.shutdown()
    image = result.images[0]
    assert image.size == (64, 64)
    assert np.asarray(image).astype(np.int16).std() > 1  # a real picture, not a flat or black frame
    assert f"Model: tiny-{family}," in result.infotexts[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_img2img_and_inpainting_run_for_each_family(family_files, data_dir, family, tiny_loader):
    from PIL import Image

    from webui.types import Img2ImgRequest

    install(family_files[family], data_dir)
    services = build_services(make_settings(data_dir), load=tiny_loader)
    init = Image.new("RGB", (64, 64), (40, 90, 200))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    try:
        common = dict(prompt="a fox", init_images=[init], seed=2, width=64, height=64, steps=3, save_images=False)
        plain = services.generation.img2img(Img2ImgRequest(**common, denoising_strength=0.6))
        painted = services.generation.img2img(Img2ImgRequest(**common, mask=mask, mask_blur=0,
                                                             denoising_strength=1.0))
    finally:
        services.queue.shutdown()
    assert plain.images[0].size == (64, 64) and "Denoising strength: 0.6" in plain.infotexts[0]
    assert painted.images[0].getpixel((2, 2)) == (40, 90, 200)  # outside the mask: untouched


def test_sd2_prediction_type_follows_the_yaml_next_to_the_file(family_files, data_dir):
    info = _checkpoint(family_files["sd2"], data_dir)
    assert loader.load(info, torch.float32).scheduler_config["prediction_type"] == "epsilon"
    info.path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert loader.load(info, torch.float32).scheduler_config["prediction_type"] == "v_prediction"
