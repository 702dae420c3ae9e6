"""Memory profiles: which of diffusers' memory savers a model gets on which device.

PyTorch SDPA attention is the default everywhere (diffusers uses it automatically); attention slicing on top of
SDPA is slower, so it is only used where memory is truly short (4 GB). VAE slicing/tiling keep large or batched
decodes bounded; model offload keeps only the running component on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GIB = 1024 ** 3


@dataclass(frozen=True)
class MemoryPlan:
    profile: str
    attention_slicing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    offload: str = "none"  # "none", "model" or "sequential"


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


def resolve_profile(requested: str, device: torch.device) -> str:
    if device.type == "cpu":
        return "cpu"
    if requested != "auto":
        return requested
    total = torch.cuda.get_device_properties(device).total_memory
    if total <= 4.5 * GIB:
        return "4gb"
    if total <= 10 * GIB:
        return "8gb"
    return "full"


def plan_for(profile: str, family: str) -> MemoryPlan:
    if profile == "cpu":
        return MemoryPlan(profile, vae_slicing=True)
    if profile == "full":
        return MemoryPlan(profile, vae_slicing=True)
    if profile == "8gb":
        # SD 1.x/2.x fit entirely (~2.6 GiB peak at 512²); SDXL's UNet + text encoders do not, so offload it.
        return MemoryPlan(profile, vae_slicing=True, vae_tiling=True,
                          offload="model" if family == "sdxl" else "none")
    if profile == "4gb":
        return MemoryPlan(profile, attention_slicing=True, vae_slicing=True, vae_tiling=True,
                          offload="sequential" if family == "sdxl" else "model")
    raise ValueError(f"unknown memory profile {profile!r}")


def apply_plan(pipe, plan: MemoryPlan, device: torch.device) -> None:
    """Place a CPU-loaded pipeline on ``device`` following ``plan``."""
    if plan.vae_slicing:
        pipe.vae.enable_slicing()
    if plan.vae_tiling:
        pipe.vae.enable_tiling()
    if plan.attention_slicing:
        pipe.enable_attention_slicing()
    if device.type == "cuda" and plan.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif device.type == "cuda" and plan.offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
