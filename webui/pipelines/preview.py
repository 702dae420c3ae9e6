"""The live preview: which steps show one, what it shows, and how it is drawn at the output's size.

A1111's options decide it: ``live_previews_enable``, ``show_progress_every_n_steps`` (every N sampling steps;
-1: once per finished batch, 0: never), ``show_progress_type`` ("Approx cheap": a linear latent -> RGB map, no
network, the default; "TAESD": madebyollin's tiny decoder from ``models/VAE-approx``, close to the real image at a
small fraction of a VAE decode, Approx cheap when its files are missing; "Full": the real VAE decode, costly but
exact) and ``live_preview_content`` ("Combined": the denoised prediction of the sampler after CFG). The picture is
resized (bilinear) to the image's pixel size, so the UI and ``/sdapi/v1/progress`` show it at the size the output
will have. Whether a preview is drawn at all is the job's business: only while someone watches it
(webui/services/jobs.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch
from PIL import Image

from webui.models.device import DeviceOwner
from webui.pipelines import decode

APPROX_CHEAP = "Approx cheap"
FULL = "Full"
TAESD = "TAESD"
METHODS = (APPROX_CHEAP, FULL, TAESD)
COMBINED = "Combined"
CONTENTS = (COMBINED,)
AFTER_BATCH = -1  # A1111's "-1 = only show after completion of batch"

TinyDecoders = Callable[[str, DeviceOwner], "torch.nn.Module | None"]
"""(family, device owner) -> the TAESD decoder resident on that device, or None (no usable weights)."""


@dataclass(frozen=True)
class PreviewSettings:
    """How one job previews; built per job from the options, so a change applies to the next job.

    ``tiny_decoders`` finds TAESD decoders (webui/models/preview_decoders.py); ``owner`` is the device the job runs
    on (``on(owner)``), where the decoder is placed the first time a TAESD preview is drawn."""

    every: int = 10
    method: str = APPROX_CHEAP
    content: str = COMBINED
    tiny_decoders: TinyDecoders | None = None
    owner: DeviceOwner | None = None

    @classmethod
    def of(cls, value: "PreviewSettings | int") -> "PreviewSettings":
        """Pipelines take either these settings or a bare step period (tests and internal callers)."""
        return value if isinstance(value, PreviewSettings) else cls(every=int(value))

    def on(self, owner: DeviceOwner) -> "PreviewSettings":
        """These settings for a job running on ``owner``'s device."""
        return replace(self, owner=owner)

    def due(self, step: int, total: int) -> bool:
        """Whether step ``step`` of ``total`` shows a preview (never the last: the result follows at once)."""
        return self.every > 0 and step % self.every == 0 and step < total

    @property
    def after_batch(self) -> bool:
        return self.every == AFTER_BATCH

    def tiny_decoder(self, family: str) -> "torch.nn.Module | None":
        """The TAESD decoder for ``family`` when this job previews with it (None: draw Approx cheap instead).
        Call it only when a preview is drawn: the first call loads the decoder."""
        if self.method != TAESD or self.tiny_decoders is None or self.owner is None:
            return None
        return self.tiny_decoders(family, self.owner)


def render(latents: torch.Tensor, family: str, size: tuple[int, int], method: str = APPROX_CHEAP,
           vae=None, tiny: "torch.nn.Module | None" = None) -> Image.Image:
    """The first image of ``latents`` as a picture of ``size`` (width, height).

    ``Full`` decodes it with ``vae`` (one image, with the decode's NaN and out-of-memory nets); ``TAESD`` with the
    tiny decoder ``tiny``; otherwise, or without that network, A1111's cheap approximation.
    """
    if method == FULL and vae is not None:
        with torch.inference_mode():
            image = decode.to_pil(decode.decode_latents(vae, latents[:1]))[0]
    elif method == TAESD and tiny is not None:
        image = decode.to_pil(tiny_decode(tiny, latents[:1]))[0]
    else:
        image = decode.cheap_preview(latents, family)
    if image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.BILINEAR)
    return image


def tiny_decode(decoder: torch.nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """TAESD's decode of the UNet's own latents (no VAE scaling factor: TAESD was trained on them), in [-1, 1]."""
    parameter = next(decoder.parameters())
    with torch.inference_mode():
        return decoder(latents[:, :4].to(parameter.device, parameter.dtype)).float()
