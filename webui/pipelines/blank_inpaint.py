"""txt2img with an inpainting checkpoint, as A1111 runs it: the whole (blank) image is the area to paint.

A1111's ``txt2img_image_conditioning`` gives a 9-channel inpainting UNet, besides the 4 noisy latent channels, a
mask of ones (everything is repainted) and the latents of an all-0.5-grey image (the "masked image": nothing of
it is kept). :class:`BlankInpaintUNet` appends those 5 channels to every call of the job's UNet, so the txt2img
pipeline, its exact k-diffusion samplers and its callbacks run unchanged on a 4-channel view of the model.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import FrozenDict


@torch.no_grad()
def blank_conditioning(vae, height: int, width: int) -> torch.Tensor:
    """[1, 5, h, w]: the mask (ones) then the scaled latents of a 0.5-grey image (0 in the VAE's [-1, 1] range).

    A1111 samples the VAE's posterior with the global RNG; the posterior's mean is used here, so the image does
    not depend on RNG state (its spread is tiny for the SD VAEs).
    """
    param = next(vae.parameters())
    grey = torch.zeros((1, 3, height, width), device=param.device, dtype=param.dtype)
    latents = vae.encode(grey).latent_dist.mean * vae.config.scaling_factor
    mask = torch.ones_like(latents[:, :1])
    return torch.cat([mask, latents], dim=1)


class BlankInpaintUNet(torch.nn.Module):
    """A 9-channel inpainting UNet seen as a 4-channel one: each call gets ``conditioning`` appended.

    Holds the loaded UNet (the model manager's; nothing is copied or moved) for one job's pipeline object.
    """

    def __init__(self, unet: torch.nn.Module, conditioning: torch.Tensor):
        super().__init__()
        self.inner = unet
        self.register_buffer("conditioning", conditioning, persistent=False)
        self.config = FrozenDict({**unet.config, "in_channels": unet.config.in_channels - conditioning.shape[1]})

    @property
    def dtype(self) -> torch.dtype:
        return self.inner.dtype

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def forward(self, sample: torch.Tensor, timestep, *args, **kwargs):
        extra = self.conditioning.to(sample.device, sample.dtype).expand(sample.shape[0], -1, -1, -1)
        return self.inner(torch.cat([sample, extra], dim=1), timestep, *args, **kwargs)
