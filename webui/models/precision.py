"""Which floating-point precision the models run in on a CPU, and how to say so.

A CPU with native bf16 (Intel AMX or AVX512-BF16; Arm's BF16 through oneDNN's Arm Compute Library) runs bf16
matmuls and convolutions in hardware, about twice as fast as fp32 with half the memory. Without it bf16 is emulated
and no faster than fp32. fp16 is never used on a CPU: PyTorch has few fast fp16 CPU kernels, so it is slower
than fp32 there.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch

# torch.cpu.get_capabilities() keys meaning bf16 runs in hardware, with the name users see.
_X86_BF16 = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX512-BF16"))
_ARM_BF16 = (("bf16", "Arm BF16"), ("sve_bf16", "SVE BF16"))

_SHORT = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def bf16_features(capabilities: Mapping[str, object], *, arm_kernels: bool = False) -> tuple[str, ...]:
    """The native bf16 features named in ``capabilities`` (a ``torch.cpu.get_capabilities()`` mapping). Arm's
    count only with ``arm_kernels`` (oneDNN built with the Arm Compute Library): without it PyTorch emulates."""
    known = _X86_BF16 + (_ARM_BF16 if arm_kernels else ())
    return tuple(label for key, label in known if capabilities.get(key) is True)


@functools.cache  # the CPU does not change while the process runs; asking cpuinfo once is enough
def cpu_bf16_features() -> tuple[str, ...]:
    """This CPU's native bf16 features as PyTorch sees them ("AMX", "AVX512-BF16"...); empty when it has none,
    or when PyTorch lacks oneDNN (which runs the bf16 convolutions and matmuls)."""
    if not torch.backends.mkldnn.is_available():
        return ()
    return bf16_features(torch.cpu.get_capabilities(), arm_kernels=torch.backends.mkldnn.is_acl_available())


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 in hardware (so bf16 is faster than fp32 here)."""
    return bool(cpu_bf16_features())


def cpu_dtype(precision: str, native: bool | None = None) -> torch.dtype:
    """The dtype for ``--precision`` on a CPU: auto = bf16 where the CPU has native bf16 (``native``; None asks
    this CPU), else fp32. fp16 raises ValueError: it is slower than fp32 on a CPU."""
    if precision == "fp16":
        raise ValueError("--precision fp16 does not run on a CPU (PyTorch's fp16 CPU kernels are slower than fp32); "
                         "use --precision bf16 or fp32, or auto")
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp32":
        return torch.float32
    if precision != "auto":
        raise ValueError(f"unknown precision {precision!r} (auto, fp16, bf16 or fp32)")
    return torch.bfloat16 if (cpu_bf16_native() if native is None else native) else torch.float32


def short_name(dtype: torch.dtype) -> str:
    """"fp16", "bf16" or "fp32", as ``--precision`` names them (else torch's name)."""
    return _SHORT.get(dtype, str(dtype).removeprefix("torch."))


def describe_precision(dtype: torch.dtype, device: torch.device,
                       features: tuple[str, ...] | None = None) -> str:
    """The precision and, on a CPU, why: "bf16 (native AMX/AVX512-BF16)", "fp32 (this CPU has no native bf16)".
    ``features``: the CPU's native bf16 features (None asks this CPU)."""
    name = short_name(dtype)
    if device.type != "cpu":
        return name
    features = cpu_bf16_features() if features is None else features
    native = "/".join(features)
    if dtype == torch.bfloat16:
        return f"{name} (native {native})" if native else f"{name} (emulated: this CPU has no native bf16)"
    if dtype == torch.float32:
        return f"{name} (as asked; this CPU has native bf16: {native})" if native else \
            f"{name} (this CPU has no native bf16)"
    return name
