"""CycleGAN and pix2pix training, as the pytorch-CycleGAN-and-pix2pix release does it (Zhu, Park et al.).

What follows the release (``models/networks.py``, ``cycle_gan_model.py``, ``pix2pix_model.py``,
``util/image_pool.py``, ``data/unaligned_dataset.py``, ``data/aligned_dataset.py``):
  * generators are OUR copies of its ResnetGenerator / UnetGenerator (webui/models/gan.py), so the result loads in
    the style-transfer mode and the GanRegistry; discriminators are its PatchGAN ``NLayerDiscriminator``;
  * weights start from N(0, 0.02) (BatchNorm scale N(1, 0.02)), biases 0 (``init_weights('normal', 0.02)``);
  * CycleGAN: G loss = LSGAN(D_A(G_A(A))) + LSGAN(D_B(G_B(B))) + cycle L1 x lambda_A/B + identity L1 x
    lambda_identity x lambda_B/A; each D: 0.5 x (real + fake from a 50-image history pool);
  * pix2pix: conditional D on cat(A, B); G loss = GAN(D(A, G(A))) + L1 x 100; D 0.5 x (real + fake), no pool;
  * Adam(lr 0.0002, betas (0.5, 0.999)); lr constant for n_epochs, then linearly to zero over n_epochs_decay
    (``get_scheduler('linear')``, epoch-wise);
  * data: resize to load_size (bicubic), random crop crop_size, random horizontal flip, to [-1, 1]; unaligned B
    drawn at random; aligned A|B halves cropped and flipped together.

Where we differ, for exact resume: each step's randomness (data order, crops, flips, pool draws, dropout) comes from
generators seeded by (seed, step) rather than from the process-global RNG, so a run resumed from a saved state
repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import itertools
import json
import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from webui.errors import InvalidRequest, ModelLoadError
from webui.models.gan import (GeneratorSpec, ResnetGenerator, UnetGenerator, build_generator, detect_generator,
                              find_generator_file, load_generator, norm_layer)
from webui.pipelines.style_transfer import to_image
from webui.training import datasets
from webui.training.gan_request import (RESNET_BLOCKS, UNET_DOWNS, CycleGanRequest, GanTrainRequest,
                                        Pix2PixRequest, cyclegan_from_dict, pix2pix_from_dict)
from webui.training.optim_state import load_module, load_optimizer, module_tensors, optimizer_state
from webui.training.protocol import Artifact, TrainingMethod, TrainingResources, TrainState

SAMPLE_COUNT = 4
_CACHE_LIMIT = 256  # decoded training images kept in memory (each at most 3 x load_size^2 bytes)


# ------------------------------------------------------------------------------------------ networks and losses


class NLayerDiscriminator(nn.Module):
    """The release's PatchGAN ("basic" = 3 layers, 70x70 receptive field): one real/fake logit per patch."""

    def __init__(self, input_nc: int, ndf: int = 64, n_layers: int = 3, norm: str = "batch"):
        super().__init__()
        make_norm = norm_layer(norm)  # type: ignore[arg-type]
        use_bias = norm == "instance"
        layers: list[nn.Module] = [nn.Conv2d(input_nc, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers):
            previous, mult = mult, min(2 ** n, 8)
            layers += [nn.Conv2d(ndf * previous, ndf * mult, 4, stride=2, padding=1, bias=use_bias),
                       make_norm(ndf * mult), nn.LeakyReLU(0.2, True)]
        previous, mult = mult, min(2 ** n_layers, 8)
        layers += [nn.Conv2d(ndf * previous, ndf * mult, 4, stride=1, padding=1, bias=use_bias),
                   make_norm(ndf * mult), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """``init_weights(net, 'normal', 0.02)``: convs/linears N(0, gain), BatchNorm scale N(1, gain), biases 0."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0.0, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, gain)
            nn.init.zeros_(layer.bias)


def gan_loss(prediction: torch.Tensor, target_is_real: bool, mode: str) -> torch.Tensor:
    """``GANLoss``: LSGAN = MSE to 1/0; vanilla = BCE-with-logits to 1/0."""
    target = torch.full_like(prediction, 1.0 if target_is_real else 0.0)
    if mode == "lsgan":
        return F.mse_loss(prediction, target)
    return F.binary_cross_entropy_with_logits(prediction, target)


def lr_factor(epoch: int, n_epochs: int, n_epochs_decay: int) -> float:
    """The release's linear rule with ``epoch_count`` 1: 1.0 for n_epochs epochs, then down to 1/(decay+1)."""
    return max(0.0, 1.0 - max(0, epoch + 1 - n_epochs) / float(n_epochs_decay + 1))


class ImagePool:
    """``util/image_pool.py``: past fakes for the discriminator; once full, half the time swap in a new one and
    return an old one. Draws come from the caller's generator so a resumed run draws the same."""

    def __init__(self, size: int):
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand((), generator=rng).item() > 0.5:
                index = int(torch.randint(0, self.size, (), generator=rng))
                out.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)


# ------------------------------------------------------------------------------------------------------ data


@contextmanager
def _private_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed torch's global RNG (CPU, and the CUDA device in use) for a block and restore it after: dropout and
    ``nn.init`` draw from it, and a training step must neither depend on nor disturb anyone else's draws."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)  # not torch.manual_seed: it reseeds every GPU too
        if devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def _seed(*parts: int) -> int:
    # Distinct, reproducible generator seeds per (run seed, step, purpose), well inside 63 bits.
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value * 6364136223846793005 + part + 1442695040888963407) % (1 << 63)
    return value


class _Images:
    """Decoded images at load size, kept up to a limit: small sets decode once, large ones stay bounded."""

    def __init__(self, load_size: int):
        self.load_size = load_size
        self.cache: dict[tuple[Path, int], torch.Tensor] = {}

    def get(self, path: Path, half: int = -1) -> torch.Tensor:
        """uint8 [3, load, load]; ``half`` 0/1 takes the left/right half of an A|B image first."""
        key = (path, half)
        tensor = self.cache.get(key)
        if tensor is None:
            image = datasets.open_rgb(path)
            if half >= 0:
                width, height = image.size
                image = image.crop((0, 0, width // 2, height) if half == 0 else (width // 2, 0, width, height))
            image = image.resize((self.load_size, self.load_size), Image.Resampling.BICUBIC)
            tensor = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
            if len(self.cache) < _CACHE_LIMIT:
                self.cache[key] = tensor
        return tensor


def _normalise(images: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(images).float() / 127.5 - 1.0


def _crop_flip(tensors: list[torch.Tensor], crop: int, flip: bool, rng: torch.Generator) -> list[torch.Tensor]:
    """One random crop and flip applied to every tensor alike (the aligned set's shared ``get_params``)."""
    size = tensors[0].shape[-1]
    top = int(torch.randint(0, size - crop + 1, (), generator=rng))
    left = int(torch.randint(0, size - crop + 1, (), generator=rng))
    mirror = flip and torch.rand((), generator=rng).item() > 0.5
    out = []
    for tensor in tensors:
        piece = tensor[:, top:top + crop, left:left + crop]
        out.append(piece.flip(-1) if mirror else piece)
    return out


def _centre(tensor: torch.Tensor, crop: int) -> torch.Tensor:
    offset = (tensor.shape[-1] - crop) // 2
    return tensor[:, offset:offset + crop, offset:offset + crop]


class UnalignedData:
    """Two unpaired folders; an epoch is max(|A|, |B|) samples; A in a shuffled order, B drawn at random."""

    def __init__(self, files_a: list[Path], files_b: list[Path], request: GanTrainRequest):
        self.files_a, self.files_b, self.request = files_a, files_b, request
        self.images = _Images(request.load_size)
        self.length = max(len(files_a), len(files_b))

    def batch(self, epoch: int, index: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        request = self.request
        order = torch.randperm(self.length, generator=torch.Generator().manual_seed(_seed(request.seed, epoch, 1)))
        rng = torch.Generator().manual_seed(_seed(request.seed, step, 2))
        picked = order[index * request.batch_size:(index + 1) * request.batch_size].tolist()
        batch_a, batch_b = [], []
        for position in picked:
            path_b = self.files_b[int(torch.randint(0, len(self.files_b), (), generator=rng))]
            (a,) = _crop_flip([self.images.get(self.files_a[position % len(self.files_a)])], request.crop_size,
                              request.flip, rng)
            (b,) = _crop_flip([self.images.get(path_b)], request.crop_size, request.flip, rng)
            batch_a.append(a)
            batch_b.append(b)
        return _normalise(batch_a), _normalise(batch_b)

    def fixed(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        crop = self.request.crop_size
        return (_normalise([_centre(self.images.get(p), crop) for p in self.files_a[:count]]),
                _normalise([_centre(self.images.get(p), crop) for p in self.files_b[:count]]))


class AlignedData:
    """Pairs: A|B side-by-side files (``halves``) or the same file name in two folders; ``direction`` BtoA swaps."""

    def __init__(self, pairs: list[tuple[Path, Path]], halves: bool, request: Pix2PixRequest):
        self.pairs, self.halves, self.request = pairs, halves, request
        self.images = _Images(request.load_size)
        self.length = len(pairs)

    def _pair(self, index: int) -> list[torch.Tensor]:
        first, second = self.pairs[index]
        a = self.images.get(first, 0 if self.halves else -1)
        b = self.images.get(second, 1 if self.halves else -1)
        return [a, b] if self.request.direction == "AtoB" else [b, a]

    def batch(self, epoch: int, index: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        request = self.request
        order = torch.randperm(self.length, generator=torch.Generator().manual_seed(_seed(request.seed, epoch, 1)))
        rng = torch.Generator().manual_seed(_seed(request.seed, step, 2))
        batch_a, batch_b = [], []
        for position in order[index * request.batch_size:(index + 1) * request.batch_size].tolist():
            a, b = _crop_flip(self._pair(position), request.crop_size, request.flip, rng)
            batch_a.append(a)
            batch_b.append(b)
        return _normalise(batch_a), _normalise(batch_b)

    def fixed(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        crop = self.request.crop_size
        pairs = [self._pair(i) for i in range(min(count, self.length))]
        return _normalise([_centre(a, crop) for a, _ in pairs]), _normalise([_centre(b, crop) for _, b in pairs])


# ------------------------------------------------------------------------------------------------ checks


@dataclass(frozen=True)
class _Plan:
    """What the checks found: the data, the starting generator(s) and where the result goes."""

    data: UnalignedData | AlignedData
    files: list[Path]
    init_a: Path | None
    init_b: Path | None
    output: Path


def _kind(request: GanTrainRequest) -> str:
    return "CycleGAN" if isinstance(request, CycleGanRequest) else "pix2pix"


def _artifact_path(request: GanTrainRequest, resources: TrainingResources) -> Path:
    filename = "latest_net_G_A.safetensors" if isinstance(request, CycleGanRequest) else "latest_net_G.safetensors"
    return resources.models_dir / _kind(request) / request.name / filename


def _plan(request: GanTrainRequest, resources: TrainingResources) -> _Plan:
    output = _artifact_path(request, resources)
    if output.parent.exists() and not request.overwrite:
        raise InvalidRequest("name", f"'{request.name}' already exists in models/{_kind(request)}; choose another "
                             "name or tick overwrite")
    crop = request.crop_size
    if isinstance(request, CycleGanRequest):
        files_a = resources.images(request.dataset_a, "dataset_a")
        files_b = resources.images(request.dataset_b, "dataset_b")
        datasets.check_min_size(files_a, "dataset_a", crop, crop, "crop size")
        datasets.check_min_size(files_b, "dataset_b", crop, crop, "crop size")
        data: UnalignedData | AlignedData = UnalignedData(files_a, files_b, request)
        files = files_a + files_b
    else:
        assert isinstance(request, Pix2PixRequest)
        pairs, halves = _pairs(request, resources)
        data = AlignedData(pairs, halves, request)
        files = sorted({path for pair in pairs for path in pair})
    init_a, init_b = _init_files(request, resources)
    return _Plan(data, files, init_a, init_b, output)


def _pairs(request: Pix2PixRequest, resources: TrainingResources) -> tuple[list[tuple[Path, Path]], bool]:
    crop = request.crop_size
    if request.dataset.strip():
        files = resources.images(request.dataset, "dataset")
        datasets.check_min_size(files, "dataset", 2 * crop, crop, "crop size for each half of an A|B image")
        return [(path, path) for path in files], True
    files_a = resources.images(request.dataset_a, "dataset_a")
    files_b = resources.images(request.dataset_b, "dataset_b")
    by_stem_b = {path.stem: path for path in files_b}
    by_stem_a = {path.stem: path for path in files_a}
    unmatched_a = [path.name for path in files_a if path.stem not in by_stem_b]
    unmatched_b = [path.name for path in files_b if path.stem not in by_stem_a]
    if unmatched_a or unmatched_b:
        field, names = ("dataset_b", unmatched_a) if unmatched_a else ("dataset_a", unmatched_b)
        other = "dataset_b" if field == "dataset_b" else "dataset_a"
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise InvalidRequest(field, f"no image with the same name in {other} for: {shown} (pix2pix pairs images "
                             "by file name)")
    datasets.check_min_size(files_a, "dataset_a", crop, crop, "crop size")
    datasets.check_min_size(files_b, "dataset_b", crop, crop, "crop size")
    return [(path, by_stem_b[path.stem]) for path in files_a], False


def _init_files(request: GanTrainRequest, resources: TrainingResources) -> tuple[Path | None, Path | None]:
    if not request.init_from.strip():
        return None, None
    folder = resources.models_dir / _kind(request)
    path = find_generator_file(folder, request.init_from.strip())
    if path is None:
        raise InvalidRequest("init_from", f"no generator '{request.init_from}' in models/{_kind(request)}")
    try:
        _, spec = load_generator(path)
    except ModelLoadError as exc:
        raise InvalidRequest("init_from", str(exc)) from None
    _check_spec(spec, request)
    partner = None
    if isinstance(request, CycleGanRequest) and path.stem == "latest_net_G_A":
        partner = next((candidate for candidate in sorted(path.parent.glob("latest_net_G_B.*"))
                        if candidate.suffix in (".pth", ".pt", ".safetensors")), None)
    return path, partner


def _check_spec(spec: GeneratorSpec, request: GanTrainRequest) -> None:
    if spec.input_nc != 3 or spec.output_nc != 3:
        raise InvalidRequest("init_from", f"the generator maps {spec.input_nc} to {spec.output_nc} channels; "
                             "training here uses RGB images (3 to 3)")
    if request.crop_size % spec.size_multiple or request.crop_size < spec.size_multiple:
        raise InvalidRequest("crop_size", f"must be a multiple of {spec.size_multiple} for the {spec.label} "
                             f"generator being continued (got {request.crop_size})")


def check(request: GanTrainRequest, resources: TrainingResources) -> None:
    """Every check made before device work (folders, images, pairs, sizes, the generator to continue)."""
    _plan(request, resources)


# ---------------------------------------------------------------------------------------------------- trainer


def _new_generator(request: GanTrainRequest, dropout: bool) -> nn.Module:
    if request.net_g in RESNET_BLOCKS:
        generator: nn.Module = ResnetGenerator(3, 3, request.ngf, request.norm, dropout, RESNET_BLOCKS[request.net_g])
    else:
        generator = UnetGenerator(3, 3, UNET_DOWNS[request.net_g], request.ngf, request.norm, dropout)
    init_weights(generator)
    return generator


def _continued(path: Path, dropout: bool) -> nn.Module:
    loaded, spec = load_generator(path)
    # Rebuild with the run's dropout (U-Net dropout has no weights, ResNet's shifts keys: keep the file's).
    if spec.kind == "unet":
        generator: nn.Module = UnetGenerator(spec.input_nc, spec.output_nc, spec.num_downs or 0, spec.ngf,
                                             spec.norm, dropout)
        generator.load_state_dict(loaded.state_dict(), strict=True)
    else:
        generator = loaded
    return generator.train().requires_grad_(True)


def _spec_of(generator: nn.Module) -> dict[str, Any]:
    spec = detect_generator(generator.state_dict())
    return {"kind": spec.kind, "label": spec.label, "ngf": spec.ngf, "norm": spec.norm,
            "n_blocks": spec.n_blocks, "num_downs": spec.num_downs}


class GanTrainer:
    """Shared loop machinery: steps and epochs, the lr rule, per-step RNG, state, samples, artifact."""

    generator_names: tuple[str, ...] = ()
    network_names: tuple[str, ...] = ()

    def __init__(self, request: GanTrainRequest, plan: _Plan, resources: TrainingResources):
        self.request, self.plan = request, plan
        self.steps_per_epoch = max(1, math.ceil(plan.data.length / request.batch_size))
        epochs = request.n_epochs + request.n_epochs_decay
        self.total_steps = request.steps or epochs * self.steps_per_epoch
        self.device = torch.device("cpu")
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.completed = 0
        self.dataset_hash = datasets.dataset_hash(plan.files)
        self.fixed_a, self.fixed_b = plan.data.fixed(SAMPLE_COUNT)

    # -- protocol ------------------------------------------------------------------------------------------

    def on_device(self, device: torch.device) -> None:
        self.device = device
        betas = (self.request.beta1, 0.999)
        for name, modules in self.optimizer_groups().items():
            params = itertools.chain(*(getattr(self, m).parameters() for m in modules))
            self.optimizers[name] = torch.optim.Adam(params, lr=self.request.lr, betas=betas)

    def optimizer_groups(self) -> dict[str, tuple[str, ...]]:
        raise NotImplementedError

    def step(self, step: int) -> Mapping[str, float]:
        epoch, index = divmod(step, self.steps_per_epoch)
        lr = self.request.lr * lr_factor(epoch, self.request.n_epochs, self.request.n_epochs_decay)
        for optimizer in self.optimizers.values():
            for group in optimizer.param_groups:
                group["lr"] = lr
        real_a, real_b = self.plan.data.batch(epoch, index, step)
        real_a, real_b = real_a.to(self.device), real_b.to(self.device)
        pool_rng = torch.Generator().manual_seed(_seed(self.request.seed, step, 3))
        with _private_rng(self.device, _seed(self.request.seed, step, 4)):  # dropout draws
            figures = self.optimize(real_a, real_b, pool_rng)
        self.completed = step + 1
        return {**figures, "lr": lr, "epoch": float(epoch)}

    def optimize(self, real_a: torch.Tensor, real_b: torch.Tensor, pool_rng: torch.Generator) -> dict[str, float]:
        raise NotImplementedError

    def state(self) -> TrainState:
        tensors: dict[str, torch.Tensor] = {}
        values: dict[str, Any] = {"completed": self.completed}
        for name in self.network_names:
            tensors.update(module_tensors(name, getattr(self, name)))
        for name, optimizer in self.optimizers.items():
            opt_tensors, opt_values = optimizer_state(f"opt_{name}", optimizer)
            tensors.update(opt_tensors)
            values.update(opt_values)
        for name, pool in self.pools().items():
            values[f"{name}.count"] = len(pool.images)
            tensors.update({f"{name}.{i}": image.detach().cpu().contiguous().clone()
                            for i, image in enumerate(pool.images)})
        return TrainState(tensors, values)

    def load_state(self, state: TrainState) -> None:
        for name in self.network_names:
            load_module(name, getattr(self, name), state.tensors)
        for name, optimizer in self.optimizers.items():
            load_optimizer(f"opt_{name}", optimizer, state.tensors, state.values)
        for name, pool in self.pools().items():
            pool.images = [state.tensors[f"{name}.{i}"].to(self.device)
                           for i in range(int(state.values[f"{name}.count"]))]
        self.completed = int(state.values["completed"])

    def pools(self) -> dict[str, ImagePool]:
        return {}

    def samples(self) -> list[Image.Image]:
        """Each fixed input beside its translation (input | output), one image per input and generator."""
        images = []
        for generator_name, inputs in self.sample_inputs():
            generator = getattr(self, generator_name)
            was_training = generator.training
            generator.eval()
            try:
                with torch.no_grad():
                    outputs = generator(inputs.to(self.device)).float().cpu()
            finally:
                generator.train(was_training)
            for source, result in zip(inputs, outputs):
                images.append(to_image(torch.cat([source, result], dim=-1).unsqueeze(0)))
        return images

    def sample_inputs(self) -> list[tuple[str, torch.Tensor]]:
        raise NotImplementedError

    def artifact(self) -> Artifact:
        return self.artifacts()[0]

    def artifacts(self) -> list[Artifact]:
        """Every file of the result (CycleGAN: G_A and G_B). ``artifact()`` is the first, the A -> B generator."""
        files = []
        for generator_name, path, direction in self.outputs():
            generator = getattr(self, generator_name)
            tensors = {key: value.detach().cpu().contiguous().clone()
                       for key, value in generator.state_dict().items()}
            files.append(Artifact(tensors, path, self.metadata(generator, direction)))
        return files

    def outputs(self) -> list[tuple[str, Path, str]]:
        raise NotImplementedError

    def metadata(self, generator: nn.Module, direction: str) -> dict[str, str]:
        request = self.request
        return {
            "format": "pt",
            "studio_method": _kind(request),
            "studio_direction": direction,
            "studio_architecture": json.dumps(_spec_of(generator)),
            "studio_steps": str(self.completed),
            "studio_total_steps": str(self.total_steps),
            "studio_dataset_size": str(self.plan.data.length),
            "studio_dataset_hash": self.dataset_hash,
            "studio_init_from": request.init_from,
            "studio_settings": json.dumps(asdict(request), sort_keys=True),
        }


class CycleGanTrainer(GanTrainer):
    generator_names = ("net_g_a", "net_g_b")
    network_names = ("net_g_a", "net_g_b", "net_d_a", "net_d_b")

    def __init__(self, request: CycleGanRequest, plan: _Plan, resources: TrainingResources):
        super().__init__(request, plan, resources)
        with _private_rng(torch.device("cpu"), _seed(request.seed, 0, 5)):  # scratch weights follow the seed
            self._build(request, plan)

    def _build(self, request: CycleGanRequest, plan: _Plan) -> None:
        self.net_g_a = _continued(plan.init_a, False) if plan.init_a else _new_generator(request, False)
        if plan.init_b:
            self.net_g_b = _continued(plan.init_b, False)
        elif plan.init_a:  # one-sided continuation: B -> A starts fresh with the same architecture
            self.net_g_b = _same_architecture(self.net_g_a)
        else:
            self.net_g_b = _new_generator(request, False)
        self.net_d_a = NLayerDiscriminator(3, request.ndf, request.n_layers_d, request.norm)
        self.net_d_b = NLayerDiscriminator(3, request.ndf, request.n_layers_d, request.norm)
        init_weights(self.net_d_a)
        init_weights(self.net_d_b)
        self.pool_a, self.pool_b = ImagePool(request.pool_size), ImagePool(request.pool_size)

    def optimizer_groups(self) -> dict[str, tuple[str, ...]]:
        return {"G": ("net_g_a", "net_g_b"), "D": ("net_d_a", "net_d_b")}

    def pools(self) -> dict[str, ImagePool]:
        return {"pool_a": self.pool_a, "pool_b": self.pool_b}

    def optimize(self, real_a: torch.Tensor, real_b: torch.Tensor, pool_rng: torch.Generator) -> dict[str, float]:
        request = self.request
        assert isinstance(request, CycleGanRequest)
        mode = request.gan_mode
        fake_b = self.net_g_a(real_a)
        rec_a = self.net_g_b(fake_b)
        fake_a = self.net_g_b(real_b)
        rec_b = self.net_g_a(fake_a)
        # Generators: the discriminators are held fixed for this half.
        discriminators = (self.net_d_a, self.net_d_b)
        for network in discriminators:
            network.requires_grad_(False)
        self.optimizers["G"].zero_grad(set_to_none=True)
        if request.lambda_identity > 0:
            loss_idt_a = F.l1_loss(self.net_g_a(real_b), real_b) * request.lambda_b * request.lambda_identity
            loss_idt_b = F.l1_loss(self.net_g_b(real_a), real_a) * request.lambda_a * request.lambda_identity
        else:
            loss_idt_a = loss_idt_b = torch.zeros((), device=real_a.device)
        loss_g_a = gan_loss(self.net_d_a(fake_b), True, mode)
        loss_g_b = gan_loss(self.net_d_b(fake_a), True, mode)
        loss_cycle_a = F.l1_loss(rec_a, real_a) * request.lambda_a
        loss_cycle_b = F.l1_loss(rec_b, real_b) * request.lambda_b
        loss_g = loss_g_a + loss_g_b + loss_cycle_a + loss_cycle_b + loss_idt_a + loss_idt_b
        loss_g.backward()
        self.optimizers["G"].step()
        for network in discriminators:
            network.requires_grad_(True)
        self.optimizers["D"].zero_grad(set_to_none=True)
        loss_d_a = _discriminator_loss(self.net_d_a, real_b, self.pool_b.query(fake_b, pool_rng), mode)
        loss_d_b = _discriminator_loss(self.net_d_b, real_a, self.pool_a.query(fake_a, pool_rng), mode)
        self.optimizers["D"].step()
        return {"loss": loss_g.item(), "G_A": loss_g_a.item(), "G_B": loss_g_b.item(),
                "cycle_A": loss_cycle_a.item(), "cycle_B": loss_cycle_b.item(), "idt_A": loss_idt_a.item(),
                "idt_B": loss_idt_b.item(), "D_A": loss_d_a, "D_B": loss_d_b}

    def sample_inputs(self) -> list[tuple[str, torch.Tensor]]:
        return [("net_g_a", self.fixed_a), ("net_g_b", self.fixed_b)]

    def outputs(self) -> list[tuple[str, Path, str]]:
        folder = self.plan.output.parent
        return [("net_g_a", folder / "latest_net_G_A.safetensors", "AtoB"),
                ("net_g_b", folder / "latest_net_G_B.safetensors", "BtoA")]


def _same_architecture(generator: nn.Module) -> nn.Module:
    fresh = build_generator(detect_generator(generator.state_dict()))
    init_weights(fresh)
    return fresh.train()


def _discriminator_loss(discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, mode: str) -> float:
    """``backward_D_basic``: 0.5 x (real as real + fake as fake), backpropagated here."""
    loss = (gan_loss(discriminator(real), True, mode) + gan_loss(discriminator(fake.detach()), False, mode)) * 0.5
    loss.backward()
    return loss.item()


class Pix2PixTrainer(GanTrainer):
    generator_names = ("net_g",)
    network_names = ("net_g", "net_d")

    def __init__(self, request: Pix2PixRequest, plan: _Plan, resources: TrainingResources):
        super().__init__(request, plan, resources)
        with _private_rng(torch.device("cpu"), _seed(request.seed, 0, 5)):
            self.net_g = _continued(plan.init_a, request.dropout) if plan.init_a else \
                _new_generator(request, request.dropout)
            self.net_d = NLayerDiscriminator(6, request.ndf, request.n_layers_d, request.norm)  # sees A and B
            init_weights(self.net_d)
        self.pool = ImagePool(request.pool_size)

    def optimizer_groups(self) -> dict[str, tuple[str, ...]]:
        return {"G": ("net_g",), "D": ("net_d",)}

    def pools(self) -> dict[str, ImagePool]:
        return {"pool": self.pool}

    def optimize(self, real_a: torch.Tensor, real_b: torch.Tensor, pool_rng: torch.Generator) -> dict[str, float]:
        request = self.request
        assert isinstance(request, Pix2PixRequest)
        fake_b = self.net_g(real_a)
        # Discriminator first, as the release's optimize_parameters does.
        self.net_d.requires_grad_(True)
        self.optimizers["D"].zero_grad(set_to_none=True)
        fake_ab = self.pool.query(torch.cat([real_a, fake_b], 1), pool_rng)
        loss_d = _discriminator_loss(self.net_d, torch.cat([real_a, real_b], 1), fake_ab, request.gan_mode)
        self.optimizers["D"].step()
        self.net_d.requires_grad_(False)
        self.optimizers["G"].zero_grad(set_to_none=True)
        loss_g_gan = gan_loss(self.net_d(torch.cat([real_a, fake_b], 1)), True, request.gan_mode)
        loss_l1 = F.l1_loss(fake_b, real_b) * request.lambda_l1
        loss_g = loss_g_gan + loss_l1
        loss_g.backward()
        self.optimizers["G"].step()
        return {"loss": loss_g.item(), "G_GAN": loss_g_gan.item(), "G_L1": loss_l1.item(), "D": loss_d}

    def sample_inputs(self) -> list[tuple[str, torch.Tensor]]:
        return [("net_g", self.fixed_a)]

    def outputs(self) -> list[tuple[str, Path, str]]:
        return [("net_g", self.plan.output, self.request.direction)]  # type: ignore[attr-defined]


def create_cyclegan(request: CycleGanRequest, resources: TrainingResources) -> CycleGanTrainer:
    return CycleGanTrainer(request, _plan(request, resources), resources)


def create_pix2pix(request: Pix2PixRequest, resources: TrainingResources) -> Pix2PixTrainer:
    return Pix2PixTrainer(request, _plan(request, resources), resources)


CYCLEGAN_METHOD = TrainingMethod(name="cyclegan", label="CycleGAN", request_type=CycleGanRequest,
                                 from_dict=cyclegan_from_dict, check=check, create=create_cyclegan,
                                 uses_checkpoint=False)
PIX2PIX_METHOD = TrainingMethod(name="pix2pix", label="pix2pix", request_type=Pix2PixRequest,
                                from_dict=pix2pix_from_dict, check=check, create=create_pix2pix,
                                uses_checkpoint=False)
