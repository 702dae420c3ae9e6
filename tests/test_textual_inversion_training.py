"""Textual-inversion training on a tiny random SD1 model, driven as the training runner drives a method:
check -> create -> on_device -> steps -> state / load_state -> artifact."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.tiny_models import tiny_sd1_components, write_tiny_single_file
from webui.errors import InvalidRequest, ModelLoadError
from webui.infotext import parse_infotext
from webui.models import loader
from webui.models.loader import LoadedModel
from webui.training.protocol import TrainingResources, TrainState
from webui.training.textual_inversion import METHOD, caption_of
from webui.training.ti_request import TextualInversionRequest, parse_learn_rate, rate_at
from webui.types import CheckpointInfo, Txt2ImgRequest

COLOURS = [(250, 20, 20), (20, 220, 40), (30, 40, 240)]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a busy 2-core machine run far faster on one thread (two fight over every small op)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def _built() -> StableDiffusionPipeline:
    return StableDiffusionPipeline(**tiny_sd1_components(seed=0), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _tiny_model(family: str = "sd1") -> LoadedModel:
    """A new tiny SD1 model each call (a deep copy: building the random weights again is the slow part)."""
    pipe = _built()
    tokenizer = pipe.tokenizer  # shared: copying a fast tokenizer costs 0.5 s, and the trainer copies its own
    return LoadedModel(info=None, family=family, variant="normal",
                       pipe=copy.deepcopy(pipe, {id(tokenizer): tokenizer}),
                       scheduler_config=loader.base_scheduler_config(), default_size=64)


@pytest.fixture
def data(tmp_path) -> Path:
    root = tmp_path / "data"
    folder = root / "train" / "ti"
    folder.mkdir(parents=True)
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (40, 40), colour).save(folder / f"{i:05d}-swatch.png")
    (folder / "00001-swatch.txt").write_text("green square, flat")
    (root / "models").mkdir()
    return root


class Models:
    """``load_checkpoint`` as the service provides it: a NEW model per call; unknown titles refused."""

    def __init__(self, family: str = "sd1"):
        self.family = family
        self.loaded: list[LoadedModel] = []

    def __call__(self, title: str) -> LoadedModel:
        if title != "tiny":
            raise InvalidRequest("checkpoint", f"no checkpoint '{title}'")
        model = _tiny_model(self.family)
        self.loaded.append(model)
        return model


def _resources(root: Path, models=None) -> TrainingResources:
    return TrainingResources(models_dir=root / "models", embeddings_dir=root / "embeddings",
                             load_checkpoint=models or Models(), checkpoint_hash=lambda title: "abcdef1234")


def _request(**overrides) -> TextualInversionRequest:
    settings = dict(name="swatch", checkpoint="tiny", dataset="train/ti", init_text="red", num_vectors=2,
                    width=32, height=32, steps=40, learn_rate="0.05", batch_size=2, template="subject_filewords.txt")
    return TextualInversionRequest(**{**settings, **overrides})


def _start(request, resources):
    METHOD.check(request, resources)
    trainer = METHOD.create(request, resources)
    trainer.on_device(torch.device("cpu"))
    return trainer


def _fixed_loss(trainer) -> float:
    """The training objective at fixed noise and timesteps: comparable before and after training."""
    generator = torch.Generator().manual_seed(123)
    latents = trainer.latents
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.tensor([100, 400, 800])[: len(latents)]
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(trainer.scheduler_config)
    prompt = f"a photo of a {' '.join(trainer.placeholders)}"
    tokens = trainer.tokenizer([prompt] * len(latents), padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        states = trainer.text_encoder(tokens.input_ids)[0]
        prediction = trainer.unet(scheduler.add_noise(latents, noise, timesteps), timesteps, states).sample
    return torch.nn.functional.mse_loss(prediction, noise).item()


# ---------------------------------------------------------------------------------------------------- learning


def test_training_lowers_the_loss_and_only_the_new_vectors_change(data):
    models = Models()
    trainer = _start(_request(), _resources(data, models))
    base = {key: value.clone() for key, value in trainer.unet.state_dict().items()}
    table = trainer.text_encoder.get_input_embeddings().base.weight.clone()
    before = _fixed_loss(trainer)
    figures = [trainer.step(step) for step in range(25)]
    assert all(torch.isfinite(torch.tensor([f["loss"], f["lr"]])).all() for f in figures)
    # A random tiny UNet barely listens to the text (the floor is ~1.21), so the gain is small but real: with
    # the vectors untouched this number is exactly ``before``.
    assert _fixed_loss(trainer) < before - 0.002
    for key, value in trainer.unet.state_dict().items():
        assert torch.equal(value, base[key]), key
    assert torch.equal(trainer.text_encoder.get_input_embeddings().base.weight, table)
    # The tokenizer may be shared with other models: the placeholder tokens go into the trainer's own copy.
    given = models.loaded[-1].pipe
    assert len(given.tokenizer) == 49408 and len(trainer.tokenizer) == 49410


def test_resume_from_state_continues_exactly(data, tmp_path):
    resources = _resources(data)
    straight = _start(_request(), resources)
    expected = [dict(straight.step(step)) for step in range(6)]

    first = _start(_request(), resources)
    for step in range(3):
        first.step(step)
    state = first.state()
    save_file(state.tensors, str(tmp_path / "state.safetensors"))
    restored = TrainState(load_file(str(tmp_path / "state.safetensors")), json.loads(json.dumps(state.values)))
    resumed = _start(_request(), resources)
    resumed.load_state(restored)
    got = [dict(resumed.step(step)) for step in range(3, 6)]
    assert got == expected[3:]
    assert torch.equal(resumed.embedding.vectors, straight.embedding.vectors)


def test_learning_rate_schedule_follows_a1111_syntax(data):
    trainer = _start(_request(learn_rate="0.05:2, 0.01:4, 0.001", steps=6, batch_size=1), _resources(data))
    assert [trainer.step(step)["lr"] for step in range(6)] == [0.05, 0.05, 0.01, 0.01, 0.001, 0.001]
    assert rate_at(parse_learn_rate("0.005", 10), 9) == 0.005


def test_gradient_accumulation_counts_samples_per_optimizer_step(data):
    trainer = _start(_request(batch_size=1, gradient_accumulation=3), _resources(data))
    assert trainer.steps_per_epoch == 1  # 3 images, 1 x 3 per optimizer step
    assert sorted(i for batch in trainer._sample_positions(0) for i in batch) == [0, 1, 2]


# ---------------------------------------------------------------------------------------------------- artifact


def test_artifact_is_an_a1111_embedding_that_changes_the_prompt_encoding(data):
    trainer = _start(_request(), _resources(data))
    initial = trainer.artifact()
    red = trainer.tokenizer("red", add_special_tokens=False)["input_ids"][0]
    table = trainer.text_encoder.get_input_embeddings().base.weight
    assert torch.equal(initial.tensors["emb_params"], torch.stack([table[red], table[red]]))  # init "red" x2
    for step in range(3):
        trainer.step(step)
    artifact = trainer.artifact()
    assert artifact.path == data / "embeddings" / "swatch.safetensors"
    artifact.path.parent.mkdir(parents=True)
    save_file(artifact.tensors, str(artifact.path), metadata=artifact.metadata)

    with safe_open(str(artifact.path), "pt") as fh:
        assert list(fh.keys()) == ["emb_params"]
        vectors = fh.get_tensor("emb_params")
        meta = fh.metadata()
    assert vectors.shape == (2, 32)
    assert (meta["step"], meta["sd_checkpoint"], meta["sd_checkpoint_name"], meta["name"]) == \
        ("3", "abcdef1234", "tiny", "swatch")
    assert json.loads(meta["studio_settings"])["num_vectors"] == 2 and meta["studio_dataset_size"] == "3"

    # diffusers' own loader reads the file (A1111's emb_params layout), and the word then encodes differently.
    def encode(pipe, prompt):
        with torch.no_grad():
            return pipe.encode_prompt(prompt, "cpu", 1, False)[0]

    loaded, plain = _tiny_model().pipe, _tiny_model().pipe
    loaded.tokenizer = copy.deepcopy(loaded.tokenizer)  # loading adds tokens: not to the shared tokenizer
    loaded.load_textual_inversion(str(artifact.path), token="swatch")
    ids = loaded.tokenizer(loaded.maybe_convert_prompt("swatch", loaded.tokenizer),
                           add_special_tokens=False).input_ids
    rows = loaded.text_encoder.get_input_embeddings().weight
    assert len(ids) == 2 and torch.equal(rows[ids], vectors)
    assert not torch.allclose(encode(loaded, "a photo of swatch"), encode(plain, "a photo of swatch"))
    assert torch.equal(encode(loaded, "a photo of a cat"), encode(plain, "a photo of a cat"))


def test_sample_is_an_image_of_the_training_size(data):
    trainer = _start(_request(sample_prompt="a photo of swatch"), _resources(data))
    trainer.step(0)
    images = trainer.samples()
    assert len(images) == 1 and images[0].size == (32, 32)
    assert trainer.sample_prompt() == "a photo of <ti:swatch:0> <ti:swatch:1>"
    cat = _start(_request(name="cat", sample_prompt="a cat, a catalog, [name]"), _resources(data))
    assert cat.sample_prompt() == "a <ti:cat:0> <ti:cat:1>, a catalog, <ti:cat:0> <ti:cat:1>"


def test_captions_come_from_txt_files_or_the_file_name(data):
    folder = data / "train" / "ti"
    assert caption_of(folder / "00000-swatch.png") == "swatch"
    assert caption_of(folder / "00001-swatch.png") == "green square, flat"
    outside = data.parent / "secret.txt"
    outside.write_text("private words")
    (folder / "00002-swatch.txt").symlink_to(outside)
    assert caption_of(folder / "00002-swatch.png", data) == "swatch"


# ------------------------------------------------------------------------------------------------------ checks


def _check(request, resources):
    with pytest.raises(InvalidRequest) as caught:
        METHOD.check(request, resources)
    return caught.value


def test_an_existing_embedding_needs_overwrite(data):
    (data / "embeddings").mkdir()
    (data / "embeddings" / "swatch.pt").write_bytes(b"old")
    error = _check(_request(), _resources(data))
    assert error.field == "name" and "'swatch.pt' already exists" in str(error)
    METHOD.check(_request(overwrite=True), _resources(data))
    (data / "embeddings" / "swatch.pt").unlink()
    (data / "embeddings" / "styles").mkdir()
    (data / "embeddings" / "styles" / "swatch.safetensors").write_bytes(b"old")
    error = _check(_request(), _resources(data))
    assert error.field == "name" and "'styles/swatch.safetensors' already exists" in str(error)


def test_folder_and_image_problems_are_named(data):
    assert "not an existing folder" in str(_check(_request(dataset="train/none"), _resources(data)))
    (data / "train" / "empty").mkdir()
    assert "holds no" in str(_check(_request(dataset="train/empty"), _resources(data)))
    (data / "train" / "ti" / "zz.jpg").write_bytes(b"\xff\xd8 truncated")
    error = _check(_request(), _resources(data))
    assert error.field == "dataset" and "'zz.jpg' is not a readable image" in str(error)


def test_a_file_that_is_not_a_diffusion_checkpoint_is_refused(data, tmp_path):
    not_sd = tmp_path / "generator.safetensors"
    save_file({"model.1.weight": torch.zeros(4, 3, 7, 7)}, str(not_sd))
    real = write_tiny_single_file(tmp_path / "real.safetensors")

    def load_checkpoint(title):  # what the service does: the real loader, errors as InvalidRequest
        path = {"generator": not_sd, "real": real}[title]
        try:
            info = CheckpointInfo(path=path, name=path.name, model_name=path.stem, kind="safetensors",
                                  short_hash=None, sha256=None)
            return loader.load(info, torch.float32)
        except ModelLoadError as exc:
            raise InvalidRequest("checkpoint", str(exc)) from None

    error = _check(_request(checkpoint="generator"), _resources(data, load_checkpoint))
    assert error.field == "checkpoint" and "generator" in str(error)
    METHOD.check(_request(checkpoint="real"), _resources(data, load_checkpoint))


def _tiny_sdxl(title: str) -> LoadedModel:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTokenizer

    from tests.tiny_models import TOKENIZER_DIR, tiny_sdxl_components

    config = loader.base_scheduler_config()
    pipe = StableDiffusionXLPipeline(**tiny_sdxl_components(seed=0), tokenizer=CLIPTokenizer.from_pretrained(
        TOKENIZER_DIR), tokenizer_2=CLIPTokenizer.from_pretrained(TOKENIZER_DIR.parent / "clip_tokenizer_pad_bang"),
        scheduler=EulerDiscreteScheduler.from_config(config))
    return LoadedModel(info=None, family="sdxl", variant="normal", pipe=pipe, scheduler_config=config,
                       default_size=64)


def test_sdxl_trains_clip_l_and_clip_g_vectors(data, tmp_path):
    resources = _resources(data, _tiny_sdxl)
    trainer = _start(_request(), resources)
    initial = {key: value.clone() for key, value in trainer.artifact().tensors.items()}
    figures = [dict(trainer.step(step)) for step in range(3)]
    assert all(torch.isfinite(torch.tensor(f["loss"])) for f in figures)
    artifact = trainer.artifact()
    assert sorted(artifact.tensors) == ["clip_g", "clip_l"]
    assert artifact.tensors["clip_l"].shape == (2, 32) and artifact.tensors["clip_g"].shape == (2, 64)
    for key in ("clip_l", "clip_g"):
        assert not torch.equal(artifact.tensors[key], initial[key]), f"{key} did not train"
    # Resume: a fresh trainer given the state after step 1 makes the same step 2.
    again = _start(_request(), resources)
    again.step(0)
    again.step(1)
    state = again.state()
    resumed = _start(_request(), resources)
    resumed.load_state(state)
    assert dict(resumed.step(2)) == figures[2]
    assert trainer.samples()[0].size == (32, 32)
    # diffusers loads each half into its encoder, as its SDXL textual-inversion docs do.
    pipe = _tiny_sdxl("tiny").pipe
    pipe.load_textual_inversion(artifact.tensors["clip_l"], token="swatch", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(artifact.tensors["clip_g"], token="swatch", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    ids = pipe.tokenizer_2(pipe.maybe_convert_prompt("swatch", pipe.tokenizer_2), add_special_tokens=False).input_ids
    assert torch.equal(pipe.text_encoder_2.get_input_embeddings().weight[ids], artifact.tensors["clip_g"])


def test_missing_template_lists_the_choices(data):
    error = _check(_request(template="mine.txt"), _resources(data))
    assert error.field == "template" and "style_filewords.txt" in str(error)
    user = data / "textual_inversion_templates"
    user.mkdir()
    (user / "mine.txt").write_text("[name] in a photo\n")
    METHOD.check(_request(template="mine.txt"), _resources(data))


@pytest.mark.parametrize("body, field, words", [
    ({"init_text": "  "}, "init_text", "enter initialization text"),
    ({"name": "a/b"}, "name", "not a valid file name"),
    ({"learn_rate": "fast"}, "learn_rate", "not rate or rate:step"),
    ({"learn_rate": "0.01:100, 0.001:50"}, "learn_rate", "steps must increase"),
    ({"learn_rate": "0"}, "learn_rate", "above 0"),
    ({"width": 100}, "width", "multiple of 8"),
    ({"num_vectors": 0}, "num_vectors", "between 1 and 75"),
    ({"vectors": 2}, "vectors", "unknown field"),
    ({"steps": True}, "steps", "whole number"),
    ({"template": "../x.txt"}, "template", "template file name"),
])
def test_from_dict_names_the_bad_field(body, field, words):
    with pytest.raises(InvalidRequest) as caught:
        METHOD.from_dict({"name": "swatch", "checkpoint": "tiny", "dataset": "train/ti", **body})
    assert caught.value.field == field and words in str(caught.value)


def test_from_dict_defaults_are_a1111s():
    request = METHOD.from_dict({"name": "x", "checkpoint": "c", "dataset": "d"})
    assert (request.learn_rate, request.batch_size, request.gradient_accumulation, request.steps) == \
        ("0.005", 1, 1, 100_000)
    assert (request.template, request.width, request.height, request.save_every, request.sample_every) == \
        ("style_filewords.txt", 512, 512, 500, 500)


# --------------------------------------------------------------------------------------------------------- form


def _ti_form():
    import gradio as gr

    from webui.ui.train_ti_form import build_form

    with gr.Blocks():
        parts = build_form(checkpoints=["tiny.safetensors [0123456789]"])
    labels = {getattr(c, "label", None): i for i, c in enumerate(parts.inputs)}
    return parts, labels


def _values(parts, labels, **by_label):
    values = [component.value for component in parts.inputs]
    for label, value in by_label.items():
        values[labels[label]] = value
    return values


def test_ti_form_makes_a_request_with_a1111_labels_and_defaults():
    parts, labels = _ti_form()
    assert parts.button.value == "Train Embedding"
    assert {"Initialization text", "Number of vectors per token", "Embedding Learning rate",
            "Gradient accumulation steps", "Prompt template", "Overwrite Old Embedding"} <= set(labels)
    request = parts.to_request(*_values(parts, labels, Name="swatch", **{"Dataset directory": "train/ti",
                                                                           "Number of vectors per token": 3.0}))
    assert isinstance(request, TextualInversionRequest)
    assert (request.checkpoint, request.num_vectors, request.learn_rate, request.template) == \
        ("tiny.safetensors [0123456789]", 3, "0.005", "style_filewords.txt")


def test_ti_form_names_the_bad_field():
    parts, labels = _ti_form()
    base = dict(Name="swatch", **{"Dataset directory": "train/ti"})
    for change, field in [({"Initialization text": ""}, "init_text"), ({"Embedding Learning rate": "x"}, "learn_rate"),
                          ({"Max steps": None}, "steps"), ({"Name": "con/fig"}, "name")]:
        with pytest.raises(InvalidRequest) as caught:
            parts.to_request(*_values(parts, labels, **{**base, **change}))
        assert caught.value.field == field


def test_the_runner_finds_every_module_to_place(data):
    """The runner moves the modules that ``modules_of`` finds on the trainer, the new vectors among them."""
    from webui.models.device import modules_of

    trainer = METHOD.create(_request(), _resources(data))
    found = modules_of(trainer)
    assert {id(trainer.unet), id(trainer.vae), id(trainer.text_encoder)} <= {id(m) for m in found}
    assert any(trainer.embedding.vectors is p for m in found for p in m.parameters())


# ------------------------------------------------------------------------------------------- the whole loop


def test_a_run_from_the_service_writes_an_embedding_that_prompts_then_use(services, data_dir):
    """Train through the Train tab's service on the tiny checkpoint, then use the embedding by name."""
    folder = data_dir / "train" / "ti"
    folder.mkdir(parents=True)
    for i, colour in enumerate(COLOURS):
        Image.new("RGB", (40, 40), colour).save(folder / f"{i:05d}-swatch.png")
    request = _request(checkpoint="tiny-sd15", steps=4, width=32, height=32)
    job_id = services.training.start(request)
    assert services.queue.get(job_id).wait_done(300)
    report = services.training.get(job_id)
    assert report["state"] == "done", report["message"]
    path = data_dir / "embeddings" / "swatch.safetensors"
    assert report["output"] == str(path)

    small = dict(width=64, height=64, steps=2, seed=5, save_images=False)
    used = services.generation.txt2img(Txt2ImgRequest(prompt="a photo of swatch", **small))
    plain = services.generation.txt2img(Txt2ImgRequest(prompt="a photo of", **small))
    assert "TI hashes" in parse_infotext(used.infotexts[0]).params  # the new file was found without a restart
    assert "swatch" in parse_infotext(used.infotexts[0]).params["TI hashes"]
    assert "TI hashes" not in parse_infotext(plain.infotexts[0]).params
