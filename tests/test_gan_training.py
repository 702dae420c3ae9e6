"""CycleGAN and pix2pix training methods, driven as the training runner drives them: create -> on_device ->
step loop -> state / load_state -> artifact. Tiny networks on 32x32 images keep each test to seconds."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from webui.errors import InvalidRequest
from webui.models.gan import GanRegistry, load_generator
from webui.pipelines.style_transfer import transfer
from webui.training.gan_request import CycleGanRequest, Pix2PixRequest
from webui.training.gan_training import CYCLEGAN_METHOD, PIX2PIX_METHOD, ImagePool
from webui.training.protocol import TrainingResources, TrainState

COLOURS = [(255, 0, 0), (0, 200, 0), (30, 60, 255), (240, 240, 20)]
TINY = dict(ngf=4, ndf=4, n_layers_d=2, load_size=32, crop_size=32, flip=False, n_epochs=50, n_epochs_decay=50)


def _invert(colour):
    return tuple(255 - c for c in colour)


def _shaded(colour, width: int = 32, height: int = 32) -> Image.Image:
    """A colour under a 2-D ramp. Not flat: instance norm erases a constant image, so nothing could be learnt."""
    ramp = np.linspace(0.2, 1.0, width)[None, :, None] * np.linspace(0.5, 1.0, height)[:, None, None]
    return Image.fromarray((ramp * np.array(colour)[None, None, :]).astype(np.uint8))


def _inverted(image: Image.Image) -> Image.Image:
    return Image.fromarray(255 - np.asarray(image))


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: on a busy 2-core machine two threads fight over every small op (measured 50x
    slower per step than one thread), so this module runs single-threaded and restores the setting after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def data(tmp_path) -> Path:
    """A data dir with A = shaded colours, B = their inverses, and the same pairs side by side (A|B)."""
    root = tmp_path / "data"
    for i, colour in enumerate(COLOURS):
        a = _shaded(colour)
        _save(root / "train" / "A" / f"{i}.png", a)
        _save(root / "train" / "B" / f"{i}.png", _inverted(a))
        pair = Image.new("RGB", (64, 32))
        pair.paste(a, (0, 0))
        pair.paste(_inverted(a), (32, 0))
        _save(root / "train" / "AB" / f"{i}.png", pair)
    (root / "models").mkdir()
    return root


def _resources(root: Path) -> TrainingResources:
    def no_checkpoint(title):  # GAN methods never load a diffusion checkpoint
        raise AssertionError("GAN training asked for a checkpoint")

    return TrainingResources(models_dir=root / "models", embeddings_dir=root / "embeddings",
                             load_checkpoint=no_checkpoint, checkpoint_hash=lambda title: None)


def _cyclegan(**overrides) -> CycleGanRequest:
    settings = dict(TINY, name="col2inv", dataset_a="train/A", dataset_b="train/B", net_g="resnet_6blocks",
                    batch_size=2, load_size=16, crop_size=16)
    return CycleGanRequest(**{**settings, **overrides})


def _pix2pix(**overrides) -> Pix2PixRequest:
    settings = dict(TINY, name="col2inv", dataset="train/AB", net_g="unet_32", batch_size=2)
    return Pix2PixRequest(**{**settings, **overrides})


def _start(method, request, resources):
    method.check(request, resources)
    trainer = method.create(request, resources)
    trainer.on_device(torch.device("cpu"))
    return trainer


def _run(trainer, start: int, stop: int) -> list[dict]:
    return [dict(trainer.step(step)) for step in range(start, stop)]


def _write(artifact) -> Path:
    artifact.path.parent.mkdir(parents=True, exist_ok=True)
    save_file(artifact.tensors, str(artifact.path), metadata=artifact.metadata)
    return artifact.path


def _roundtrip(state: TrainState, folder: Path) -> TrainState:
    """As the runner stores it: tensors in safetensors, values as JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state.tensors, str(folder / "state.safetensors"))
    return TrainState(load_file(str(folder / "state.safetensors")), json.loads(json.dumps(state.values)))


# ---------------------------------------------------------------------------------------------------- learning


def test_cyclegan_losses_are_finite_and_the_cycle_loss_falls(data):
    trainer = _start(CYCLEGAN_METHOD, _cyclegan(lr=0.002), _resources(data))
    assert trainer.steps_per_epoch == 2 and trainer.total_steps == 200  # 4 images, batch 2, 100 epochs
    figures = _run(trainer, 0, 20)
    assert all(torch.isfinite(torch.tensor(list(f.values()))).all() for f in figures)
    cycle = [f["cycle_A"] + f["cycle_B"] for f in figures]
    assert sum(cycle[-5:]) < 0.75 * sum(cycle[:5])
    assert figures[0]["lr"] == pytest.approx(0.002)


def test_pix2pix_l1_loss_falls(data):
    trainer = _start(PIX2PIX_METHOD, _pix2pix(lr=0.002), _resources(data))
    figures = _run(trainer, 0, 20)
    assert all(torch.isfinite(torch.tensor(list(f.values()))).all() for f in figures)
    l1 = [f["G_L1"] for f in figures]
    assert sum(l1[-5:]) < 0.75 * sum(l1[:5])


def test_the_learning_rate_decays_linearly_after_n_epochs(data):
    trainer = _start(PIX2PIX_METHOD, _pix2pix(n_epochs=1, n_epochs_decay=3), _resources(data))
    lrs = [f["lr"] for f in _run(trainer, 0, 8)]  # 2 steps per epoch
    assert lrs == pytest.approx([2e-4, 2e-4, 1.5e-4, 1.5e-4, 1e-4, 1e-4, 0.5e-4, 0.5e-4])
    assert trainer.total_steps == 8


# ------------------------------------------------------------------------------------------------------ resume


@pytest.mark.parametrize("method, make", [(CYCLEGAN_METHOD, lambda: _cyclegan(pool_size=2)),
                                          (PIX2PIX_METHOD, lambda: _pix2pix(pool_size=2))],
                         ids=["cyclegan", "pix2pix"])
def test_resume_from_state_continues_exactly(data, tmp_path, method, make):
    resources = _resources(data)
    straight = _start(method, make(), resources)
    expected = _run(straight, 0, 8)

    first = _start(method, make(), resources)
    _run(first, 0, 4)
    state = _roundtrip(first.state(), tmp_path / "state")
    resumed = _start(method, make(), resources)
    resumed.load_state(state)
    got = _run(resumed, 4, 8)

    assert got == expected[4:]
    for name in straight.network_names:
        for (key, a), b in zip(getattr(straight, name).state_dict().items(),
                               getattr(resumed, name).state_dict().values()):
            assert torch.equal(a, b), f"{name}.{key} differs after resume"


def test_image_pool_returns_past_fakes_once_full():
    pool = ImagePool(2)
    rng = torch.Generator().manual_seed(0)
    first = torch.zeros(2, 3, 4, 4)
    assert torch.equal(pool.query(first, rng), first)  # filling: images pass through
    returned = torch.cat([pool.query(torch.ones(1, 3, 4, 4), rng) for _ in range(20)])
    assert (returned == 0).all(dim=(1, 2, 3)).any()  # some old fake came back instead of the new one


# ---------------------------------------------------------------------------------------------------- artifacts


def test_cyclegan_result_loads_in_the_registry_and_translates(data):
    resources = _resources(data)
    trainer = _start(CYCLEGAN_METHOD, _cyclegan(), resources)
    _run(trainer, 0, 3)
    artifacts = trainer.artifacts()
    assert trainer.artifact().path == data / "models" / "CycleGAN" / "col2inv" / "latest_net_G_A.safetensors"
    assert [a.path.name for a in artifacts] == ["latest_net_G_A.safetensors", "latest_net_G_B.safetensors"]
    for artifact in artifacts:
        _write(artifact)

    registry = GanRegistry(data / "models")
    names = {info.name for info in registry.refresh()}
    assert {"col2inv_AtoB", "col2inv_BtoA"} <= names
    generator, spec = load_generator(registry.find("col2inv_AtoB").path)
    assert (spec.kind, spec.ngf, spec.n_blocks, spec.norm) == ("resnet", 4, 6, "instance")
    for key, value in generator.state_dict().items():
        assert torch.equal(value, trainer.net_g_a.state_dict()[key])
    out = transfer(generator, Image.new("RGB", (40, 24), (255, 0, 0)))
    assert out.size == (40, 24)

    meta = artifacts[0].metadata
    assert meta["studio_direction"] == "AtoB" and meta["studio_steps"] == "3"
    assert meta["studio_dataset_size"] == "4" and len(meta["studio_dataset_hash"]) == 64
    assert json.loads(meta["studio_architecture"])["n_blocks"] == 6
    assert json.loads(meta["studio_settings"])["lambda_a"] == 10.0


def test_pix2pix_result_loads_and_samples_show_input_and_output(data):
    resources = _resources(data)
    trainer = _start(PIX2PIX_METHOD, _pix2pix(direction="BtoA"), resources)
    _run(trainer, 0, 2)
    path = _write(trainer.artifact())
    assert path == data / "models" / "pix2pix" / "col2inv" / "latest_net_G.safetensors"
    registry = GanRegistry(data / "models")
    registry.refresh()
    generator, spec = load_generator(registry.find("pix2pix/col2inv").path)
    assert (spec.kind, spec.num_downs, spec.norm) == ("unet", 5, "batch")
    assert transfer(generator, Image.new("RGB", (32, 32), "white")).size == (32, 32)
    assert trainer.artifact().metadata["studio_direction"] == "BtoA"

    samples = trainer.samples()
    assert len(samples) == 4 and samples[0].size == (64, 32)  # input | output
    # BtoA: the sample's input half is the B (inverted) image of the first pair.
    assert samples[0].getpixel((5, 5)) == _inverted(_shaded(COLOURS[0])).getpixel((5, 5))


def test_continuing_starts_from_the_saved_generators(data):
    resources = _resources(data)
    trainer = _start(CYCLEGAN_METHOD, _cyclegan(), resources)
    _run(trainer, 0, 2)
    for artifact in trainer.artifacts():
        _write(artifact)
    request = _cyclegan(name="more", init_from="col2inv_AtoB", ngf=8, net_g="resnet_9blocks")
    continued = _start(CYCLEGAN_METHOD, request, resources)
    for name in ("net_g_a", "net_g_b"):  # the file's architecture wins over the form's
        for key, value in getattr(trainer, name).state_dict().items():
            assert torch.equal(value, getattr(continued, name).state_dict()[key]), key
    _run(continued, 0, 1)


def test_samples_do_not_change_the_run(data):
    resources = _resources(data)
    plain, sampled = (_start(PIX2PIX_METHOD, _pix2pix(), resources) for _ in range(2))
    _run(plain, 0, 2)
    _run(sampled, 0, 1)
    sampled.samples()
    _run(sampled, 1, 2)
    for key, value in plain.net_g.state_dict().items():
        assert torch.equal(value, sampled.net_g.state_dict()[key]), key


# ------------------------------------------------------------------------------------------------------ checks


def _check(method, request, root):
    with pytest.raises(InvalidRequest) as caught:
        method.check(request, _resources(root))
    return caught.value


def test_missing_and_empty_folders_are_named(data):
    error = _check(CYCLEGAN_METHOD, _cyclegan(dataset_b="train/nothing"), data)
    assert error.field == "dataset_b" and "not an existing folder" in str(error)
    (data / "train" / "empty").mkdir()
    error = _check(CYCLEGAN_METHOD, _cyclegan(dataset_a="train/empty"), data)
    assert error.field == "dataset_a" and "holds no" in str(error)


def test_a_folder_outside_the_data_dir_is_refused(data, tmp_path):
    outside = tmp_path / "elsewhere"
    _save(outside / "x.png", Image.new("RGB", (32, 32)))
    error = _check(CYCLEGAN_METHOD, _cyclegan(dataset_a=str(outside)), data)
    assert error.field == "dataset_a" and "inside the data dir" in str(error)
    (data / "train" / "link").symlink_to(outside)
    assert _check(CYCLEGAN_METHOD, _cyclegan(dataset_a="train/link"), data).field == "dataset_a"


def test_an_unreadable_image_is_named(data):
    (data / "train" / "B" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    error = _check(CYCLEGAN_METHOD, _cyclegan(), data)
    assert error.field == "dataset_b" and "'broken.png' is not a readable image" in str(error)


def test_images_smaller_than_the_crop_are_named(data):
    _save(data / "train" / "A" / "small.png", Image.new("RGB", (20, 12)))
    error = _check(CYCLEGAN_METHOD, _cyclegan(), data)
    assert error.field == "dataset_a" and "'small.png' is 20x12, smaller than the crop size (16x16)" in str(error)
    # A|B images: each half must hold the crop.
    _save(data / "train" / "AB" / "narrow.png", Image.new("RGB", (48, 32)))
    error = _check(PIX2PIX_METHOD, _pix2pix(), data)
    assert error.field == "dataset" and "'narrow.png'" in str(error)


def test_pix2pix_pairs_by_file_name_and_names_the_unmatched(data):
    request = _pix2pix(dataset="", dataset_a="train/A", dataset_b="train/B")
    trainer = _start(PIX2PIX_METHOD, request, _resources(data))
    assert torch.isfinite(torch.tensor(trainer.step(0)["loss"]))
    _save(data / "train" / "A" / "lonely.png", Image.new("RGB", (32, 32)))
    error = _check(PIX2PIX_METHOD, request, data)
    assert error.field == "dataset_b" and "lonely.png" in str(error)


def test_an_existing_name_needs_overwrite(data):
    (data / "models" / "pix2pix" / "col2inv").mkdir(parents=True)
    error = _check(PIX2PIX_METHOD, _pix2pix(), data)
    assert error.field == "name" and "already exists" in str(error)
    PIX2PIX_METHOD.check(_pix2pix(overwrite=True), _resources(data))


def test_continuing_from_something_that_is_not_a_generator(data):
    folder = data / "models" / "CycleGAN"
    folder.mkdir(parents=True)
    save_file({"weight": torch.zeros(3, 3)}, str(folder / "notgan.safetensors"))
    error = _check(CYCLEGAN_METHOD, _cyclegan(init_from="notgan"), data)
    assert error.field == "init_from" and "not a CycleGAN/pix2pix generator" in str(error)
    error = _check(CYCLEGAN_METHOD, _cyclegan(init_from="missing"), data)
    assert error.field == "init_from" and "no generator 'missing'" in str(error)


@pytest.mark.parametrize("body, field, words", [
    ({"name": "x", "dataset_a": "a", "dataset_b": "b", "bogus": 1}, "bogus", "unknown field"),
    ({"name": "x", "dataset_a": "a", "dataset_b": "b", "batch_size": "2"}, "batch_size", "whole number"),
    ({"name": "x", "dataset_a": "a", "dataset_b": "b", "batch_size": 0}, "batch_size", "between 1 and 64"),
    ({"name": "x", "dataset_a": "a", "dataset_b": "b", "net_g": "resnet_12"}, "net_g", "must be one of"),
    ({"name": "x", "dataset_a": "a", "dataset_b": "b", "crop_size": 250, "load_size": 286}, "crop_size",
     "multiple of 4"),
    ({"name": "x", "dataset_a": "a", "dataset_b": "b", "crop_size": 300}, "crop_size", "larger than load_size"),
    ({"name": "../x", "dataset_a": "a", "dataset_b": "b"}, "name", "not a valid file name"),
    ({"name": "x", "dataset_a": "a"}, "dataset_b", "enter the folder"),
    ({"dataset_a": "a", "dataset_b": "b"}, "name", "required"),
    ({"name": "x", "dataset_a": "a", "dataset_b": "b", "lr": float("nan")}, "lr", "finite"),
])
def test_cyclegan_from_dict_names_the_bad_field(body, field, words):
    with pytest.raises(InvalidRequest) as caught:
        CYCLEGAN_METHOD.from_dict(body)
    assert caught.value.field == field and words in str(caught.value)


def test_pix2pix_from_dict_defaults_are_the_releases():
    request = PIX2PIX_METHOD.from_dict({"name": "facades", "dataset": "train/AB", "batch_size": 1.0})
    assert (request.net_g, request.norm, request.gan_mode, request.lambda_l1, request.dropout) == \
        ("unet_256", "batch", "vanilla", 100.0, True)
    assert (request.load_size, request.crop_size, request.lr, request.beta1) == (286, 256, 0.0002, 0.5)
    assert dataclasses.replace(request, direction="BtoA").direction == "BtoA"
    with pytest.raises(InvalidRequest) as caught:
        PIX2PIX_METHOD.from_dict({"name": "x", "net_g": "unet_256", "crop_size": 200, "dataset": "d"})
    assert caught.value.field == "crop_size" and "multiple of 256" in str(caught.value)
    with pytest.raises(InvalidRequest) as caught:
        PIX2PIX_METHOD.from_dict({"name": "x", "dataset": "d", "dataset_a": "a", "dataset_b": "b"})
    assert caught.value.field == "dataset"


# --------------------------------------------------------------------------------------------------------- form


def _gan_form():
    import gradio as gr

    from webui.ui.train_gan_form import build_form

    with gr.Blocks() as blocks:
        parts = build_form(generators=["horse2zebra_AtoB"])
    labels = {getattr(c, "label", None): i for i, c in enumerate(parts.inputs)}
    return blocks, parts, labels


def _form_values(parts, labels, **by_label):
    values = [component.value for component in parts.inputs]
    for label, value in by_label.items():
        values[labels[label]] = value
    return values


def test_gan_form_makes_a_cyclegan_or_pix2pix_request_with_the_release_defaults():
    _, parts, labels = _gan_form()
    assert parts.button.value == "Train"
    request = parts.to_request(*_form_values(parts, labels, Name="h2z", **{"Folder A": "a", "Folder B": "b"}))
    assert isinstance(request, CycleGanRequest)
    assert (request.net_g, request.norm, request.gan_mode, request.pool_size, request.lambda_identity) == \
        ("resnet_9blocks", "instance", "lsgan", 50, 0.5)
    # pix2pix from the same page: its own fields, the CycleGAN-only widgets ignored.
    values = _form_values(parts, labels, Model="pix2pix", Name="facades", Generator="unet_256", Norm="batch",
                          **{"GAN loss": "vanilla", "Image pool size": 0, "Folder A": "", "Folder B": "",
                             "Folder of A|B images (pix2pix, instead of folders A and B)": "train/AB"})
    request = parts.to_request(*values)
    assert isinstance(request, Pix2PixRequest) and request.dataset == "train/AB" and request.lambda_l1 == 100.0


def test_gan_form_names_the_bad_field():
    _, parts, labels = _gan_form()
    base = dict(Name="h2z", **{"Folder A": "a", "Folder B": "b"})
    with pytest.raises(InvalidRequest) as caught:
        parts.to_request(*_form_values(parts, labels, **base, **{"Batch size": None}))
    assert caught.value.field == "batch_size" and "enter a value" in str(caught.value)
    with pytest.raises(InvalidRequest) as caught:
        parts.to_request(*_form_values(parts, labels, **base, **{"Crop size (train on)": 250}))
    assert caught.value.field == "crop_size"
    with pytest.raises(InvalidRequest) as caught:
        parts.to_request(*_form_values(parts, labels, **base, Model="StyleGAN"))
    assert caught.value.field == "method"


def test_switching_the_gan_model_switches_the_release_defaults():
    blocks, parts, labels = _gan_form()
    switch = next(fn for fn in blocks.fns.values() if fn.name == "switch").fn
    pix_row, cycle_row, net_g, norm, gan_mode, pool = switch("pix2pix")
    assert pix_row["visible"] is True and cycle_row["visible"] is False
    assert (net_g["value"], norm["value"], gan_mode["value"], pool["value"]) == ("unet_256", "batch", "vanilla", 0)
    assert switch("CycleGAN")[2]["value"] == "resnet_9blocks"


def test_pix2pix_continues_from_its_own_result_and_a_missing_folder_is_named(data):
    resources = _resources(data)
    assert _check(PIX2PIX_METHOD, _pix2pix(init_from="col2inv"), data).field == "init_from"  # no pix2pix folder
    trainer = _start(PIX2PIX_METHOD, _pix2pix(), resources)
    _run(trainer, 0, 2)
    _write(trainer.artifact())
    continued = _start(PIX2PIX_METHOD, _pix2pix(name="more", init_from="col2inv"), resources)
    for key, value in trainer.net_g.state_dict().items():
        assert torch.equal(value, continued.net_g.state_dict()[key]), key
    assert continued.net_g.training and all(p.requires_grad for p in continued.net_g.parameters())
    _run(continued, 0, 1)


def test_the_runner_finds_every_network_to_place(data):
    """The runner moves the modules that ``modules_of`` finds on the trainer: all four CycleGAN networks."""
    from webui.models.device import modules_of

    trainer = CYCLEGAN_METHOD.create(_cyclegan(), _resources(data))
    found = {id(module) for module in modules_of(trainer)}
    assert {id(getattr(trainer, name)) for name in trainer.network_names} <= found


def test_requests_and_forms_import_without_torch():
    """The UI imports the request modules and forms; the UI never imports torch, even indirectly."""
    import subprocess
    import sys

    code = ("import sys, webui.ui.train_gan_form, webui.ui.train_ti_form, webui.training.gan_request, "
            "webui.training.ti_request; print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


def test_a_link_to_an_image_outside_the_data_dir_is_not_used(data, tmp_path):
    outside = _save(tmp_path / "secret" / "private.png", _shaded((1, 2, 3)))
    (data / "train" / "links").mkdir()
    (data / "train" / "links" / "0.png").symlink_to(outside)
    error = _check(CYCLEGAN_METHOD, _cyclegan(dataset_a="train/links"), data)
    assert error.field == "dataset_a" and "holds no" in str(error)
