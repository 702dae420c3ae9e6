"""Extras tab / ``extra-single-image``: the sizes and steps of A1111's postprocessing upscale. Pure PIL: an
upscaler model is run by the caller's ``model_resize`` (webui/services/upscaling.py), which returns the image at
an exact size.

Sizes follow A1111's ``Upscaler.upscale``: the result is rounded down to a multiple of 8. "Resize to" with crop
is a centre crop to exactly the requested size (A1111 pastes onto a black canvas, which can leave a thin black
edge when the rounding falls short; we crop the source first, which also never builds a huge intermediate).
"""

from __future__ import annotations

from typing import Callable

from PIL import Image, ImageOps

from webui.errors import InvalidRequest
from webui.types import UPSCALE_MAX_SCALE as MAX_SCALE
from webui.types import UPSCALE_MAX_SIDE as MAX_SIDE
from webui.types import UpscaleRequest as UpscaleSpec  # the name callers use

__all__ = ["MAX_SCALE", "MAX_SIDE", "UPSCALERS", "UpscaleSpec", "check_upscalers", "info_text", "upscale"]

# "None" is A1111's "just resize" entry; its final resize is Lanczos too.
UPSCALERS: dict[str, Image.Resampling] = {
    "None": Image.Resampling.LANCZOS,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}
MAX_PIXELS = 4096 * 4096  # binds only if MAX_SIDE is ever raised; kept so memory stays bounded either way


def _floor8(value: float) -> int:
    # A1111 rounds the destination down to a multiple of 8; tiny images still get at least 8 px.
    return max(8, int(value) // 8 * 8)


ModelResize = Callable[[Image.Image, tuple[int, int], str], Image.Image]  # (image, exact size, upscaler name)


def check_upscalers(spec: UpscaleSpec) -> None:
    for field in ("upscaler_1", "upscaler_2"):
        name = getattr(spec, field)
        if name not in UPSCALERS:
            raise InvalidRequest(field, f"unknown upscaler '{name}'. Available: {', '.join(UPSCALERS)}")


def target_size(size: tuple[int, int], spec: UpscaleSpec) -> tuple[int, int]:
    width, height = size
    if spec.to_size and spec.crop:
        return spec.width, spec.height
    factor = max(spec.width / width, spec.height / height) if spec.to_size else spec.scale
    return _floor8(width * factor), _floor8(height * factor)


def check_size(size: tuple[int, int], field: str) -> None:
    """Refuse before allocating: a 10x request on a large image would take gigabytes."""
    width, height = size
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        raise InvalidRequest(field, f"the result would be {width}x{height}, over the limit of "
                                    f"{MAX_SIDE}x{MAX_SIDE} ({MAX_PIXELS // 1_000_000} MP)")


def _resize(image: Image.Image, size: tuple[int, int], spec: UpscaleSpec, upscaler: str,
            model_resize: ModelResize | None) -> Image.Image:
    if upscaler not in UPSCALERS:
        if model_resize is None:
            raise InvalidRequest("upscaler_1", f"upscaler '{upscaler}' needs a model runner")
        if not (spec.to_size and spec.crop):
            return model_resize(image, size, upscaler)
        # A1111: upscale to cover the box, then cut the overflow, centred.
        factor = max(size[0] / image.width, size[1] / image.height)
        cover = (max(size[0], round(image.width * factor)), max(size[1], round(image.height * factor)))
        covered = model_resize(image, cover, upscaler)
        left, top = (cover[0] - size[0]) // 2, (cover[1] - size[1]) // 2
        return covered.crop((left, top, left + size[0], top + size[1]))
    method = UPSCALERS[upscaler]
    if spec.to_size and spec.crop:
        return ImageOps.fit(image, size, method=method, centering=(0.5, 0.5))
    return image.resize(size, resample=method)


def _normalise_mode(image: Image.Image) -> Image.Image:
    # Lanczos needs RGB(A); keep alpha when the input has it (A1111 drops it, nobody wants that).
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    wanted = "RGBA" if has_alpha else "RGB"
    return image if image.mode == wanted else image.convert(wanted)


def upscale(image: Image.Image, spec: UpscaleSpec,
            model_resize: ModelResize | None = None) -> tuple[Image.Image, dict[str, str]]:
    """Return the resized image and A1111's postprocessing info (``Postprocess upscale by: 2, ...``).

    Without ``model_resize`` only the built-in upscalers are accepted; with it, any other name is a model that
    ``model_resize`` runs (the caller has checked the names).
    """
    if model_resize is None:
        check_upscalers(spec)
    size = target_size(image.size, spec)
    check_size(size, spec.size_field)
    image = _normalise_mode(image)
    result = _resize(image, size, spec, spec.upscaler_1, model_resize)
    info = {"Postprocess upscale to": f"{spec.width}x{spec.height}"} if spec.to_size \
        else {"Postprocess upscale by": f"{spec.scale:g}"}
    info["Postprocess upscaler"] = spec.upscaler_1
    if spec.upscaler_2 != "None" and spec.upscaler_2_visibility > 0:
        second = _resize(image, size, spec, spec.upscaler_2, model_resize)
        if second.mode != result.mode:
            second = second.convert(result.mode)
        result = Image.blend(result, second, spec.upscaler_2_visibility)
        info["Postprocess upscaler 2"] = spec.upscaler_2
    if spec.to_size and spec.crop:
        info["Postprocess crop to"] = f"{size[0]}x{size[1]}"
    return result, info


def info_text(info: dict[str, str]) -> str:
    """A1111 joins postprocessing info as ``key: value, ...``."""
    return ", ".join(f"{key}: {value}" for key, value in info.items())
