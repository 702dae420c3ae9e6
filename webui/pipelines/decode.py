"""Latents -> images: the cheap live preview, and the real VAE decode with its two safety nets.

fp16 VAEs (notably SDXL's) can overflow into NaN and give black images: detect that and decode again in fp32.
A decode that runs out of GPU memory is retried tiled before giving up with a clear message. Both nets leave
the shared VAE exactly as they found it.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from accelerate import init_empty_weights
from diffusers.utils.accelerate_utils import apply_forward_hook
from PIL import Image

from webui.errors import OutOfMemory

log = logging.getLogger(__name__)

RETRY_TILE = 512  # pixels a side of the tiles an out-of-memory decode is retried with

# A1111's "Approx cheap" latent -> RGB factors: a linear map, no network, fast enough for every few steps.
_SD_FACTORS = torch.tensor([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173],
                            [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]])
_SDXL_FACTORS = torch.tensor([[0.3448, 0.4168, 0.4395], [-0.1953, -0.0290, 0.0250],
                              [0.1074, 0.0886, -0.0163], [-0.3730, -0.2499, -0.2088]])


def cheap_preview(latents: torch.Tensor, family: str) -> Image.Image:
    """First image of a latent batch as a small RGB picture (1/8 of the final size)."""
    factors = _SDXL_FACTORS if family == "sdxl" else _SD_FACTORS
    latent = latents[0, :4].detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", latent, factors)
    array = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(array)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """VAE output in [-1, 1], NCHW -> PIL images."""
    array = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    array = array.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in array]


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Decode with an out-of-memory retry in tiles, and a fp32 re-decode when a low-precision VAE gives NaNs.

    Neither fallback changes ``vae``: it is the loaded model's, borrowed from the model manager and possibly in use
    by another job at the same time. The tiled retry calls ``tiled_decode`` directly instead of switching tiling
    on, and the fp32 re-decode runs on a separate fp32 copy that is dropped afterwards.
    """
    if latents.shape[0] == 0:  # a batch stopped before its first step: nothing to decode
        return torch.empty(0, 3, 1, 1)
    images = _decode_or_tile(vae, latents)
    if torch.isnan(images).any() and vae.dtype != torch.float32:
        log.warning("VAE produced NaNs in %s; decoding again with an fp32 copy", vae.dtype)
        fp32_vae = fp32_copy(vae, latents.device)
        try:
            images = _decode_or_tile(fp32_vae, latents.float())
        finally:
            del fp32_vae
            _release_cached_memory(latents.device)
    return images


def _decode_or_tile(vae, latents: torch.Tensor) -> torch.Tensor:
    try:
        return _decode(vae, latents)
    except torch.cuda.OutOfMemoryError:
        _release_cached_memory(latents.device)
        if getattr(vae, "use_tiling", False) and vae.tile_sample_min_size <= RETRY_TILE:  # nothing smaller to try
            raise OutOfMemory(_oom_message(latents)) from None
    log.warning("Out of memory in VAE decode; retrying tiled")
    try:
        return _decode_tiled(vae, latents)
    except torch.cuda.OutOfMemoryError:
        _release_cached_memory(latents.device)
        raise OutOfMemory(_oom_message(latents)) from None


def _decode(vae, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode(_scaled(vae, latents), return_dict=False)[0]


def _decode_tiled(vae, latents: torch.Tensor) -> torch.Tensor:
    # One image at a time, tile by tile: what enable_slicing() + enable_tiling() would do, without setting either
    # flag on the shared model. tiled_decode is not wrapped in diffusers' offload hook as decode() is, so apply
    # it here: with model CPU offload the VAE only moves to the GPU in that hook. Tiles are RETRY_TILE pixels for
    # the retry (a memory plan may have set larger ones, which just ran out), restored afterwards: the job holds
    # the model alone while it runs.
    tiled_decode = apply_forward_hook(type(vae).tiled_decode)
    saved = vae.tile_sample_min_size, vae.tile_latent_min_size
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.tile_sample_min_size, vae.tile_latent_min_size = min(saved[0], RETRY_TILE), min(saved[1], RETRY_TILE // factor)
    try:
        return torch.cat([tiled_decode(vae, z, return_dict=False)[0] for z in _scaled(vae, latents).split(1)])
    finally:
        vae.tile_sample_min_size, vae.tile_latent_min_size = saved


def _scaled(vae, latents: torch.Tensor) -> torch.Tensor:
    return (latents.to(vae.dtype) / vae.config.scaling_factor).to(vae.device)


def fp32_copy(vae, device: torch.device):
    """An fp32 twin of ``vae`` on ``device``. Built from the config and the weights rather than deepcopy: a VAE
    under model CPU offload carries accelerate hooks that reference the pipeline's other models."""
    with init_empty_weights(include_buffers=False):
        twin = type(vae).from_config(vae.config)
    weights = {name: tensor.to(device=device, dtype=torch.float32) if tensor.is_floating_point()
               else tensor.to(device) for name, tensor in vae.state_dict().items()}
    twin.load_state_dict(weights, strict=True, assign=True)
    twin.use_slicing = getattr(vae, "use_slicing", False)  # the twin is ours alone: copying the flags is safe
    twin.use_tiling = getattr(vae, "use_tiling", False)
    return twin.eval()


def _release_cached_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _oom_message(latents: torch.Tensor) -> str:
    h, w = latents.shape[-2] * 8, latents.shape[-1] * 8
    return (f"Out of GPU memory while decoding {latents.shape[0]} image(s) of {w}x{h}, even tiled. "
            "Lower the size or batch size, or start with --memory-profile 4gb.")
