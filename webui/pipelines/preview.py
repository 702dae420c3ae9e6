"""The live preview: which steps show one, what it shows, and how it is drawn at the output's size.

A1111's options decide it: ``live_previews_enable``, ``show_progress_every_n_steps`` (every N sampling steps;
-1: once per finished batch, 0: never), ``show_progress_type`` ("Approx cheap": a linear latent -> RGB map, no
network; "Full": the real VAE decode, costly but exact) and ``live_preview_content`` ("Combined": the denoised
prediction of the sampler after CFG). The picture is resized (bilinear) to the image's pixel size, so the UI and
``/sdapi/v1/progress`` show it at the size the output will have.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from webui.pipelines import decode

APPROX_CHEAP = "Approx cheap"
FULL = "Full"
METHODS = (APPROX_CHEAP, FULL)
COMBINED = "Combined"
CONTENTS = (COMBINED,)
AFTER_BATCH = -1  # A1111's "-1 = only show after completion of batch"


@dataclass(frozen=True)
class PreviewSettings:
    """How one job previews; built per job from the options, so a change applies to the next job."""

    every: int = 10
    method: str = APPROX_CHEAP
    content: str = COMBINED

    @classmethod
    def of(cls, value: "PreviewSettings | int") -> "PreviewSettings":
        """Pipelines take either these settings or a bare step period (tests and internal callers)."""
        return value if isinstance(value, PreviewSettings) else cls(every=int(value))

    def due(self, step: int, total: int) -> bool:
        """Whether step ``step`` of ``total`` shows a preview (never the last: the result follows at once)."""
        return self.every > 0 and step % self.every == 0 and step < total

    @property
    def after_batch(self) -> bool:
        return self.every == AFTER_BATCH


def render(latents: torch.Tensor, family: str, size: tuple[int, int], method: str = APPROX_CHEAP,
           vae=None) -> Image.Image:
    """The first image of ``latents`` as a picture of ``size`` (width, height).

    ``Full`` decodes it with ``vae`` (one image, with the decode's NaN and out-of-memory nets); otherwise, or
    without a VAE, A1111's cheap approximation.
    """
    if method == FULL and vae is not None:
        with torch.inference_mode():
            image = decode.to_pil(decode.decode_latents(vae, latents[:1]))[0]
    else:
        image = decode.cheap_preview(latents, family)
    if image.size != tuple(size):
        image = image.resize(tuple(size), Image.Resampling.BILINEAR)
    return image
