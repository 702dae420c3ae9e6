"""Pure PIL helpers with A1111's semantics: resize modes, mask preparation, "only masked" crop regions."""

from __future__ import annotations

from PIL import Image, ImageFilter, ImageOps

JUST_RESIZE, CROP_AND_RESIZE, RESIZE_AND_FILL, LATENT_UPSCALE = 0, 1, 2, 3
RESIZE_MODES = {JUST_RESIZE: "Just resize", CROP_AND_RESIZE: "Crop and resize",
                RESIZE_AND_FILL: "Resize and fill", LATENT_UPSCALE: "Just resize (latent upscale)"}


def resize_image(image: Image.Image, width: int, height: int, mode: int = JUST_RESIZE) -> Image.Image:
    """Fit ``image`` to width x height the way A1111's resize modes do."""
    image = image.convert("RGB")
    if mode in (JUST_RESIZE, LATENT_UPSCALE):
        return image.resize((width, height), Image.LANCZOS)
    if mode == CROP_AND_RESIZE:
        return ImageOps.fit(image, (width, height), Image.LANCZOS)
    if mode == RESIZE_AND_FILL:
        return _resize_and_fill(image, width, height)
    raise ValueError(f"unknown resize mode {mode}")


def _resize_and_fill(image: Image.Image, width: int, height: int) -> Image.Image:
    """Fit inside, then stretch the outermost rows/columns into the empty bands (A1111's "fill")."""
    ratio, src_ratio = width / height, image.width / image.height
    src_w = width if ratio < src_ratio else image.width * height // image.height
    src_h = height if ratio >= src_ratio else image.height * width // image.width
    resized = image.resize((src_w, src_h), Image.LANCZOS)
    result = Image.new("RGB", (width, height))
    left, top = width // 2 - src_w // 2, height // 2 - src_h // 2
    result.paste(resized, (left, top))
    if ratio < src_ratio and top > 0:
        result.paste(resized.resize((width, top), box=(0, 0, width, 0)), (0, 0))
        result.paste(resized.resize((width, height - top - src_h), box=(0, src_h, width, src_h)), (0, top + src_h))
    elif ratio > src_ratio and left > 0:
        result.paste(resized.resize((left, height), box=(0, 0, 0, height)), (0, 0))
        result.paste(resized.resize((width - left - src_w, height), box=(src_w, 0, src_w, height)),
                     (left + src_w, 0))
    return result


def prepare_mask(mask: Image.Image, size: tuple[int, int], blur: int, invert: bool) -> Image.Image:
    """Greyscale mask at ``size``: white = repaint. Alpha masks (transparent = keep) are honoured."""
    if mask.mode in ("RGBA", "LA"):
        mask = mask.getchannel("A")  # drawn strokes are opaque on a transparent layer
    mask = mask.convert("L")
    if invert:
        mask = ImageOps.invert(mask)
    if mask.size != size:
        mask = mask.resize(size, Image.LANCZOS)
    if blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return mask


def masked_region(mask: Image.Image, padding: int, aspect_w: int, aspect_h: int) -> tuple[int, int, int, int] | None:
    """Bounding box of the painted area plus padding, widened to the target aspect ratio and kept in bounds."""
    box = mask.point(lambda v: 255 if v > 0 else 0).getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    x1, y1 = max(0, x1 - padding), max(0, y1 - padding)
    x2, y2 = min(mask.width, x2 + padding), min(mask.height, y2 + padding)
    # Grow the shorter side so the crop has the generation's aspect ratio (no distortion when resized).
    w, h = x2 - x1, y2 - y1
    target = aspect_w / aspect_h
    if w / h < target:
        grow = round(h * target) - w
        x1, x2 = x1 - grow // 2, x2 + grow - grow // 2
    else:
        grow = round(w / target) - h
        y1, y2 = y1 - grow // 2, y2 + grow - grow // 2
    (x1, x2), (y1, y2) = _shift_inside(x1, x2, mask.width), _shift_inside(y1, y2, mask.height)
    return x1, y1, x2, y2


def _shift_inside(lo: int, hi: int, limit: int) -> tuple[int, int]:
    if hi - lo >= limit:
        return 0, limit
    if lo < 0:
        return 0, hi - lo
    if hi > limit:
        return lo - (hi - limit), limit
    return lo, hi


def pre_fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill" masked content: the masked area painted with the surrounding colours, blurred.

    Only the unmasked pixels are kept (premultiplied alpha, so blurring spreads colour and coverage together),
    then blurred copies from very coarse to sharp are laid over each other: far from the edge the coarse layers
    show, near it the sharp ones, and unmasked pixels come out as they were.
    """
    keep = ImageOps.invert(mask.convert("L"))
    kept = Image.new("RGBa", image.size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=keep)
    out = Image.new("RGBA", image.size)
    for radius, layers in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = kept.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(layers):
            out.alpha_composite(blurred)
    return out.convert("RGB")


