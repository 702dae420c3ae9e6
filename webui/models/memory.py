"""Memory profiles: where each part of a checkpoint lives on which device, and which savers it gets.

PyTorch SDPA attention is the default everywhere (see webui/models/attention.py); attention slicing on top of SDPA
is slower (23-45% per image on an H100, ../shared/PERF.md), so a plan asks for it only where memory is shortest. What a plan
keeps where, by profile (the GPU parts are written from diffusers'/accelerate's documented APIs and PERF.md's
figures; this module's own CUDA behaviour has not been measured on a GPU yet):

- ``full``: everything resident on the GPU; VAE slicing (batches decode one image at a time).
- ``8gb``: SD1.x/2.x everything resident (about 2.6 GiB at 512²); SDXL keeps the UNet and VAE resident and the
  text encoders in RAM, visiting the GPU for the prompt encode (webui/models/offload.py). The VAE decode is tiled
  only for images over 1024 px a side, or over 512 px when less than ``TIGHT_8GB_GIB`` is free (a real 8 GB card
  after its CUDA context); an out-of-memory decode is retried tiled (webui/pipelines/decode.py).
- ``4gb``: SD1.x/2.x keep the UNet and VAE resident with the text encoder visiting, VAE tiled over 512 px;
  SDXL runs with diffusers' sequential CPU offload and attention slicing, VAE tiled over 512 px.
- ``cpu``: everything in RAM; VAE slicing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from webui.models import offload

GIB = 1024 ** 3

# "auto" on a GPU: thresholds on the memory FREE when the checkpoint loads (not the card's size: another process or
# the training weights may hold part of it). SDXL needs ~11.5 GiB with everything resident (PERF.md), 7.45 GiB
# with its text encoders off the GPU; SD1.x/2.x ~2.6 GiB at 512² and 4.4 GiB at 1024².
AUTO_THRESHOLDS_GIB = {"sdxl": (12.0, 6.5), "default": (6.0, 3.5)}  # family: (full from, 8gb from); else 4gb
TIGHT_8GB_GIB = 7.5  # 8gb with less than this free: tile the VAE decode from 1024² on (not only from 1536²)


@dataclass(frozen=True)
class MemoryPlan:
    """What a profile keeps where. ``text_encoders``: "device" (resident) or "visit" (in RAM, on the GPU only
    for the prompt encode). ``vae_tile_over``: tile the VAE decode/encode of images larger than this many pixels
    a side, in tiles of that size (None: never)."""

    profile: str
    attention_slicing: bool = False
    vae_slicing: bool = False
    vae_tile_over: int | None = None
    offload: str = "none"  # "none" or "sequential" (diffusers' sequential CPU offload)
    text_encoders: str = "device"

    @property
    def vae_tiling(self) -> bool:
        return self.vae_tile_over is not None


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def resolve_devices(requested: str) -> list[torch.device]:
    """``--device``: "auto", "cpu", "cuda", or a comma-separated list ("cuda:0,cuda:1"; "cpu:0,cpu:1" gives two CPU
    workers, for tests). One worker runs per device. Raises ValueError naming a device that is not there."""
    parts = [part.strip() for part in requested.split(",") if part.strip()] or ["auto"]
    devices: list[torch.device] = []
    for part in parts:
        if part == "auto":
            device = resolve_device("auto")
        else:
            try:
                device = torch.device(part)
            except RuntimeError:
                raise ValueError(f"unknown device {part!r} (use cpu, cuda, cuda:N or a comma-separated list)") \
                    from None
            if device.type not in ("cpu", "cuda"):
                raise ValueError(f"unsupported device {part!r}: this build runs on cpu and cuda")
            if device.type == "cuda":
                count = torch.cuda.device_count() if torch.cuda.is_available() else 0
                if (device.index or 0) >= count:
                    raise ValueError(f"{part}: this machine has {count} CUDA device(s)")
        if device in devices:
            raise ValueError(f"{part} is listed twice")
        devices.append(device)
    return devices


def resolve_dtype(precision: str, device: torch.device, native: bool | None = None) -> torch.dtype:
    """auto = fp16 on CUDA; on a CPU bf16 where it has native bf16 (``native``; None asks this CPU), else fp32.
    fp16 on a CPU raises ValueError (see webui/models/precision.py)."""
    if device.type == "cpu":
        from webui.models.precision import cpu_dtype

        return cpu_dtype(precision, native)
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return torch.float32
    return torch.float16


def auto_profile(free_bytes: int, family: str) -> str:
    """The profile "auto" picks for a checkpoint of ``family`` on a GPU with ``free_bytes`` free."""
    full_from, eight_from = AUTO_THRESHOLDS_GIB["sdxl" if family.startswith("sdxl") else "default"]
    free_gib = free_bytes / GIB
    if free_gib >= full_from:
        return "full"
    if free_gib >= eight_from:
        return "8gb"
    return "4gb"


def resolve_profile(requested: str, device: torch.device) -> str:
    """The profile a manager on ``device`` reports: "cpu" on a CPU, else the one asked for. "auto" on a GPU stays
    "auto" here: each checkpoint's plan is chosen from the free memory when it loads (``plan_for_load``)."""
    if device.type == "cpu":
        return "cpu"
    return requested


def device_free_bytes(device: torch.device) -> int | None:
    """Free memory on a CUDA device (what the driver says, other processes included), and no more than this
    process may still take under ``torch.cuda.set_per_process_memory_fraction`` (benchmarks simulate smaller
    cards with it; memory cached by PyTorch counts as ours); None on a CPU."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    ours_cached = torch.cuda.memory_reserved(device) - allocated  # free to us, though not to the driver
    allowed = int(total * torch.cuda.get_per_process_memory_fraction(device)) - allocated
    return max(0, min(free + ours_cached, allowed))


def plan_for_load(profile: str, family: str, device: torch.device, free: int | None = None) -> MemoryPlan:
    """The plan for a checkpoint being placed now: "auto" resolved from the free memory (``free``, else asked
    of the device), then ``plan_for``."""
    if device.type == "cpu":
        return plan_for("cpu", family)
    if free is None:
        free = device_free_bytes(device)
    if profile == "auto":
        profile = auto_profile(free, family)
    return plan_for(profile, family, free)


def plan_for(profile: str, family: str, free: int | None = None) -> MemoryPlan:
    """The plan of ``profile`` for ``family`` ("sd1", "sd2", "sdxl"...); ``free``: bytes free on the GPU, which
    tightens the 8gb plan on a real 8 GB card."""
    xl = family.startswith("sdxl")
    if profile in ("cpu", "full"):
        return MemoryPlan(profile, vae_slicing=True)
    if profile == "8gb":
        tight = free is not None and free < TIGHT_8GB_GIB * GIB
        if not xl:  # SD 1.x/2.x fit entirely: no saver that costs time unless the image is large
            return MemoryPlan(profile, vae_slicing=True, vae_tile_over=1024)
        # SDXL: UNet (4.8 GiB fp16) + VAE resident, text encoders (1.6 GiB) visit: 1.21x of uncapped in PERF.md,
        # against 2.4x for diffusers' model offload.
        return MemoryPlan(profile, vae_slicing=True, vae_tile_over=512 if tight else 1024, text_encoders="visit")
    if profile == "4gb":
        if not xl:
            return MemoryPlan(profile, vae_slicing=True, vae_tile_over=512, text_encoders="visit")
        return MemoryPlan(profile, attention_slicing=True, vae_slicing=True, vae_tile_over=512, offload="sequential")
    raise ValueError(f"unknown memory profile {profile!r}")


def apply_plan(pipe, plan: MemoryPlan, device: torch.device) -> None:
    """Place a CPU-loaded pipeline on ``device`` following ``plan``. On a CPU everything stays in RAM (offload
    and visits need an accelerator); the VAE savers apply everywhere."""
    if plan.vae_slicing:
        pipe.vae.enable_slicing()
    if plan.vae_tiling:
        set_vae_tiling(pipe.vae, plan.vae_tile_over)
    if plan.attention_slicing:
        pipe.enable_attention_slicing()
    if device.type == "cuda" and plan.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
        return
    encoders = [m for m in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None))
                if m is not None]
    visiting = device.type != "cpu" and plan.text_encoders == "visit" and encoders
    staying = {id(m) for m in encoders} if visiting else set()
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module) and id(component) not in staying:
            component.to(device)
    if visiting:
        offload.TextEncoderVisits(encoders, pipe.unet, device)


def set_vae_tiling(vae, tile_over: int | None) -> None:
    """Tile ``vae``'s decode/encode for images larger than ``tile_over`` pixels a side, in tiles of that size
    (None: off). diffusers' own default tile is the VAE's sample size (1024 for SDXL's): too large for 4 GB."""
    if tile_over is None:
        vae.disable_tiling()
        return
    vae.enable_tiling()
    # diffusers' tile-size attributes (AutoencoderKL.__init__ sets them from its config)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.tile_sample_min_size = tile_over
    vae.tile_latent_min_size = tile_over // factor
