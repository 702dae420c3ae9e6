"""CycleGAN and pix2pix training settings (torch-free, so the UI may import them).

Defaults are the pytorch-CycleGAN-and-pix2pix release's (``options/base_options.py``, ``train_options.py`` and
each model's ``modify_commandline_options``): CycleGAN ResNet-9 + instance norm + LSGAN + cycle 10 + identity 0.5
+ image pool 50; pix2pix U-Net-256 + batch norm + vanilla GAN + L1 100 + dropout, no pool. Both: Adam lr 0.0002,
beta1 0.5, load 286 -> random crop 256, horizontal flip, constant lr for ``n_epochs`` then linear decay to zero
over ``n_epochs_decay``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

from webui.errors import InvalidRequest
from webui.training.request_fields import check_output_name, check_range, from_mapping

NetG = Literal["resnet_9blocks", "resnet_6blocks", "unet_256", "unet_128", "unet_64", "unet_32"]
Norm = Literal["instance", "batch", "none"]
GanMode = Literal["lsgan", "vanilla"]
Direction = Literal["AtoB", "BtoA"]

NET_G_CHOICES: tuple[str, ...] = ("resnet_9blocks", "resnet_6blocks", "unet_256", "unet_128", "unet_64", "unet_32")
UNET_DOWNS = {"unet_256": 8, "unet_128": 7, "unet_64": 6, "unet_32": 5}
RESNET_BLOCKS = {"resnet_9blocks": 9, "resnet_6blocks": 6}
MAX_SIZE = 2048
MAX_EPOCHS = 10_000
MAX_STEPS = 10_000_000


def size_multiple(net_g: str) -> int:
    """Sizes the generator accepts are multiples of this (two stride-2 downs for ResNet; 2**downs for U-Net)."""
    return 2 ** UNET_DOWNS[net_g] if net_g in UNET_DOWNS else 4


@dataclass(frozen=True)
class GanTrainRequest:
    """Settings both GAN methods share. Folders are relative to the data dir (or absolute inside it)."""

    name: str                       # output: models/<CycleGAN|pix2pix>/<name>/
    overwrite: bool = False
    init_from: str = ""             # continue from a generator in the method's folder (its name there), "" = scratch
    net_g: NetG = "resnet_9blocks"
    ngf: int = 64
    ndf: int = 64
    n_layers_d: int = 3
    norm: Norm = "instance"
    gan_mode: GanMode = "lsgan"
    load_size: int = 286
    crop_size: int = 256
    flip: bool = True
    batch_size: int = 1
    n_epochs: int = 100
    n_epochs_decay: int = 100
    steps: int = 0                  # > 0: stop after this many steps instead of the epochs' total
    lr: float = 0.0002
    beta1: float = 0.5
    seed: int = 0
    save_every: int = 0             # a resume state every N steps (0 = only at the end); the runner writes it
    sample_every: int = 100         # sample images every N steps (0 = never)

    def __post_init__(self) -> None:
        check_output_name(self.name)
        check_range("ngf", self.ngf, 1, 256)
        check_range("ndf", self.ndf, 1, 256)
        check_range("n_layers_d", self.n_layers_d, 1, 6)
        check_range("load_size", self.load_size, 1, MAX_SIZE)
        check_range("crop_size", self.crop_size, 1, MAX_SIZE)
        if self.crop_size > self.load_size:
            raise InvalidRequest("crop_size", f"{self.crop_size} is larger than load_size {self.load_size}")
        multiple = size_multiple(self.net_g)
        if self.crop_size % multiple:
            raise InvalidRequest("crop_size", f"must be a multiple of {multiple} for {self.net_g} "
                                 f"(got {self.crop_size})")
        check_range("batch_size", self.batch_size, 1, 64)
        check_range("n_epochs", self.n_epochs, 0, MAX_EPOCHS)
        check_range("n_epochs_decay", self.n_epochs_decay, 0, MAX_EPOCHS)
        check_range("steps", self.steps, 0, MAX_STEPS)
        if self.steps == 0 and self.n_epochs + self.n_epochs_decay == 0:
            raise InvalidRequest("n_epochs", "train for at least one epoch (or set steps)")
        check_range("lr", self.lr, 1e-8, 1.0)
        if self.lr <= 0:
            raise InvalidRequest("lr", "must be above 0")
        check_range("beta1", self.beta1, 0.0, 0.999)
        check_range("seed", self.seed, 0, 2**32 - 1)
        check_range("save_every", self.save_every, 0, MAX_STEPS)
        check_range("sample_every", self.sample_every, 0, MAX_STEPS)


@dataclass(frozen=True)
class CycleGanRequest(GanTrainRequest):
    """Two unpaired folders: A and B. G_A translates A -> B, G_B translates B -> A."""

    dataset_a: str = ""
    dataset_b: str = ""
    lambda_a: float = 10.0          # cycle loss A -> B -> A
    lambda_b: float = 10.0          # cycle loss B -> A -> B
    lambda_identity: float = 0.5    # identity loss, as a fraction of lambda_a / lambda_b
    pool_size: int = 50

    def __post_init__(self) -> None:
        super().__post_init__()
        for field in ("dataset_a", "dataset_b"):
            if not getattr(self, field).strip():
                raise InvalidRequest(field, "enter the folder of the domain's images")
        for field in ("lambda_a", "lambda_b", "lambda_identity"):
            check_range(field, getattr(self, field), 0.0, 1000.0)
        check_range("pool_size", self.pool_size, 0, 1000)


@dataclass(frozen=True)
class Pix2PixRequest(GanTrainRequest):
    """Paired images: one folder of A|B side-by-side images, or two folders with matching file names."""

    net_g: NetG = "unet_256"
    norm: Norm = "batch"
    gan_mode: GanMode = "vanilla"
    dataset: str = ""               # A|B side by side (the release's aligned layout)
    dataset_a: str = ""             # or two folders with the same file names
    dataset_b: str = ""
    direction: Direction = "AtoB"
    lambda_l1: float = 100.0
    dropout: bool = True
    pool_size: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        paired = bool(self.dataset_a.strip() or self.dataset_b.strip())
        if self.dataset.strip() and paired:
            raise InvalidRequest("dataset", "give either one folder of A|B images or two folders A and B, not both")
        if not self.dataset.strip() and not paired:
            raise InvalidRequest("dataset", "enter a folder of A|B side-by-side images (or two folders A and B)")
        if paired:
            for field in ("dataset_a", "dataset_b"):
                if not getattr(self, field).strip():
                    raise InvalidRequest(field, "enter the folder (two folders A and B with matching file names)")
        check_range("lambda_l1", self.lambda_l1, 0.0, 10_000.0)
        check_range("pool_size", self.pool_size, 0, 1000)


def cyclegan_from_dict(body: Mapping[str, Any]) -> CycleGanRequest:
    return from_mapping(CycleGanRequest, body)


def pix2pix_from_dict(body: Mapping[str, Any]) -> Pix2PixRequest:
    return from_mapping(Pix2PixRequest, body)
