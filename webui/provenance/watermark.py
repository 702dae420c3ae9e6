"""Invisible watermark: DWT-DCT through the ``invisible-watermark`` package, as the reference SD scripts use it.

Two choices differ from the package's defaults, both measured (see README, "Provenance"):

- The mark goes into the luminance (Y) channel (``scales=[36, 0, 0]``) instead of the U chroma channel: JPEG's
  4:2:0 chroma subsampling erased the U mark (about 50% of bits right after a quality-90 re-save) while the Y mark
  came through unchanged.
- Detection counts the votes of every 4x4 block rather than asking the decoder for exact bytes. The package's
  ``dwtDct`` quantises the largest coefficient of each block, which is often no longer the largest afterwards, so
  about a fifth of the blocks read wrong even losslessly and exact decoding failed on smooth images. Marked images
  gave 73-89% of blocks agreeing with the payload (PNG and JPEG q90/q75); unmarked ones 48-53%; with at least
  1,024 blocks per image, the 62% threshold is over seven standard deviations from chance.

Its weak spot stays: in a perfectly flat area every coefficient of a block is equal, so a mark quantised
downwards (or clipped at white) is read from a neighbour; flat near-white or saturated fills read as unmarked.

The package refuses images under 256x256 pixels (too few blocks); ``embed`` then returns None and the caller
records in the infotext that the watermark was skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

PAYLOAD = b"StableStudio"
MIN_PIXELS = 256 * 256  # the package's own minimum (width x height)
THRESHOLD = 0.62        # fraction of blocks agreeing with the payload for "found"
_METHOD = "dwtDct"
_SCALES = [36, 0, 0]    # luminance only; 36 is the package's default strength
_BLOCK = 4


@dataclass(frozen=True)
class WatermarkReading:
    found: bool | None   # None: the image is too small to tell
    score: float | None  # fraction of blocks agreeing with the payload (about 0.5 for unmarked images)


def fits(size: tuple[int, int]) -> bool:
    return size[0] * size[1] >= MIN_PIXELS


def embed(image: Image.Image, payload: bytes = PAYLOAD) -> Image.Image | None:
    """The image with the watermark in its pixels (RGB), or None when it is too small to carry one."""
    if not fits(image.size):
        return None
    from imwatermark import WatermarkEncoder  # imports cv2 and torch: only when a watermark is wanted

    encoder = WatermarkEncoder()
    encoder.set_watermark("bytes", payload)
    # float32 in, rounded and clipped by us: the package's uint8 path truncates, and wraps values past 0/255.
    marked = encoder.encode(_bgr(image), _METHOD, scales=_SCALES, block=_BLOCK)
    rgb = np.clip(np.rint(marked[:, :, ::-1]), 0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB")


def detect(image: Image.Image, payload: bytes = PAYLOAD) -> WatermarkReading:
    if not fits(image.size):
        return WatermarkReading(found=None, score=None)
    import cv2
    import pywt
    from imwatermark.maxDct import EmbedMaxDct

    bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))
    bgr = _bgr(image)
    rows, cols = bgr.shape[0] // 4 * 4, bgr.shape[1] // 4 * 4  # the package's own crop
    luma = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)[:rows, :cols, 0]
    approximation, _ = pywt.dwt2(luma, "haar")
    reader = EmbedMaxDct(watermarks=[], wmLen=len(bits), scales=_SCALES, block=_BLOCK)
    votes = reader.decode_frame(approximation, _SCALES[0], [[] for _ in bits])
    agree = sum(int(np.sum(np.asarray(v) == bit)) for v, bit in zip(votes, bits))
    total = sum(len(v) for v in votes)
    score = agree / total if total else 0.0
    return WatermarkReading(found=score >= THRESHOLD, score=round(score, 3))


def _bgr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)[:, :, ::-1].copy()
