"""The training images of a LoRA / DreamBooth run: finding and checking them, captions, kohya-style aspect-ratio
buckets or centre crops, and a data order that depends only on (seed, epoch) so a resumed run sees the same
batches as an uninterrupted one."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from webui.errors import InvalidRequest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MIN_SIDE = 32  # pixels: smaller images carry too little to learn from at any training resolution


def check_images(images: list[Path], field: str) -> None:
    """Every image opens and is at least ``MIN_SIDE`` pixels on each side; the first bad one is named."""
    for path in images:
        try:
            with Image.open(path) as image:
                image.verify()
            with Image.open(path) as image:
                size = image.size
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise InvalidRequest(field, f"{path.name} is not a readable image ({exc})") from None
        if min(size) < MIN_SIDE:
            raise InvalidRequest(field, f"{path.name} is {size[0]}x{size[1]}: images must be at least "
                                        f"{MIN_SIDE}x{MIN_SIDE} pixels")


def captions(images: list[Path], extension: str, shared: str, field: str) -> list[str]:
    """Each image's caption: ``shared`` when given, else the text of NAME<extension> beside it (missing or empty
    files are all named in one message)."""
    if shared:
        return [shared] * len(images)
    found, missing = [], []
    for path in images:
        caption_file = path.with_suffix(extension)
        text = caption_file.read_text(encoding="utf-8", errors="replace").strip() if caption_file.is_file() else ""
        if not text:
            missing.append(caption_file.name)
        found.append(text)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InvalidRequest(field, f"missing or empty captions: {shown} (give one caption for all images, or a "
                                    f"{extension} file beside each image)")
    return found


def dataset_hash(images: list[Path], texts: list[str]) -> str:
    """sha256 over every image's bytes and caption: which data a LoRA was trained on."""
    digest = hashlib.sha256()
    for path, text in zip(images, texts):
        data = path.read_bytes()
        digest.update(b"%d:" % len(data) + data + text.encode("utf-8") + b"\0")
    return digest.hexdigest()


def buckets(resolution: int, step: int) -> list[tuple[int, int]]:
    """Kohya-style buckets: (width, height) multiples of ``step`` with area at most resolution², sides between
    half and twice the resolution."""
    area, found = resolution * resolution, set()
    low, high = max(step, resolution // 2 // step * step), resolution * 2
    for width in range(low, high + 1, step):
        height = min(high, area // width // step * step)
        if height >= low:
            found.add((width, height))
            found.add((height, width))
    return sorted(found)


@dataclass(frozen=True)
class Example:
    """One prepared image: pixels in [-1, 1] (C, H, W), its caption, and SDXL's size conditioning."""

    pixels: torch.Tensor
    caption: str
    original_size: tuple[int, int]   # (height, width) before resizing
    crop_top_left: tuple[int, int]


def prepare(path: Path, caption: str, size: tuple[int, int]) -> Example:
    """Resize ``path`` to cover ``size`` (width, height) and crop its centre to it."""
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened).convert("RGB")
    width, height = size
    scale = max(width / image.width, height / image.height)
    resized = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                           Image.Resampling.LANCZOS)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    cropped = resized.crop((left, top, left + width, top + height))
    pixels = torch.frombuffer(bytearray(cropped.tobytes()), dtype=torch.uint8).reshape(height, width, 3)
    pixels = pixels.permute(2, 0, 1).float() / 127.5 - 1.0
    return Example(pixels, caption, (image.height, image.width), (top, left))


def bucket_for(path: Path, choices: list[tuple[int, int]]) -> tuple[int, int]:
    with Image.open(path) as image:
        width, height = ImageOps.exif_transpose(image).size
    aspect = math.log(width / height)
    return min(choices, key=lambda wh: (abs(math.log(wh[0] / wh[1]) - aspect), -wh[0] * wh[1]))


class BatchOrder:
    """Which examples make micro-batch ``m`` of the whole run: each epoch shuffles within buckets, cuts batches
    (same size in a batch), and shuffles the batches, from a generator seeded by (seed, epoch) alone."""

    def __init__(self, sizes: list[tuple[int, int]], batch_size: int, seed: int):
        self._groups: dict[tuple[int, int], list[int]] = {}
        for index, size in enumerate(sizes):
            self._groups.setdefault(size, []).append(index)
        self._batch_size = batch_size
        self._seed = seed
        self.per_epoch = sum(math.ceil(len(g) / batch_size) for g in self._groups.values())
        self._cache: tuple[int, list[list[int]]] | None = None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        generator = torch.Generator().manual_seed(self._seed * 100_003 + epoch)
        batches: list[list[int]] = []
        for _, members in sorted(self._groups.items()):
            order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
            batches.extend(order[i:i + self._batch_size] for i in range(0, len(order), self._batch_size))
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        self._cache = (epoch, batches)
        return batches

    def batch(self, micro_step: int) -> tuple[int, list[int]]:
        """(epoch, example indices) of micro-batch ``micro_step`` (0-based, counted over the whole run)."""
        epoch, position = divmod(micro_step, self.per_epoch)
        return epoch, self.epoch_batches(epoch)[position]
