"""A1111's ``info`` object: the JSON string API clients parse from ``/sdapi/v1/txt2img`` and ``img2img`` responses.

Wire format, so it is built here at the edge from what the generation service reports, not by the service.
"""

from __future__ import annotations

import time
from typing import Any

from webui import VERSION
from webui.infotext import parse_infotext
from webui.parameters import InfotextContext, infotext_params
from webui.types import GenerationResult


def _img2img_or_hires(request) -> bool:
    return hasattr(request, "init_images") or request.enable_hr


def _hires_params(result: GenerationResult) -> dict[str, Any]:
    """A1111 lists the hires fix's infotext keys (and the strength) in ``extra_generation_params``."""
    request = result.request
    if hasattr(request, "init_images") or not request.enable_hr:
        return {}
    params = infotext_params(request, InfotextContext(result.base_seed))
    return {key: value for key, value in params.items()
            if value is not None and (key.startswith("Hires ") or key == "Denoising strength")}


def _lora_params(result: GenerationResult) -> dict[str, Any]:
    """A1111 lists ``Lora hashes`` there too (extra_networks_lora sets it in extra_generation_params)."""
    hashes = parse_infotext(result.infotexts[0]).params.get("Lora hashes") if result.infotexts else None
    return {"Lora hashes": hashes} if hashes else {}


def a1111_info(result: GenerationResult) -> dict[str, Any]:
    """The ``info`` dict of a finished generation job, in A1111's keys and order; empty if nothing ran."""
    request, count = result.request, len(result.images)
    if request is None:
        return {}
    sampling = request.sampling
    return {
        "prompt": request.prompt,
        "all_prompts": [request.prompt] * count,
        "negative_prompt": request.negative_prompt,
        "all_negative_prompts": [request.negative_prompt] * count,
        "seed": result.base_seed,
        "all_seeds": result.seeds,
        "subseed": result.base_subseed,
        "all_subseeds": result.subseeds,
        "subseed_strength": request.subseed_strength,
        "width": request.width,
        "height": request.height,
        "sampler_name": sampling.spec.name,
        "scheduler": sampling.schedule,
        "cfg_scale": request.cfg_scale,
        "steps": request.steps,
        "batch_size": request.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": result.model_name,
        "sd_model_hash": result.model_hash,
        "sd_vae_name": result.vae_name,
        "sd_vae_hash": result.vae_hash,
        "seed_resize_from_w": request.seed_resize_from_w,
        "seed_resize_from_h": request.seed_resize_from_h,
        "denoising_strength": request.denoising_strength if _img2img_or_hires(request) else None,
        "extra_generation_params": {**_hires_params(result), **_lora_params(result)},
        "index_of_first_image": 1 if result.images_start_with_grid else 0,
        "infotexts": result.infotexts,
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(result.started)),
        "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": result.model_variant == "inpaint",
        "version": f"studio-{VERSION}",
        "interrupted": result.interrupted,
        "warnings": list(result.warnings),
    }
