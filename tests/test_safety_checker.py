"""The optional safety checker: clear status without weights, per-image verdicts, safe loading, strong blur."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPImageProcessorPil

from webui.errors import ModelLoadError
from webui.models.safety_checker import (
    PREPROCESSOR_DIR,
    SafetyChecker,
    blur_flagged,
    safety_checker_status,
)

TINY = CLIPConfig(
    text_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1),
    vision_config=dict(hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                       image_size=224, patch_size=32),  # 224: the crop size of the shipped preprocessor config
    projection_dim=8,
)
NEVER, ALWAYS = 10.0, -10.0  # thresholds: a cosine similarity is always below 10 and above -10


def noise_image(seed: int = 1) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8))


def gradient_image() -> Image.Image:
    ramp = np.linspace(0, 255, 64, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(ramp, (64, 1))] * 3, axis=-1))


def tiny_checker(*, concept: float, special: float = NEVER) -> StableDiffusionSafetyChecker:
    torch.manual_seed(0)
    model = StableDiffusionSafetyChecker(TINY).eval()
    model.concept_embeds_weights.data.fill_(concept)
    model.special_care_embeds_weights.data.fill_(special)
    return model


def save(model: StableDiffusionSafetyChecker, folder: Path, *, released_layout: bool = False) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    if released_layout:  # the key names of the files users download (saved by transformers 4)
        tensors = load_file(folder / "model.safetensors")
        tensors = {("vision_model." + k if k.startswith("vision_model.") else k): v for k, v in tensors.items()}
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@torch.no_grad()
def embedding(model: StableDiffusionSafetyChecker, image: Image.Image) -> torch.Tensor:
    processor = CLIPImageProcessorPil.from_pretrained(PREPROCESSOR_DIR)
    pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
    return torch.nn.functional.normalize(model.visual_projection(model.vision_model(pixels)[1]))[0]


@pytest.fixture(scope="module")
def selective(tmp_path_factory) -> StableDiffusionSafetyChecker:
    """A checker whose every concept is the noise image: it flags that image and not the gradient."""
    model = tiny_checker(concept=0.0)
    target, other = embedding(model, noise_image()), embedding(model, gradient_image())
    similarity = float(target @ other)
    assert similarity < 0.98  # the two images must be told apart by this tiny random model
    model.concept_embeds.data[:] = target
    model.concept_embeds_weights.data.fill_((1.0 + similarity) / 2)
    return model


def load(folder: Path) -> SafetyChecker:
    return SafetyChecker.from_folder(folder, torch.float32)


def test_status_says_what_is_missing_and_where(tmp_path):
    models = tmp_path / "models"
    message = safety_checker_status(models)
    assert "config.json and model.safetensors" in message
    assert str(models / "safety_checker") in message
    assert "CompVis/stable-diffusion-safety-checker" in message

    save(tiny_checker(concept=NEVER), models / "safety_checker")
    (models / "safety_checker" / "model.safetensors").unlink()
    message = safety_checker_status(models)
    assert "put model.safetensors" in message and "config.json" not in message


def test_status_is_none_when_the_weights_are_there(tmp_path):
    save(tiny_checker(concept=NEVER), tmp_path / "safety_checker")
    assert safety_checker_status(tmp_path) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("threshold, expected", [(ALWAYS, True), (NEVER, False)], ids=["flag-all", "flag-none"])
def test_thresholds_decide_the_verdict(tmp_path, threshold, expected, dtype):
    folder = save(tiny_checker(concept=threshold), tmp_path / "safety_checker")
    checker = SafetyChecker.from_folder(folder, dtype)
    images = [noise_image(), gradient_image(), noise_image(2).convert("L"), noise_image(3).convert("RGBA")]
    assert checker.check(images) == [expected] * 4


def test_special_care_concepts_alone_do_not_flag(tmp_path):
    # diffusers' rule: a special-care hit only lowers every concept threshold by 0.01.
    assert load(save(tiny_checker(concept=NEVER, special=ALWAYS), tmp_path / "a")).check([noise_image()]) == [False]


def test_verdicts_are_per_image_and_in_order(tmp_path, selective):
    checker = load(save(selective, tmp_path / "safety_checker"))
    assert checker.check([noise_image(), gradient_image()]) == [True, False]
    assert checker.check([gradient_image(), noise_image()]) == [False, True]
    many = [gradient_image()] * 9 + [noise_image()]  # more than one forward batch
    assert checker.check(many) == [False] * 9 + [True]
    assert checker.check([]) == []


def test_loads_the_key_layout_of_the_released_weights(tmp_path, selective):
    checker = load(save(selective, tmp_path / "safety_checker", released_layout=True))
    assert checker.check([noise_image(), gradient_image()]) == [True, False]  # random weights would not do this


def test_missing_folder_is_a_clear_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="put config.json and model.safetensors"):
        load(tmp_path / "safety_checker")


def test_pickled_weights_are_never_unpickled(tmp_path):
    folder = save(tiny_checker(concept=NEVER), tmp_path / "safety_checker")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pickle-ran"

    class Payload:
        def __reduce__(self):
            return open, (str(marker), "w")

    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ModelLoadError, match="pickle and is never loaded"):
        load(folder)
    assert "pickle" in safety_checker_status(tmp_path)
    assert not marker.exists()


def test_corrupt_weights_are_a_load_error_naming_the_folder(tmp_path):
    folder = save(tiny_checker(concept=NEVER), tmp_path / "safety_checker")
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ModelLoadError, match=f"{folder}.*could not be loaded"):
        load(folder)


def test_unreadable_config_is_a_load_error(tmp_path):
    folder = save(tiny_checker(concept=NEVER), tmp_path / "safety_checker")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        load(folder)


def test_weights_missing_tensors_are_refused_not_filled_with_random_values(tmp_path):
    folder = save(tiny_checker(concept=NEVER), tmp_path / "safety_checker")
    tensors = load_file(folder / "model.safetensors")
    del tensors["concept_embeds_weights"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="does not match.*concept_embeds_weights is missing"):
        load(folder)


def test_weights_of_another_size_are_refused(tmp_path):
    folder = save(tiny_checker(concept=NEVER), tmp_path / "safety_checker")
    wider = CLIPConfig(text_config=TINY.text_config.to_dict(),
                       vision_config={**TINY.vision_config.to_dict(), "hidden_size": 32}, projection_dim=8)
    wider.save_pretrained(folder)  # config.json now disagrees with the tensors' shapes
    with pytest.raises(ModelLoadError, match=r"does not match.*has shape \[16.*\], config.json implies \[32"):
        load(folder)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_blur_removes_detail_and_keeps_size_and_mode(mode):
    image = noise_image().resize((256, 192)).convert(mode)
    blurred = blur_flagged(image)
    assert blurred.size == image.size
    assert blurred.mode == (mode if mode != "P" else "RGB")
    detail = np.asarray(image.convert("L"), dtype=float).std()
    assert np.asarray(blurred.convert("L"), dtype=float).std() < detail / 10
