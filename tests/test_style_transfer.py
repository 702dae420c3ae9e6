"""CycleGAN / pix2pix style transfer: release-compatible generators, safe loading, registry, tiling, service."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from webui.errors import InvalidRequest, ModelLoadError, ModelNotFound
from webui.infotext import parse_infotext, read_png_infotext
from webui.models.gan import (GanRegistry, GeneratorSpec, ResnetGenerator, UnetGenerator, build_generator,
                              detect_generator, load_generator)
from webui.models.registry import HashCache, sha256_file
from webui.pipelines import style_transfer
from webui.pipelines.style_transfer import pad_reflect, tile_starts, transfer
from webui.services.jobs import JobQueue
from webui.services.storage import ImageStore
from webui.services.style import STYLE_GENERATOR, StyleTransferRequest, StyleTransferService

TINY_SPECS = {
    "resnet-instance": GeneratorSpec("resnet", ngf=8, input_nc=3, output_nc=3, norm="instance", n_blocks=2),
    "resnet-batch": GeneratorSpec("resnet", ngf=8, input_nc=3, output_nc=3, norm="batch", n_blocks=2),
    "resnet-dropout": GeneratorSpec("resnet", ngf=8, input_nc=3, output_nc=3, norm="batch", n_blocks=2,
                                    use_dropout=True),
    "unet-batch": GeneratorSpec("unet", ngf=8, input_nc=3, output_nc=3, norm="batch", num_downs=5),
    "unet-instance": GeneratorSpec("unet", ngf=8, input_nc=3, output_nc=3, norm="instance", num_downs=6),
    "unet-gray": GeneratorSpec("unet", ngf=8, input_nc=1, output_nc=3, norm="batch", num_downs=5),
}


def tiny_generator(spec: GeneratorSpec, seed: int = 0) -> nn.Module:
    """Random weights, and random BatchNorm statistics so eval mode is really exercised."""
    torch.manual_seed(seed)
    model = build_generator(spec)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.8, 1.2)
            module.bias.data.uniform_(-0.1, 0.1)
            module.num_batches_tracked.fill_(123)
    return model.eval()


def save_pth(model: nn.Module, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)  # exactly how the release's save_networks writes latest_net_G.pth
    return path


def gradient_image(width: int, height: int) -> Image.Image:
    """A smooth input: tiles are then nearly translation-equivariant, so seams show up as real differences."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([xx / width, yy / height, 0.5 + 0.4 * np.sin((xx + yy) / 40.0)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def run_module(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x)


# ------------------------------------------------------------------------------------------- architectures


def test_release_key_layout():
    """Key names as the release writes them (checked against its networks.py layout)."""
    resnet9 = ResnetGenerator(3, 3, ngf=8, norm="instance", n_blocks=9).state_dict()
    assert "model.1.weight" in resnet9 and "model.1.bias" in resnet9  # InstanceNorm: biased convs
    assert "model.10.conv_block.1.weight" in resnet9 and "model.10.conv_block.5.weight" in resnet9
    assert "model.18.conv_block.5.bias" in resnet9 and "model.26.weight" in resnet9  # final 7x7 conv
    assert not any("running_mean" in key for key in resnet9)  # affine=False, no running stats
    batch = ResnetGenerator(3, 3, ngf=8, norm="batch", n_blocks=6).state_dict()
    assert "model.1.bias" not in batch and "model.2.running_mean" in batch and "model.2.num_batches_tracked" in batch
    assert "model.23.bias" in batch  # the final conv is always biased
    unet = UnetGenerator(3, 3, num_downs=8, ngf=8, norm="batch").state_dict()
    assert "model.model.0.weight" in unet and "model.model.0.bias" not in unet and "model.model.3.bias" in unet
    innermost = "model.model.1" + ".model.3" * 6
    assert f"{innermost}.model.1.weight" in unet and f"{innermost}.model.3.weight" in unet
    assert f"{innermost}.model.4.running_var" in unet


def test_full_size_resnet9_parameter_count():
    model = ResnetGenerator(3, 3, ngf=64, norm="instance", n_blocks=9)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - 11.4e6) < 0.05e6, count  # CycleGAN's resnet_9blocks: 11,378,179


@pytest.mark.parametrize("name", TINY_SPECS)
def test_detection_recovers_spec(name):
    spec = TINY_SPECS[name]
    assert detect_generator(tiny_generator(spec).state_dict()) == spec


@pytest.mark.parametrize("name", ["resnet-instance", "resnet-batch", "resnet-dropout", "unet-batch", "unet-instance"])
def test_pth_loads_strictly_and_matches(tmp_path, name):
    spec = TINY_SPECS[name]
    original = tiny_generator(spec, seed=3)
    loaded, detected = load_generator(save_pth(original, tmp_path / "latest_net_G.pth"))
    assert detected == spec and not loaded.training
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(run_module(loaded, x), run_module(original, x), rtol=0, atol=0)


def test_safetensors_and_dataparallel_prefix(tmp_path):
    original = tiny_generator(TINY_SPECS["unet-batch"], seed=4)
    state = {f"module.{k}": v.contiguous() for k, v in original.state_dict().items()}
    save_file(state, str(tmp_path / "p2p.safetensors"))
    loaded, spec = load_generator(tmp_path / "p2p.safetensors")
    assert spec == TINY_SPECS["unet-batch"]
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(run_module(loaded, x), run_module(original, x), rtol=0, atol=0)


def test_old_instance_norm_checkpoint_with_running_stats(tmp_path):
    """Pre-0.4 PyTorch saved running stats for InstanceNorm; the release drops them, so do we."""
    original = tiny_generator(TINY_SPECS["resnet-instance"], seed=5)
    state = dict(original.state_dict())
    for name, module in original.named_modules():
        if isinstance(module, nn.InstanceNorm2d):
            channels = module.num_features
            state.update({f"{name}.running_mean": torch.zeros(channels), f"{name}.running_var": torch.ones(channels),
                          f"{name}.num_batches_tracked": torch.tensor(0)})
    assert "model.2.running_mean" in state
    torch.save(state, tmp_path / "old.pth")
    loaded, spec = load_generator(tmp_path / "old.pth")
    assert spec.norm == "instance"
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(run_module(loaded, x), run_module(original, x), rtol=0, atol=0)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"model.1.weight": _Evil(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    refused = r"evil\.pth refused: not a plain weights file \(pickles can run code\)"
    with pytest.raises(ModelLoadError, match=refused) as excinfo:
        load_generator(path)
    assert not marker.exists()
    assert "weights_only" not in str(excinfo.value)  # never advise the unsafe path


def test_unknown_layout_names_the_file(tmp_path):
    torch.save({"encoder.weight": torch.zeros(4, 3, 3, 3)}, tmp_path / "mystery.pth")
    with pytest.raises(ModelLoadError, match="mystery.pth"):
        load_generator(tmp_path / "mystery.pth")


def test_mismatched_weights_fail_strict_load(tmp_path):
    state = dict(tiny_generator(TINY_SPECS["resnet-instance"]).state_dict())
    state["model.4.weight"] = torch.zeros(5, 8, 3, 3)  # wrong shape for ngf=8
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ModelLoadError, match=r"broken\.pth: weights do not fit"):
        load_generator(tmp_path / "broken.pth")


# ------------------------------------------------------------------------------------------------ registry


def test_registry_lists_files_and_release_folders(tmp_path):
    models = tmp_path / "models"
    save_pth(tiny_generator(TINY_SPECS["resnet-instance"]), models / "CycleGAN" / "horse2zebra.pth")
    save_pth(tiny_generator(TINY_SPECS["resnet-instance"], 1), models / "CycleGAN" / "monet" / "latest_net_G_A.pth")
    save_pth(tiny_generator(TINY_SPECS["resnet-instance"], 2), models / "CycleGAN" / "monet" / "latest_net_G_B.pth")
    facades = save_pth(tiny_generator(TINY_SPECS["unet-batch"]), models / "pix2pix" / "facades" / "latest_net_G.pth")
    save_file({k: v.contiguous() for k, v in tiny_generator(TINY_SPECS["unet-batch"], 3).state_dict().items()},
              str(models / "pix2pix" / "maps.safetensors"))
    (models / "pix2pix" / "notes.txt").write_text("not a model")
    (models / "pix2pix" / "empty").mkdir()

    registry = GanRegistry(models, HashCache(tmp_path / "cache.json"))
    items = registry.refresh()
    assert [(i.kind, i.name) for i in items] == [("CycleGAN", "horse2zebra"), ("CycleGAN", "monet_AtoB"),
                                                  ("CycleGAN", "monet_BtoA"), ("pix2pix", "facades"),
                                                  ("pix2pix", "maps")]
    info = registry.find("facades")
    assert info.path == facades and info.sha256 == sha256_file(facades)
    assert info.title == f"pix2pix/facades [{info.sha256[:10]}]"
    for query in (info.title, "pix2pix/facades", info.short_hash, "pix2pix/facades [stalehash0]"):
        assert registry.find(query) == info
    with pytest.raises(ModelNotFound, match=r"Available: CycleGAN/horse2zebra \["):
        registry.find("zebra2horse")


def test_empty_registry_says_where_to_put_files(tmp_path):
    registry = GanRegistry(tmp_path / "models")
    assert registry.refresh() == []
    with pytest.raises(ModelNotFound, match="CycleGAN"):
        registry.find("anything")


# ------------------------------------------------------------------------------------------------ transfer


@pytest.mark.parametrize("name", ["resnet-instance", "unet-batch", "unet-gray"])
@pytest.mark.parametrize("size", [(101, 67), (1, 1), (33, 5)])
def test_transfer_keeps_odd_sizes(name, size):
    out = transfer(tiny_generator(TINY_SPECS[name]), gradient_image(*size))
    assert out.size == size and out.mode == "RGB"


def test_transfer_matches_a_direct_forward_pass():
    model = tiny_generator(TINY_SPECS["resnet-instance"])
    image = gradient_image(64, 48)  # already a multiple of 4: no padding
    x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    expected = ((run_module(model, x)[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(np.asarray(transfer(model, image)), expected)
    # a permuted HWC array would be channels-last in memory: same numbers, ~4x slower convolutions on CPU
    assert style_transfer.to_tensor(image, 3).is_contiguous()


def test_tile_starts_cover_the_axis():
    assert tile_starts(100, 128, 32) == [0]
    assert tile_starts(200, 96, 32) == [0, 64, 104]
    for size in (97, 200, 513):
        starts = tile_starts(size, 96, 16)
        assert starts[0] == 0 and starts[-1] == size - 96
        assert all(b - a <= 96 - 16 for a, b in zip(starts, starts[1:]))


def test_pad_reflect_handles_pads_wider_than_the_image():
    x = torch.arange(5.0).view(1, 1, 1, 5).expand(1, 1, 3, 5)
    padded = pad_reflect(x, 6, 7, 2, 9)
    assert padded.shape == (1, 1, 14, 18)
    assert padded[0, 0, 0].tolist() == [2, 3, 4, 3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3]


def test_tiled_run_is_seamless_for_a_translation_equivariant_net(monkeypatch):
    """BatchNorm in eval mode: tiles differ from one big pass only near their borders, and the blend hides that."""
    model = tiny_generator(TINY_SPECS["resnet-batch"], seed=7)
    image = gradient_image(240, 176)
    calls: list[tuple[int, ...]] = []
    real_forward = style_transfer._forward_padded

    def spy(generator, x, *args):
        calls.append(tuple(x.shape[-2:]))
        return real_forward(generator, x, *args)

    monkeypatch.setattr(style_transfer, "_forward_padded", spy)
    progress: list[tuple[int, int]] = []
    tiled = transfer(model, image, tile=128, overlap=48, on_tile=lambda done, total: progress.append((done, total)))
    assert len(calls) == 6 and all(shape == (128, 128) for shape in calls)  # 2 rows x 3 columns
    assert progress[0] == (0, 6) and progress[-1] == (6, 6)

    calls.clear()
    whole = transfer(model, image, tile=512)
    assert calls == [(176, 240)]
    assert tiled.size == whole.size == image.size
    diff = np.abs(np.asarray(tiled, dtype=np.float32) - np.asarray(whole, dtype=np.float32))
    print(f"tiled vs whole: mean {diff.mean():.3f}, max {diff.max():.0f} (of 255)")
    assert diff.mean() < 0.5 and diff.max() <= 2
    # no seam: the tiled image is as smooth across tile borders as the untiled one
    step_tiled = np.abs(np.diff(np.asarray(tiled, dtype=np.float32), axis=1)).mean()
    step_whole = np.abs(np.diff(np.asarray(whole, dtype=np.float32), axis=1)).mean()
    assert step_tiled < step_whole * 1.05


def test_tiled_instance_norm_output_has_the_input_size():
    out = transfer(tiny_generator(TINY_SPECS["unet-instance"]), gradient_image(150, 70), tile=64, overlap=16)
    assert out.size == (150, 70)


# ------------------------------------------------------------------------------------------------- service


@pytest.fixture
def style_service(tmp_path):
    models = tmp_path / "models"
    save_pth(tiny_generator(TINY_SPECS["resnet-instance"]), models / "CycleGAN" / "horse2zebra.pth")
    save_pth(tiny_generator(TINY_SPECS["unet-batch"]), models / "pix2pix" / "facades" / "latest_net_G.pth")
    queue = JobQueue(max_pending=4)
    service = StyleTransferService(models, queue, ImageStore(tmp_path / "outputs"), HashCache(tmp_path / "cache.json"),
                                   max_pixels=300 * 300)
    yield service
    queue.shutdown()


def test_service_saves_png_with_infotext(style_service):
    info = style_service.registry.find("horse2zebra")
    result = style_service.run(StyleTransferRequest(model="horse2zebra", image=gradient_image(101, 67)), timeout=60)
    assert result.image.size == (101, 67) and result.model == info.title
    assert result.path is not None and result.path.name == "00000-horse2zebra.png"
    assert result.path.parent.parent.name == "img2img-images"
    params = parse_infotext(read_png_infotext(result.path)).params
    assert params == {"Size": "101x67", "Model hash": info.short_hash, "Model": "horse2zebra",
                      "Style transfer": "CycleGAN",
                      # provenance on by default: recorded even when it could not be applied (see test_provenance)
                      "Watermark skipped": "image under 65536 pixels (256x256)",
                      "Content credentials skipped": "no signer configured"}


def test_service_caches_the_generator_and_skips_saving(style_service):
    info = style_service.registry.find("pix2pix/facades")
    job = style_service.submit(StyleTransferRequest(model=info.title, image=gradient_image(40, 40), save=False))
    result = job.wait(60)
    owner = style_service._queue.device_owners[0]  # the one CPU worker of this bare queue
    generator = owner.resident(STYLE_GENERATOR, lambda: pytest.fail("rebuilt"), kind="gan",
                               version=(str(info.path), info.path.stat().st_mtime_ns, info.path.stat().st_size))
    assert owner.names("gan") == [STYLE_GENERATOR] and generator is not None  # kept loaded, not rebuilt
    assert result.path is None and result.image.size == (40, 40) and "pix2pix" in result.infotext
    assert job.kind == "style-transfer"


def test_service_validates_requests(style_service):
    with pytest.raises(InvalidRequest) as too_big:
        style_service.submit(StyleTransferRequest(model="horse2zebra", image=Image.new("RGB", (301, 300))))
    assert too_big.value.field == "image" and "MP" in str(too_big.value)
    with pytest.raises(InvalidRequest) as unknown:
        style_service.submit(StyleTransferRequest(model="nope", image=Image.new("RGB", (8, 8))))
    assert unknown.value.field == "model" and "horse2zebra" in str(unknown.value)
    with pytest.raises(InvalidRequest) as bad_tile:
        StyleTransferRequest(model="horse2zebra", image=Image.new("RGB", (8, 8)), tile=8)
    assert bad_tile.value.field == "tile"
    assert [i.name for i in style_service.list_models()] == ["horse2zebra", "facades"]
