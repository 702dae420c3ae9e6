"""CycleGAN / pix2pix generators: architectures, detection from a state dict, safe loading, and a folder registry.

The layer layout reproduces the generators of the public pytorch-CycleGAN-and-pix2pix release (Jun-Yan Zhu,
Taesung Park et al., ``models/networks.py``: ``ResnetGenerator``, ``ResnetBlock``, ``UnetGenerator``,
``UnetSkipConnectionBlock``) module for module, so the release's ``latest_net_G.pth`` files load with
``strict=True`` and produce the same outputs. Only the reflect padding type (the release default) is built.

Norm layers follow the release's ``get_norm_layer``:
  instance -> ``InstanceNorm2d(affine=False, track_running_stats=False)``: no norm entries in the state dict,
              and convolutions carry a bias;
  batch    -> ``BatchNorm2d(affine=True)``: weight, bias, running_mean/var, num_batches_tracked; convs have no bias;
  none     -> Identity; no norm entries and no conv bias.
"""

from __future__ import annotations

import logging
import pickle
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from torch import nn

from webui.errors import ModelLoadError, ModelNotFound
from webui.models.folder_scan import ModelFolder
from webui.models.registry import HashCache
from webui.models.safetensors_file import FileChanged, NotRegularFile, sha256_file

log = logging.getLogger(__name__)

NormKind = Literal["instance", "batch", "none"]
GanKind = Literal["CycleGAN", "pix2pix"]

GAN_SUFFIXES = (".pth", ".pt", ".safetensors")
_STALE_NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_RESNET_FIRST_BLOCK = 10  # pad, conv, norm, relu, then 2 x (conv, norm, relu) come before the resnet blocks
_UNET_MIN_DOWNS = 5  # outermost + three channel-changing blocks + innermost


# --------------------------------------------------------------------------------------------- architectures


def norm_layer(kind: NormKind) -> Callable[[int], nn.Module]:
    """The release's ``get_norm_layer``: a factory taking the channel count."""
    if kind == "instance":
        return lambda channels: nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if kind == "batch":
        return lambda channels: nn.BatchNorm2d(channels, affine=True, track_running_stats=True)
    if kind == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"unknown norm '{kind}'")


class ResnetBlock(nn.Module):
    """pad, conv3x3, norm, ReLU, [Dropout], pad, conv3x3, norm; output = x + block(x)."""

    def __init__(self, dim: int, norm: NormKind, use_dropout: bool, use_bias: bool):
        super().__init__()
        make_norm = norm_layer(norm)
        layers: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), make_norm(dim),
                                   nn.ReLU(True)]
        if use_dropout:
            layers.append(nn.Dropout(0.5))  # shifts the second conv from conv_block.5 to conv_block.6
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=use_bias), make_norm(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """Johnson et al.'s fast-style-transfer generator as the release builds it (CycleGAN's ``resnet_9blocks``).

    Indices inside ``self.model`` match the release: 0 pad, 1 conv7x7, 2 norm, 3 ReLU, 4-9 two stride-2 downsamplings,
    10..10+n-1 resnet blocks, then two ConvTranspose upsamplings, pad, conv7x7 (always biased), Tanh.
    """

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, norm: NormKind = "instance",
                 use_dropout: bool = False, n_blocks: int = 9):
        super().__init__()
        self.input_nc, self.output_nc, self.ngf = input_nc, output_nc, ngf
        self.size_multiple = 4  # two stride-2 downsamplings
        self.min_size = 8  # the blocks' ReflectionPad2d(1) needs a bottleneck of at least 2x2
        make_norm = norm_layer(norm)
        use_bias = norm == "instance"  # the release: bias only where the norm does not re-centre (InstanceNorm)
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=use_bias), make_norm(ngf),
                                   nn.ReLU(True)]
        for i in range(2):
            mult = 2 ** i
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1, bias=use_bias),
                       make_norm(ngf * mult * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4, norm, use_dropout, use_bias) for _ in range(n_blocks)]
        for i in range(2):
            mult = 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1,
                                          bias=use_bias),
                       make_norm(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: x -> [x, up(sub(down(x)))] (outermost: no concatenation, Tanh at the end)."""

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None,
                 submodule: nn.Module | None = None, outermost: bool = False, innermost: bool = False,
                 norm: NormKind = "batch", use_dropout: bool = False):
        super().__init__()
        self.outermost = outermost
        make_norm = norm_layer(norm)
        use_bias = norm == "instance"
        downconv = nn.Conv2d(input_nc or outer_nc, inner_nc, 4, stride=2, padding=1, bias=use_bias)
        downrelu, uprelu = nn.LeakyReLU(0.2, True), nn.ReLU(True)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1)
            layers = [downconv, submodule, uprelu, upconv, nn.Tanh()]
        elif innermost:
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, 4, stride=2, padding=1, bias=use_bias)
            layers = [downrelu, downconv, uprelu, upconv, make_norm(outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1, bias=use_bias)
            layers = [downrelu, downconv, make_norm(inner_nc), submodule, uprelu, upconv, make_norm(outer_nc)]
            if use_dropout:
                layers.append(nn.Dropout(0.5))  # last in the block: parameter-free, keys unchanged
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """pix2pix's U-Net (``unet_256`` = 8 downs, ``unet_128`` = 7), built from the innermost block outwards."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, num_downs: int = 8, ngf: int = 64,
                 norm: NormKind = "batch", use_dropout: bool = False):
        super().__init__()
        if num_downs < _UNET_MIN_DOWNS:
            raise ValueError(f"num_downs must be at least {_UNET_MIN_DOWNS}")
        self.input_nc, self.output_nc, self.ngf = input_nc, output_nc, ngf
        self.size_multiple = 2 ** num_downs  # the bottleneck is 1x1 at that size
        self.min_size = self.size_multiple
        block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, norm=norm, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetSkipConnectionBlock(ngf * 8, ngf * 8, submodule=block, norm=norm, use_dropout=use_dropout)
        for outer, inner in ((ngf * 4, ngf * 8), (ngf * 2, ngf * 4), (ngf, ngf * 2)):
            block = UnetSkipConnectionBlock(outer, inner, submodule=block, norm=norm)
        self.model = UnetSkipConnectionBlock(output_nc, ngf, input_nc=input_nc, submodule=block, outermost=True,
                                             norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


# ------------------------------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class GeneratorSpec:
    kind: Literal["resnet", "unet"]
    ngf: int
    input_nc: int
    output_nc: int
    norm: NormKind
    n_blocks: int | None = None   # resnet
    num_downs: int | None = None  # unet
    use_dropout: bool = False     # only visible in resnet keys; U-Net dropout has no parameters

    @property
    def size_multiple(self) -> int:
        return 4 if self.kind == "resnet" else 2 ** (self.num_downs or 0)

    @property
    def label(self) -> str:
        depth = f"{self.n_blocks} blocks" if self.kind == "resnet" else f"{self.num_downs} downs"
        return f"{self.kind} ({depth}, ngf {self.ngf}, {self.norm} norm)"


def detect_generator(state_dict: dict[str, torch.Tensor], source: str = "state dict") -> GeneratorSpec:
    """Read the generator's hyper-parameters from key names and tensor shapes alone."""
    if "model.1.weight" in state_dict and f"model.{_RESNET_FIRST_BLOCK}.conv_block.1.weight" in state_dict:
        return _detect_resnet(state_dict, source)
    if "model.model.0.weight" in state_dict:
        return _detect_unet(state_dict, source)
    raise ModelLoadError(f"{source}: not a CycleGAN/pix2pix generator (expected ResnetGenerator or UnetGenerator "
                         f"keys like 'model.1.weight' or 'model.model.0.weight').")


def _detect_norm(state_dict: dict[str, torch.Tensor], norm_prefix: str, conv_prefix: str) -> NormKind:
    # Affine weights mean BatchNorm; a conv bias without them means InstanceNorm (whose stale running stats
    # in pre-0.4 checkpoints are dropped later). Neither: the release's norm 'none'.
    if f"{norm_prefix}.weight" in state_dict:
        return "batch"
    return "instance" if f"{conv_prefix}.bias" in state_dict else "none"


def _shape(state_dict: dict[str, torch.Tensor], key: str, ndim: int, source: str) -> tuple[int, ...]:
    tensor = state_dict.get(key)
    if tensor is None or tensor.ndim != ndim:
        raise ModelLoadError(f"{source}: unexpected generator layout ('{key}' missing or not {ndim}-D).")
    return tuple(tensor.shape)


def _detect_resnet(state_dict: dict[str, torch.Tensor], source: str) -> GeneratorSpec:
    ngf, input_nc, kh, kw = _shape(state_dict, "model.1.weight", 4, source)
    if (kh, kw) != (7, 7):
        raise ModelLoadError(f"{source}: first convolution is {kh}x{kw}, a ResnetGenerator's is 7x7.")
    blocks = {int(key.split(".")[1]) for key in state_dict if key.split(".")[2:3] == ["conv_block"]}
    n_blocks = len(blocks)
    if blocks != set(range(_RESNET_FIRST_BLOCK, _RESNET_FIRST_BLOCK + n_blocks)):
        raise ModelLoadError(f"{source}: resnet blocks are not contiguous from model.{_RESNET_FIRST_BLOCK}.")
    final_conv = _RESNET_FIRST_BLOCK + n_blocks + 7  # 2 x (convT, norm, ReLU), then pad
    output_nc = _shape(state_dict, f"model.{final_conv}.weight", 4, source)[0]
    return GeneratorSpec(kind="resnet", ngf=ngf, input_nc=input_nc, output_nc=output_nc,
                         norm=_detect_norm(state_dict, "model.2", "model.1"), n_blocks=n_blocks,
                         use_dropout=_has_conv(state_dict, f"model.{_RESNET_FIRST_BLOCK}.conv_block.6"))


def _has_conv(state_dict: dict[str, torch.Tensor], prefix: str) -> bool:
    # With dropout the second conv moves from conv_block.5 to .6 (where a BatchNorm's 1-D weight otherwise sits).
    weight = state_dict.get(f"{prefix}.weight")
    return weight is not None and weight.ndim == 4


def _detect_unet(state_dict: dict[str, torch.Tensor], source: str) -> GeneratorSpec:
    ngf, input_nc, kh, kw = _shape(state_dict, "model.model.0.weight", 4, source)
    if (kh, kw) != (4, 4):
        raise ModelLoadError(f"{source}: outermost down convolution is {kh}x{kw}, a UnetGenerator's is 4x4.")
    output_nc = _shape(state_dict, "model.model.3.weight", 4, source)[1]  # ConvTranspose: [in, out, k, k]
    # Levels nest: the outermost block's submodule is "model.model.1", each further one sits at <parent>.model.3,
    # and the innermost block is the one whose model.3 is a ConvTranspose instead of another block.
    prefix = "model.model.1"
    _shape(state_dict, f"{prefix}.model.1.weight", 4, source)
    num_downs = 2
    while any(key.startswith(f"{prefix}.model.3.model.") for key in state_dict):
        num_downs += 1
        prefix += ".model.3"
    if num_downs < _UNET_MIN_DOWNS:
        raise ModelLoadError(f"{source}: U-Net with {num_downs} levels; the release builds at least "
                             f"{_UNET_MIN_DOWNS}.")
    return GeneratorSpec(kind="unet", ngf=ngf, input_nc=input_nc, output_nc=output_nc,
                         norm=_detect_norm(state_dict, "model.model.1.model.2", "model.model.0"),
                         num_downs=num_downs)


def build_generator(spec: GeneratorSpec) -> nn.Module:
    if spec.kind == "resnet":
        return ResnetGenerator(spec.input_nc, spec.output_nc, spec.ngf, spec.norm, spec.use_dropout,
                               spec.n_blocks or 0)
    return UnetGenerator(spec.input_nc, spec.output_nc, spec.num_downs or 0, spec.ngf, spec.norm, spec.use_dropout)


# --------------------------------------------------------------------------------------------------- loading


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only: safetensors, or torch's restricted ``weights_only`` unpickler (a pickle can run code)."""
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelLoadError(f"{path.name} refused: not a plain weights file (pickles can run code). Re-save it "
                             f"as a state dict or convert it to .safetensors.{_unsupported_global(exc)}") from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise ModelLoadError(f"{path.name} could not be read: {_first_line(exc)}") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # some trainers wrap the state dict
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ModelLoadError(f"{path.name} is not a generator state dict (expected a dict of tensors).")
    return dict(data)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path.name} could not be read: {_first_line(exc)}") from None


def _unsupported_global(exc: BaseException) -> str:
    # torch's message suggests weights_only=False, which is exactly what we must never do; keep only the culprit.
    lines = [line.strip() for line in str(exc).splitlines() if "unsupported global" in line.lower()]
    return f" ({lines[0]})" if lines else ""


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    """DataParallel saves every key under ``module.``."""
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict


def drop_stale_instance_norm_stats(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pre-0.4 PyTorch saved running stats for InstanceNorm; the release's ``__patch_instance_norm_state_dict``
    drops them, and so do we (only under InstanceNorm layers, so a BatchNorm's stats are never lost)."""
    stale = {f"{name}.{buffer}" for name, module in model.named_modules() if isinstance(module, nn.InstanceNorm2d)
             for buffer in _STALE_NORM_BUFFERS}
    return {key: value for key, value in state_dict.items() if key not in stale}


def load_generator(path: Path) -> tuple[nn.Module, GeneratorSpec]:
    """Read, detect, build and strictly load a generator; returned in eval mode on the CPU."""
    state_dict = _strip_prefix(read_state_dict(path))
    spec = detect_generator(state_dict, source=path.name)
    model = build_generator(spec)
    try:
        model.load_state_dict(drop_stale_instance_norm_stats(model, state_dict), strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"{path.name}: weights do not fit a {spec.label} generator: "
                             f"{_first_line(exc)}") from None
    return model.eval().requires_grad_(False), spec


# -------------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class GanModelInfo:
    name: str          # file stem, or the folder name for release-style <name>/latest_net_G.pth
    kind: GanKind      # which folder it came from
    path: Path
    sha256: str

    @property
    def short_hash(self) -> str:
        return self.sha256[:10]

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def title(self) -> str:
        return f"{self.key} [{self.short_hash}]"


# Release training folders hold latest_net_G.pth (test/pretrained) or latest_net_G_A/_B.pth (CycleGAN training).
_RELEASE_FILES = {"latest_net_G": "", "latest_net_G_A": "_AtoB", "latest_net_G_B": "_BtoA"}


class GanRegistry:
    """Generators in ``models/CycleGAN`` and ``models/pix2pix``: loose files and release-style folders.

    Scanned by ``folder_scan.ModelFolder`` rules: regular files only, links must stay inside their folder unless
    ``allow_external_links``; a file that cannot be hashed is left out and logged.
    """

    KINDS: tuple[GanKind, ...] = ("CycleGAN", "pix2pix")

    def __init__(self, models_dir: Path, hash_cache: HashCache | None = None, *,
                 allow_external_links: bool = False):
        self._dirs = {kind: models_dir / kind for kind in self.KINDS}
        self._folders = {kind: ModelFolder(path, allow_external_links=allow_external_links)
                         for kind, path in self._dirs.items()}
        self._hash = hash_cache.sha256 if hash_cache is not None else sha256_file
        self._lock = threading.Lock()
        self._items: list[GanModelInfo] = []

    @property
    def directories(self) -> dict[str, Path]:
        return dict(self._dirs)

    def refresh(self) -> list[GanModelInfo]:
        items: list[GanModelInfo] = []
        for kind, folder in self._folders.items():
            for name, path in _candidates(folder):
                try:
                    items.append(GanModelInfo(name, kind, path, self._hash(path)))
                except (FileChanged, NotRegularFile) as exc:
                    log.warning("Skipped %s: %s", path, exc)
                except OSError as exc:
                    log.warning("Skipped %s: unreadable: %s", path, exc.strerror or exc)
        items.sort(key=lambda info: (info.kind, info.name.lower()))
        with self._lock:
            self._items = items
        return list(items)

    def list(self) -> list[GanModelInfo]:
        with self._lock:
            return list(self._items)

    def find(self, query: str) -> GanModelInfo:
        """Accepts a title, ``kind/name``, a bare name, a file name, or a short or full sha256."""
        query = query.strip()
        items = self.list()
        for matches in (lambda i: query == i.title, lambda i: query == i.key, lambda i: query == i.name,
                        lambda i: query == i.path.name, lambda i: query in (i.short_hash, i.sha256),
                        lambda i: query.split(" [")[0] == i.key):
            for info in items:
                if matches(info):
                    return info
        folders = " or ".join(str(path) for path in self._dirs.values())
        known = ", ".join(info.title for info in items) or f"none (put .pth or .safetensors files in {folders})"
        raise ModelNotFound(f"Style transfer model '{query}' not found. Available: {known}")


def _candidates(folder: ModelFolder) -> list[tuple[str, Path]]:
    # Top level only: loose files, and every sub-folder as a possible release folder.
    scan = folder.scan(GAN_SUFFIXES, recursive=False, claim_dir=lambda path: True)
    found = [(path.stem, path) for path in scan.files]
    for sub in scan.dirs:
        found.extend(_release_folder(folder, sub))
    return found


def _release_folder(folder: ModelFolder, sub: Path) -> list[tuple[str, Path]]:
    found = []
    for stem, suffix in _RELEASE_FILES.items():
        for ext in GAN_SUFFIXES:
            path = sub / f"{stem}{ext}"
            if not path.is_symlink() and not path.exists():
                continue
            problem = folder.check_file(path)
            if problem:
                log.warning("Skipped %s: %s", path, problem[1])
                continue
            found.append((sub.name + suffix, path))
            break
    return found


def find_generator_file(folder: Path, name: str, *, allow_external_links: bool = False) -> Path | None:
    """The file a registry name (``NAME``, ``NAME_AtoB``, ``NAME_BtoA``) or file name stands for in one kind's
    folder, found by the registry's own scan rules without hashing anything (for training's "continue from")."""
    for candidate, path in _candidates(ModelFolder(folder, allow_external_links=allow_external_links)):
        if name in (candidate, path.name):
            return path
    return None
