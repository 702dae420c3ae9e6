"""SD upscale (A1111's scripts/sd_upscale.py), on the public extension API only.

The init image is upscaled by the scale factor with an upscaler, cut into tiles of the form's width x height that
overlap by at least ``overlap`` pixels, each tile is run through img2img with the form's settings (seed + tile
number, as A1111 runs a batch size of 1), and the tiles are put back with the overlaps blended. As in A1111, the
upscaler "None" leaves the image at its size (the scale factor does nothing then). Every result carries the
first tile's infotext plus ``SD upscale overlap`` and ``SD upscale upscaler``.
"""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, Field, field_validator

from webui.extensions.api import (IMG2IMG, Context, Extension, ExtensionError, Img2ImgRequest, Script, ScriptResult,
                                  ScriptRun, combine_tiles, split_tiles, with_infotext_fields)

TITLE = "SD upscale"
MAX_SEED = 4294967294


class SDUpscale(BaseModel):
    """The script's values, in A1111's ``script_args`` order (its first slot is an info text, ignored)."""

    info: Any = Field(None, title="Info", json_schema_extra={"hidden": True},
                      description="A1111's script_args slot for its info text; ignored")
    overlap: int = Field(64, ge=0, le=256, title="Tile overlap",
                         description="Pixels each tile shares with its neighbours, blended to hide the seams")
    upscaler_index: str = Field("Lanczos", title="Upscaler",
                                description="An upscaler's name (GET /sdapi/v1/upscalers) or, as A1111 clients "
                                            "send it, its position in that list")
    scale_factor: float = Field(2.0, ge=1.0, le=4.0, title="Scale Factor",
                                description="The image is upscaled by this; the form's width and height set the "
                                            "tile size")

    @field_validator("upscaler_index", mode="before")
    @classmethod
    def _index_or_name(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def resolve_upscaler(value: str, names: list[str]) -> str:
    if value.isdigit():
        index = int(value)
        if index >= len(names):
            raise ExtensionError(f"{TITLE}: upscaler_index: {index} is not an upscaler's position "
                                 f"(0 to {len(names) - 1}: {', '.join(names)})")
        return names[index]
    for name in names:
        if name.lower() == value.strip().lower():
            return name
    raise ExtensionError(f"{TITLE}: upscaler_index: unknown upscaler '{value}' (choose one of {', '.join(names)})")


def upscaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    # A1111's Upscaler.upscale: each side scaled and floored to a multiple of 8.
    return int(width * scale) // 8 * 8, int(height * scale) // 8 * 8


BUILT_IN_UPSCALERS = ("None", "Lanczos", "Nearest")


def build_ui(defaults: BaseModel) -> dict[str, Any]:
    """A1111's panel: its note, the overlap and scale sliders and the upscaler (the ``info`` slot has no widget)."""
    import gradio as gr  # only the UI needs Gradio

    if not isinstance(defaults, SDUpscale):
        defaults = SDUpscale()
    gr.Markdown("Will upscale the image by the selected scale factor; use the width and height sliders to set the "
                "tile size.")
    overlap = gr.Slider(0, 256, value=defaults.overlap, step=16, label="Tile overlap")
    scale = gr.Slider(1.0, 4.0, value=defaults.scale_factor, step=0.05, label="Scale Factor")
    upscaler = gr.Dropdown(list(BUILT_IN_UPSCALERS), value=defaults.upscaler_index, label="Upscaler",
                           allow_custom_value=True,
                           info="None, Lanczos, Nearest, or an upscaler model's name (as the Extras tab lists them)")
    return {"overlap": overlap, "upscaler_index": upscaler, "scale_factor": scale}


def make_run(app: Context):
    def run(run: ScriptRun) -> ScriptResult:
        request = run.request
        values = run.values if isinstance(run.values, SDUpscale) else SDUpscale()
        if not isinstance(request, Img2ImgRequest) or not request.init_images:
            raise ExtensionError(f"{TITLE} needs an init image (img2img)")
        if values.overlap >= min(request.width, request.height):
            raise ExtensionError(f"{TITLE}: overlap: {values.overlap} must be smaller than the tile "
                                 f"({request.width}x{request.height}, the form's width and height)")
        context = run.context
        upscaler = resolve_upscaler(values.upscaler_index, context.upscalers())
        seed = request.seed if request.seed != -1 else random.randrange(MAX_SEED)
        init = request.init_images[0].convert("RGB")
        image = init if upscaler == "None" else context.upscale(init, *upscaled_size(init.width, init.height,
                                                                                     values.scale_factor), upscaler)
        fields = {"SD upscale overlap": values.overlap, "SD upscale upscaler": upscaler}
        results, seeds, infotexts, warnings = [], [], [], []
        first_info = ""
        for n in range(request.n_iter):
            grid = split_tiles(image, request.width, request.height, values.overlap)
            tiles = grid.tiles
            done = 0
            for index, tile in enumerate(tiles):
                if context.interrupted:
                    break
                context.progress(f"Upscale {n + 1} of {request.n_iter}: tile {index + 1} of {len(tiles)}",
                                 n * len(tiles) + index, request.n_iter * len(tiles))
                tile_request = Img2ImgRequest.model_validate({
                    **dict(request), "init_images": [tile.image], "mask": None, "batch_size": 1, "n_iter": 1,
                    "seed": seed + n + index, "save_images": False})
                out = context.generate(tile_request)
                if not out.images:
                    break
                tile.image = out.images[0]
                first_info = first_info or out.infotexts[0]
                done += 1
                if out.interrupted:
                    break
            if done < len(tiles):
                warnings.append(f"Interrupted: {done} of {len(tiles)} tiles of upscale {n + 1} were redrawn.")
                if done == 0:
                    break
            info = with_infotext_fields(first_info, fields)
            combined = combine_tiles(grid)
            results.append(combined)
            seeds.append(seed + n)
            infotexts.append(info)
            if request.save_images:
                app.save_image(combined, info, category="img2img-images")
            if done < len(tiles):
                break
        return ScriptResult(images=results, infotexts=infotexts, seeds=seeds, warnings=warnings)
    return run


def setup(ext: Extension) -> None:
    ext.add_script(Script(title=TITLE, run=make_run(ext.context), params=SDUpscale, tabs=(IMG2IMG,), ui=build_ui,
                          a1111_args=("info", "overlap", "upscaler_index", "scale_factor"),
                          description="Will upscale the image by the selected scale factor; use the width and "
                                      "height sliders to set the tile size."))
