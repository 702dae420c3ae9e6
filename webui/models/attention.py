"""Which attention kernel a loaded checkpoint runs with (``--attention``).

- ``sdpa``: PyTorch's scaled_dot_product_attention (diffusers' ``AttnProcessor2_0``, its default): flash or
  memory-efficient kernels on CUDA, no extra package.
- ``xformers``: xformers' memory-efficient attention; only with the package installed and a CUDA device (diffusers
  refuses it otherwise). An optional extra, never required.
- ``slicing``: attention computed a slice of heads at a time with plain matmuls (diffusers' attention slicing,
  ``SlicedAttnProcessor``): least memory, slowest (23-45% more time per image on an H100 in ../shared/PERF.md and
  STACK-NOTES.md). Also what a memory plan asks for on the smallest cards, and the fallback where SDPA is missing.
- ``auto``: SDPA; when xformers is installed and the device is CUDA, both are timed when a checkpoint loads, on
  that UNet's largest self-attention (a few iterations at load) and the faster is kept, both times logged.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

log = logging.getLogger(__name__)

SDPA, XFORMERS, SLICING = "sdpa", "xformers", "slicing"
INSTALL_HINT = "pip install xformers (the build matching your torch), or use --attention auto or sdpa"


def xformers_installed() -> bool:
    if importlib.util.find_spec("xformers") is None:
        return False
    try:
        import xformers.ops  # noqa: F401 - a broken install (built for another torch) fails here
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable", said in the log
        log.warning("xformers is installed but does not import (%s); using PyTorch SDPA", exc)
        return False
    return True


def problem(choice: str, device: torch.device, xformers: bool | None = None) -> str | None:
    """Why ``choice`` cannot run on ``device`` (a sentence naming the fix), or None when it can."""
    if choice != XFORMERS:
        return None
    if device.type != "cuda":
        return f"--attention xformers needs a CUDA GPU (this worker runs on {device}); use --attention auto or sdpa"
    if not (xformers_installed() if xformers is None else xformers):
        return f"--attention xformers: xformers is not installed or does not import; {INSTALL_HINT}"
    return None


@dataclass(frozen=True)
class AttentionShape:
    """One attention call: (batch, tokens, heads, head width), what both kernels are timed on."""

    batch: int
    tokens: int
    heads: int
    head_dim: int


def largest_self_attention(unet: torch.nn.Module, batch: int = 2) -> AttentionShape | None:
    """The UNet's self-attention over the most tokens at its native size (the first down block that has any):
    where the attention kernel matters most. None when the UNet has no attention (a stub)."""
    sample = unet.config.sample_size
    sample = sample[0] if isinstance(sample, (list, tuple)) else sample
    for level, block in enumerate(unet.down_blocks):
        for name, module in block.named_modules():
            if name.endswith("attn1") and hasattr(module, "heads"):
                inner = module.to_q.out_features
                return AttentionShape(batch, (sample // 2 ** level) ** 2, module.heads, inner // module.heads)
    return None


Timer = Callable[[str, AttentionShape], float]


def time_kernel(kernel: str, shape: AttentionShape, device: torch.device, dtype: torch.dtype,
                iterations: int = 5) -> float:
    """Seconds per call of ``kernel`` on random q/k/v of ``shape`` (after one warm-up), on a CUDA device."""
    q, k, v = (torch.randn(shape.batch, shape.tokens, shape.heads, shape.head_dim, device=device, dtype=dtype)
               for _ in range(3))
    if kernel == XFORMERS:
        import xformers.ops

        def run() -> None:
            xformers.ops.memory_efficient_attention(q, k, v)
    else:
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # SDPA takes (batch, heads, tokens, width)

        def run() -> None:
            F.scaled_dot_product_attention(qt, kt, vt)
    run()
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iterations):
        run()
    torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iterations


def expected(choice: str, device: torch.device, xformers: bool | None = None) -> str:
    """What runs before any checkpoint is placed: the forced kernel, SDPA where "auto" has nothing to time
    (no CUDA or no xformers), else "auto" (timed at load; the memory plan may still ask for slicing)."""
    if choice != "auto":
        return choice
    if device.type != "cuda" or not (xformers_installed() if xformers is None else xformers):
        return SDPA
    return choice


def choose(choice: str, device: torch.device, unet: torch.nn.Module, *, memory_short: bool = False,
           xformers: bool | None = None, timer: Timer | None = None) -> str:
    """The kernel to run: ``choice`` when forced (see ``problem`` for the ones that cannot run), else "auto"'s
    pick: slicing when the memory plan says memory is short (``memory_short``) or SDPA is missing. ``xformers``/
    ``timer``: whether xformers imports and how a kernel is timed (defaults: ask / measure)."""
    if choice in (SDPA, XFORMERS, SLICING):
        return choice
    if memory_short or not hasattr(F, "scaled_dot_product_attention"):
        return SLICING
    if device.type != "cuda" or not (xformers_installed() if xformers is None else xformers):
        return SDPA
    shape = largest_self_attention(unet)
    if shape is None:
        return SDPA
    if timer is None:
        def timer(kernel: str, at: AttentionShape) -> float:
            return time_kernel(kernel, at, device, unet.dtype)
    try:
        times = {kernel: timer(kernel, shape) for kernel in (SDPA, XFORMERS)}
    except Exception as exc:  # noqa: BLE001 - a failing optional kernel must not stop the load
        log.warning("Timing xformers failed (%s); using PyTorch SDPA", exc)
        return SDPA
    best = min(times, key=times.get)
    log.info("Attention on %s: SDPA %.2f ms, xformers %.2f ms per call at %s; using %s", device,
             times[SDPA] * 1e3, times[XFORMERS] * 1e3, shape, best)
    return best


def apply(pipe, kernel: str) -> None:
    """Set ``kernel`` on every attention of the pipeline's UNet and VAE (the text encoders are transformers
    models, which use SDPA themselves)."""
    if kernel == SLICING:
        pipe.enable_attention_slicing()
    elif kernel == XFORMERS:
        pipe.enable_xformers_memory_efficient_attention()
    else:  # diffusers' default on a fresh model; set anyway, in case a memory plan had asked for slicing
        for model in (pipe.unet, pipe.vae):
            model.set_attn_processor(AttnProcessor2_0())
