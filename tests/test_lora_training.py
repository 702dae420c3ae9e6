"""LoRA and DreamBooth-LoRA training on tiny checkpoints: it learns, its file is a kohya LoRA that diffusers'
own loader reads and that changes the image, and every bad input is refused before anything is queued."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from tests.conftest import install, make_settings
from tests.tiny_models import write_tiny_sdxl_single_file
from tests.training_helpers import colour_set, lora_request, train
from webui.errors import InvalidRequest
from webui.infotext import parse_infotext
from webui.models.loras import lora_hash
from webui.services.merge_request import MergeRequest
from webui.types import Txt2ImgRequest
from webui.models import loader
from webui.services.container import build_services
from webui.training.lora_request import from_dict


@pytest.fixture(scope="module")
def env(tmp_path_factory, model_files):
    root = tmp_path_factory.mktemp("lora-training")
    data = root / "data"
    install(model_files["single"], data)
    install(write_tiny_sdxl_single_file(root / "tiny-sdxl.safetensors"), data)
    bad = data / "models" / "Stable-diffusion" / "not-a-model.safetensors"
    from safetensors.torch import save_file
    save_file({"some.weight": torch.zeros(2, 2)}, str(bad))
    # The test's temp folders hold the training images: allowed like --batch-dirs folders.
    services = build_services(make_settings(data, batch_dirs=(tmp_path_factory.getbasetemp(),)))
    yield services, root
    services.queue.shutdown()


@pytest.fixture(scope="module")
def trained(env):
    """One 24-step run on four solid colours, with the text encoder trained too."""
    services, root = env
    images = colour_set(root / "colours")
    report = train(services, lora_request(images, "colours", max_train_steps=24, train_text_encoder=True,
                                          sample_prompts=["colour1 square"], sample_steps=2, sample_every=12))
    return services, report


def _pipe(services, title):
    return loader.load(services.registry.find(title), torch.float32).pipe


def _image(pipe, prompt="colour1 square"):
    out = pipe(prompt, num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(1),
               output_type="np")
    return torch.from_numpy(out.images[0])


def test_loss_is_finite_and_decreases(trained):
    _, report = trained
    assert report["state"] == "done", report["message"]
    losses = [point["loss"] for point in report["history"]]
    assert len(losses) == 24 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 * 0.95
    assert [point["step"] for point in report["history"]] == list(range(1, 25))
    assert report["history"][-1]["lr"] == pytest.approx(1e-2)


def test_the_lora_is_kohya_format_with_ss_metadata(trained):
    services, report = trained
    path = services.settings.lora_dir / "colours.safetensors"
    assert report["output"] == str(path)
    with safe_open(str(path), "pt") as fh:
        keys, meta = list(fh.keys()), fh.metadata()
    assert any(k.startswith("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down")
               for k in keys)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up") for k in keys)
    assert all(k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha")) for k in keys)
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "8"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_num_train_images"] == "4"
    assert meta["ss_sd_model_hash"] == services.registry.find("tiny-sd15").short_hash
    assert json.loads(meta["ss_tag_frequency"]) == {"colours": {f"colour{i} square": 1 for i in range(4)}}
    assert len(meta["studio_dataset_hash"]) == 64 and json.loads(meta["studio_settings"])["rank"] == 8


def test_diffusers_loader_reads_it_and_it_changes_the_image(trained):
    services, _ = trained
    pipe = _pipe(services, "tiny-sd15")
    pipe.set_progress_bar_config(disable=True)
    base = _image(pipe)
    pipe.load_lora_weights(str(services.settings.lora_dir / "colours.safetensors"), adapter_name="colours")
    assert getattr(pipe.text_encoder, "peft_config", None), "the text-encoder part was not loaded"
    with_lora = _image(pipe)
    assert (with_lora - base).abs().max() > 1e-3


def test_samples_are_kept_and_the_resume_states_rotate(trained):
    _, report = trained
    assert [step for step, _ in report["samples"]] == [12, 24]
    assert all(isinstance(image, Image.Image) and image.size == (64, 64) for _, image in report["samples"])
    assert [s.rsplit("/", 1)[1] for s in report["resume_states"]] == ["step-00000024.state.safetensors"]


def test_resume_continues_exactly(env):
    services, root = env
    images = colour_set(root / "resume-set")
    straight = train(services, lora_request(images, "straight", max_train_steps=6, save_every=3, keep_states=4,
                                            random_flip=True, batch_size=2))
    assert straight["state"] == "done", straight["message"]
    halfway = f"{straight['id']}/step-00000003.state.safetensors"
    resumed = train(services, lora_request(images, "resumed", max_train_steps=6, resume_from=halfway,
                                           random_flip=True, batch_size=2))
    assert resumed["state"] == "done", resumed["message"]
    assert [p["step"] for p in resumed["history"]] == [4, 5, 6]
    assert [p["loss"] for p in resumed["history"]] == [p["loss"] for p in straight["history"][3:]]
    with safe_open(straight["output"], "pt") as a, safe_open(resumed["output"], "pt") as b:
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key


def test_sdxl_lora_with_both_text_encoders(env):
    services, root = env
    images = colour_set(root / "xl-set")
    report = train(services, lora_request(images, "xl", base_model="tiny-sdxl", max_train_steps=2,
                                          train_text_encoder=True))
    assert report["state"] == "done", report["message"]
    with safe_open(report["output"], "pt") as fh:
        keys, meta = list(fh.keys()), fh.metadata()
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0") for k in keys)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_0") for k in keys)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    pipe = _pipe(services, "tiny-sdxl")
    pipe.set_progress_bar_config(disable=True)
    base = _image(pipe)
    pipe.load_lora_weights(report["output"])
    assert (_image(pipe) - base).abs().max() > 1e-4


def test_dreambooth_with_prior_preservation(env):
    services, root = env
    instance = colour_set(root / "db-instance", captions=False)
    classes = colour_set(root / "db-class", captions=False)
    report = train(services, lora_request(instance, "db", method="dreambooth_lora", max_train_steps=3,
                                          instance_prompt="a photo of sks square", class_data_dir=str(classes),
                                          class_prompt="a photo of a square", prior_loss_weight=0.5))
    assert report["state"] == "done", report["message"]
    with safe_open(report["output"], "pt") as fh:
        meta = fh.metadata()
    assert meta["studio_method"] == "dreambooth_lora" and meta["ss_num_reg_images"] == "4"


def _refused(services, request) -> InvalidRequest:
    before = len(services.queue.jobs())
    with pytest.raises(InvalidRequest) as caught:
        services.training.start(request)
    assert len(services.queue.jobs()) == before, "a refused run must not be queued"
    return caught.value


def test_bad_folders_images_and_captions_are_named(env, tmp_path):
    services, root = env
    assert "not an existing folder this server may use" in str(_refused(services, lora_request(tmp_path / "nope",
                                                                                                "x")))
    (tmp_path / "empty").mkdir()
    assert "holds no PNG, JPEG or WebP images" in str(_refused(services, lora_request(tmp_path / "empty", "x")))
    # Outside the data dir and --batch-dirs: refused like a missing folder (the reply reveals nothing about it).
    error = _refused(services, lora_request("/etc", "x"))
    assert error.field == "data_dir" and "not an existing folder this server may use" in str(error)
    broken = colour_set(tmp_path / "broken")
    (broken / "img9.png").write_bytes(b"not a png")
    (broken / "img9.txt").write_text("x")
    error = _refused(services, lora_request(broken, "x"))
    assert error.field == "data_dir" and "img9.png is not a readable image" in str(error)
    small = colour_set(tmp_path / "small")
    Image.new("RGB", (16, 20)).save(small / "tiny.png")
    (small / "tiny.txt").write_text("x")
    assert "tiny.png is 16x20" in str(_refused(services, lora_request(small, "x")))
    uncaptioned = colour_set(tmp_path / "uncaptioned")
    (uncaptioned / "img2.txt").unlink()
    (uncaptioned / "img3.txt").write_text("  ")
    error = _refused(services, lora_request(uncaptioned, "x"))
    assert "img2.txt" in str(error) and "img3.txt" in str(error) and "img0.txt" not in str(error)
    accepted = services.training.start(lora_request(uncaptioned, "shared-caption", caption="a square",
                                                    max_train_steps=1))
    assert services.queue.get(accepted).wait_done(120)


def test_bad_base_models_and_settings_are_named(env, tmp_path):
    services, root = env
    images = colour_set(tmp_path / "set")
    error = _refused(services, lora_request(images, "x", base_model="missing-model"))
    assert error.field == "base_model" and "missing-model" in str(error)
    error = _refused(services, lora_request(images, "x", base_model="not-a-model"))
    assert error.field == "base_model" and "not a diffusion checkpoint" in str(error)
    error = _refused(services, lora_request(images, "x", mixed_precision="fp16"))
    assert error.field == "mixed_precision" and "CUDA" in str(error)
    error = _refused(services, lora_request(images, "x", optimizer="adamw8bit"))
    assert error.field == "optimizer"
    error = _refused(services, lora_request(images, "x", resume_from="../../etc/passwd"))
    assert error.field == "resume_from"


@pytest.mark.parametrize("body, field", [
    ({"resolution": 60}, "resolution"),
    ({"rank": 0}, "rank"),
    ({"learning_rate": -1}, "learning_rate"),
    ({"lr_scheduler": "exotic"}, "lr_scheduler"),
    ({"output_name": "../escape"}, "output_name"),
    ({"batch_size": "two"}, "batch_size"),
    ({"unknown_setting": 1}, "unknown_setting"),
    ({"class_data_dir": "/tmp"}, "class_data_dir"),
])
def test_request_values_are_checked(body, field):
    base = {"base_model": "m", "data_dir": "/d", "output_name": "out"}
    with pytest.raises(InvalidRequest) as caught:
        from_dict({**base, **body})
    assert caught.value.field == field


def test_dreambooth_needs_an_instance_prompt():
    with pytest.raises(InvalidRequest) as caught:
        from_dict({"base_model": "m", "data_dir": "/d", "output_name": "o"}, method="dreambooth_lora")
    assert caught.value.field == "instance_prompt"


def test_bf16_checkpointing_accumulation_cosine_and_centre_crop_run(env):
    services, root = env
    images = colour_set(root / "settings-set")
    report = train(services, lora_request(images, "settings", max_train_steps=3, mixed_precision="bf16",
                                          gradient_checkpointing=True, gradient_accumulation=2, batch_size=2,
                                          lr_scheduler="cosine", lr_warmup_steps=1, crop="center",
                                          train_text_encoder=True))
    assert report["state"] == "done", report["message"]
    lrs = [p["lr"] for p in report["history"]]
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(1e-2) and lrs[2] < lrs[1]  # warmup, then cosine decay
    assert all(torch.isfinite(torch.tensor([p["loss"] for p in report["history"]])))
    with safe_open(report["output"], "pt") as fh:
        assert all(fh.get_tensor(k).dtype == torch.float32 for k in fh.keys())


def test_aspect_ratio_buckets_keep_each_batch_one_size(env, tmp_path):
    from webui.training import lora_data

    choices = lora_data.buckets(512, 64)
    assert (512, 512) in choices and all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in choices)
    Image.new("RGB", (300, 100)).save(tmp_path / "wide.png")
    Image.new("RGB", (100, 300)).save(tmp_path / "tall.png")
    wide, tall = lora_data.bucket_for(tmp_path / "wide.png", choices), lora_data.bucket_for(tmp_path / "tall.png",
                                                                                           choices)
    assert wide[0] > wide[1] and tall[1] > tall[0]
    order = lora_data.BatchOrder([(64, 64), (96, 32), (64, 64), (96, 32), (64, 64)], batch_size=2, seed=3)
    assert order.per_epoch == 3
    for micro in range(9):
        _, batch = order.batch(micro)
        assert len({(64, 64) if i in (0, 2, 4) else (96, 32) for i in batch}) == 1
    assert sorted(i for m in range(3) for i in order.batch(m)[1]) == [0, 1, 2, 3, 4]  # each image once an epoch
    services, root = env
    mixed = colour_set(root / "mixed-set")
    for name, size in (("wide", (96, 48)), ("tall", (48, 96))):
        Image.new("RGB", size, (90, 90, 90)).save(mixed / f"{name}.png")
        (mixed / f"{name}.txt").write_text(f"{name} grey")
    report = train(services, lora_request(mixed, "buckets", max_train_steps=4, batch_size=2))
    assert report["state"] == "done", report["message"]


def test_the_memory_estimate_refuses_what_cannot_fit():
    from webui.training.lora_training import estimated_bytes, memory_problem

    sd15 = dict(weight_bytes=2 * 1_066_000_000, unet_params=860_000_000)  # fp16-on-device SD1.5 sizes
    small = from_dict({"base_model": "m", "data_dir": "/d", "output_name": "o", "resolution": 512})
    assert 3 * 2**30 < estimated_bytes(small, **sd15) < 8 * 2**30
    assert memory_problem(small, **sd15, free=24 * 2**30, where="free on the GPU") is None
    big = from_dict({"base_model": "m", "data_dir": "/d", "output_name": "o", "resolution": 1024, "batch_size": 8})
    problem = memory_problem(big, **sd15, free=24 * 2**30, where="free on the GPU")
    assert problem.startswith("this run needs about") and "24.0 GiB is free on the GPU" in problem
    checkpointed = from_dict({"base_model": "m", "data_dir": "/d", "output_name": "o", "resolution": 1024,
                              "batch_size": 8, "gradient_checkpointing": True})
    assert estimated_bytes(checkpointed, **sd15) < estimated_bytes(big, **sd15)


def _mean_diff(a, b) -> float:
    return float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())


def test_the_trained_lora_works_in_a_prompt_and_bakes_into_a_merged_checkpoint(trained):
    """The whole loop: train here, use it by tag (our own reader), and bake it into a new checkpoint."""
    services, _ = trained
    gen = services.generation
    small = dict(width=64, height=64, steps=3, seed=5, sampler_name="Euler", save_images=False,
                 checkpoint="tiny-sd15")
    base = gen.txt2img(Txt2ImgRequest(prompt="colour1 square", **small))
    tagged = gen.txt2img(Txt2ImgRequest(prompt="colour1 square <lora:colours:1>", **small))
    assert tagged.warnings == []
    assert _mean_diff(tagged.images[0], base.images[0]) > 1.0
    lora_file = services.settings.lora_dir / "colours.safetensors"
    assert parse_infotext(tagged.infotexts[0]).params["Lora hashes"] == f"colours: {lora_hash(lora_file)}"

    result = services.merging.merge(MergeRequest("tiny-sd15", method="No interpolation", output_name="baked",
                                                 loras=(("colours", 1.0),)), timeout=120)
    baked = gen.txt2img(Txt2ImgRequest(prompt="colour1 square", **{**small, "checkpoint": result.title}))
    # fp16 file vs. fp32 deltas at run time: close to the tagged image, far from the base one.
    assert _mean_diff(baked.images[0], tagged.images[0]) < _mean_diff(baked.images[0], base.images[0]) / 4
