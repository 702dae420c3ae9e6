"""What runs where, in words: each device, the precision its models run in and why, its memory profile, and the
attention kernel and compiled UNet when the model manager reports them.

Shown under the checkpoint bar, returned by ``GET /studio/v1/runtime``, and logged at start. Reads only what the
managers already hold: never waits for a running job.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch

from webui.models.manager import ModelManager
from webui.models.precision import describe_precision, short_name

if TYPE_CHECKING:
    from webui.services.container import Services


@dataclass(frozen=True)
class DeviceRuntime:
    device: str               # the worker's device: "cpu", "cuda:0"
    name: str                 # what it is: "CPU (Intel Xeon)", "cuda:0 (NVIDIA H100 80GB HBM3)"
    dtype: str                # "fp16", "bf16" or "fp32", as --precision names them
    precision: str            # the dtype and, on a CPU, why: "bf16 (native AMX/AVX512-BF16)"
    profile: str              # the memory profile: "cpu", "full", "8gb", "4gb"
    attention: str | None     # the attention kernel, once the manager reports it
    compiled: bool | None     # whether the UNet runs torch.compile'd, once the manager reports it

    def describe(self) -> str:
        parts = [self.name, self.precision, f"profile {self.profile}"]
        if self.attention:
            parts.append(f"attention {self.attention}")
        if self.compiled:
            parts.append("compiled UNet")
        return " · ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.describe()}


def device_runtime(manager: ModelManager) -> DeviceRuntime:
    report = manager.memory_report()
    return DeviceRuntime(device=manager.owner.name, name=_device_name(manager.device), dtype=short_name(manager.dtype),
                         precision=describe_precision(manager.dtype, manager.device), profile=manager.profile,
                         attention=report.get("attention"), compiled=report.get("compiled"))


def resolved_precision(manager: ModelManager) -> str:
    """"fp16", "bf16" or "fp32": what ``--precision`` (possibly "auto") resolved to on this manager's device."""
    return short_name(manager.dtype)


def runtime(managers: tuple[ModelManager, ...]) -> list[DeviceRuntime]:
    return [device_runtime(manager) for manager in managers]


def describe_runtime(services: Services) -> str:
    """One line per worker, joined by "; ": "CPU (Intel Xeon) · bf16 (native AMX/AVX512-BF16) · profile cpu".
    With scale-out, generation runs on the Ray replicas: said first (their devices are in Settings > Cluster)."""
    local = "; ".join(device.describe() for device in runtime(services.devices))
    scale_out = services.settings.scale_out
    if scale_out is None:
        return local
    return (f"Ray Serve replicas at {scale_out.address} for generation (see Settings > Cluster); this process "
            f"(training, Extras, style transfer): {local}")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    label = "CPU" if device.index is None else f"CPU {device.index}"
    model = torch.cpu.get_capabilities().get("cpu_name")
    return f"{label} ({model})" if model else label
