"""Latents -> images: the cheap live preview, and the real VAE decode with its two safety nets.

fp16 VAEs (notably SDXL's) can overflow into NaN and give black images: detect that and decode again in fp32.
A decode that runs out of GPU memory is retried tiled before giving up with a clear message.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from webui.errors import OutOfMemory

log = logging.getLogger(__name__)

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
    """Decode with NaN fallback to fp32 and an out-of-memory retry with tiling."""
    try:
        images = _decode(vae, latents)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        if getattr(vae, "use_tiling", False):
            raise OutOfMemory(_oom_message(latents)) from None
        log.warning("Out of memory in VAE decode; retrying tiled")
        vae.enable_tiling()
        try:
            images = _decode(vae, latents)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise OutOfMemory(_oom_message(latents)) from None
        finally:
            vae.disable_tiling()
    if torch.isnan(images).any() and vae.dtype != torch.float32:
        log.warning("VAE produced NaNs in %s; decoding again in fp32", vae.dtype)
        dtype = vae.dtype
        vae.to(torch.float32)
        try:
            images = _decode(vae, latents.float())
        finally:
            vae.to(dtype)
    return images


def _decode(vae, latents: torch.Tensor) -> torch.Tensor:
    scaled = latents.to(vae.dtype) / vae.config.scaling_factor
    return vae.decode(scaled.to(vae.device), return_dict=False)[0]


def _oom_message(latents: torch.Tensor) -> str:
    h, w = latents.shape[-2] * 8, latents.shape[-1] * 8
    return (f"Out of GPU memory while decoding {latents.shape[0]} image(s) of {w}x{h}, even tiled. "
            "Lower the size or batch size, or start with --memory-profile 4gb.")
