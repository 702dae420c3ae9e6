"""``--compile``: the UNet compiled with torch.compile, its kernels cached on disk across restarts.

On CUDA the mode is "reduce-overhead" (Inductor kernels replayed as CUDA graphs: the eager SD1.5 UNet is bound by
kernel launches, and graphs gave 3.0x on its forward in ../shared/PERF.md; not measured with this code yet). CUDA
graphs need static shapes, so each new size or batch compiles once (``dynamic=False``: no slower dynamic kernels).
Elsewhere the mode is torch's default.

The UNet is compiled in place (``nn.Module.compile``): the pipeline, LoRA targets and hooks keep seeing the same
module, and since weights are inputs of the compiled graph (not constants), LoRAs applied in place for a job
(webui/pipelines/lora_apply.py) are used by the compiled UNet without recompiling. One warm-up forward at the
model's native size compiles at load: a failure there is logged and the UNet stays eager.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # torch's documented variable for Inductor's on-disk caches (FX graphs,
# autotuning, Triton kernels); read when a compile needs it, so setting it before the first compile is enough.


def use_cache_dir(directory: Path) -> Path:
    """Keep compiled kernels in ``directory`` (unless the user already set TORCHINDUCTOR_CACHE_DIR, which wins).
    Returns the directory in use."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = str(directory)
    return directory


def compile_mode(device: torch.device) -> str:
    return "reduce-overhead" if device.type == "cuda" else "default"


def is_compiled(module: torch.nn.Module) -> bool:
    """Whether ``module`` was compiled in place (``nn.Module.compile`` keeps the compiled call here)."""
    return getattr(module, "_compiled_call_impl", None) is not None


def _uncompile(module: torch.nn.Module) -> None:
    module._compiled_call_impl = None  # the inverse of nn.Module.compile, which has no public undo


def compile_unet(unet: torch.nn.Module, device: torch.device, *, text_embeds_dim: int | None = None,
                 warm_up: bool = True, backend: str = "inductor") -> bool:
    """Compile ``unet`` in place and run one warm-up forward (batch 2, the native size) so that compiling happens
    at load. Returns whether the UNet now runs compiled; on any failure it stays eager, with a warning.
    ``text_embeds_dim``: SDXL's pooled text width (its second text encoder's projection), for the warm-up's
    inputs. ``backend``: torch.compile's; the app uses Inductor, tests "aot_eager" (same tracing, no code made)."""
    try:
        if backend == "inductor":
            unet.compile(mode=compile_mode(device), dynamic=False)
        else:
            unet.compile(backend=backend, dynamic=False)
        if warm_up:
            with torch.inference_mode():  # as the pipelines call it: (sample, timestep, **kwargs), in inference mode
                inputs = dummy_inputs(unet, device, text_embeds_dim=text_embeds_dim)
                unet(inputs.pop("sample"), inputs.pop("timestep"), **inputs)
    except Exception as exc:  # noqa: BLE001 - compiling is an optimisation: any failure means "run eager"
        _uncompile(unet)
        log.warning("torch.compile of the UNet failed, running it eager: %s: %s", type(exc).__name__, exc)
        return False
    return True


def dummy_inputs(unet: torch.nn.Module, device: torch.device, batch: int = 2,
                 text_embeds_dim: int | None = None) -> dict:
    """UNet inputs of the right shapes (a CFG batch at the native size) for the warm-up forward. SDXL's pooled
    width is ``text_embeds_dim`` (default 1280, OpenCLIP-bigG's); its size/crop ids fill the rest of the added
    embedding: 6 for the base model, 5 for the refiner (which adds an aesthetic score instead of a target size)."""
    config = unet.config
    sample = config.sample_size
    height, width = (sample, sample) if isinstance(sample, int) else sample
    dtype = unet.dtype
    inputs = {"sample": torch.randn(batch, config.in_channels, height, width, device=device, dtype=dtype),
              # a float timestep, as the k-diffusion samplers (A1111's, the default) pass it: another type compiles
              # once more at the first job that uses it (torch guards on input dtypes)
              "timestep": torch.tensor(999.0, device=device),
              "encoder_hidden_states": torch.randn(batch, 77, config.cross_attention_dim, device=device, dtype=dtype),
              "return_dict": False}
    if config.addition_embed_type == "text_time":
        pooled = text_embeds_dim or 1280
        ids = (config.projection_class_embeddings_input_dim - pooled) // config.addition_time_embed_dim
        inputs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, pooled, device=device, dtype=dtype),
                                       "time_ids": torch.zeros(batch, ids, device=device, dtype=dtype)}
    return inputs
