"""Images -> latents for sampling from an image (img2img, inpainting), with the decode path's fp16 safety net."""

from __future__ import annotations

import logging

import torch
from PIL import Image

from webui.pipelines import decode

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_images(runner, images: list[Image.Image], seeds: list[int]) -> torch.Tensor:
    """VAE latents (float32, scaled) of ``images``, one per seed, as A1111's ``images_tensor_to_samples``.

    Each image's latent is a sample of the VAE's posterior, drawn from a CPU generator seeded with its image's
    seed: the same request gives the same latents on any device (A1111 draws it from the global torch RNG).
    A low-precision VAE that overflows into NaN (SDXL's in fp16) encodes again with an fp32 copy; ``runner.vae``
    itself is never changed.
    """
    vae = runner.vae
    device = runner._execution_device
    pixels = runner.image_processor.preprocess(images).to(device)
    latents = _encode(vae, pixels, seeds)
    if torch.isnan(latents).any() and vae.dtype != torch.float32:
        log.warning("VAE encode produced NaNs in %s; encoding again with an fp32 copy", vae.dtype)
        latents = _encode(decode.fp32_copy(vae, device), pixels, seeds)
    return latents


def _encode(vae, pixels: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    pixels = pixels.to(vae.dtype)
    parts = []
    for image, seed in zip(pixels.split(1), seeds):
        posterior = vae.encode(image).latent_dist
        parts.append(posterior.sample(generator=torch.Generator("cpu").manual_seed(seed)).float())
    latents = torch.cat(parts)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor
