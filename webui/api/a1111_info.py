"""A1111's ``info`` object: the JSON string API clients parse from ``/sdapi/v1/txt2img`` and ``img2img`` responses.

Wire format, so it is built here at the edge from what the generation service reports, not by the service.
"""

from __future__ import annotations

import time
from typing import Any

from webui import VERSION
from webui.types import GenerationResult


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
        "denoising_strength": getattr(request, "denoising_strength", None),
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": result.infotexts,
        "styles": [],
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(result.started)),
        "clip_skip": request.clip_skip,
        "is_using_inpainting_conditioning": result.model_variant == "inpaint",
        "version": f"studio-{VERSION}",
        "interrupted": result.interrupted,
        "warnings": list(result.warnings),
    }
