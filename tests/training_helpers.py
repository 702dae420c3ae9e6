"""Shared pieces of the training tests: a trivially learnable image set and a finished-run helper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from webui.services.container import Services
from webui.training.lora_request import from_dict

COLOURS = [(220, 30, 30), (30, 200, 40), (30, 40, 220), (230, 220, 30)]


def colour_set(folder: Path, size: int = 64, captions: bool = True) -> Path:
    """Four solid-colour images with captions ("red square" ...): a set any LoRA learns quickly."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, colour in enumerate(COLOURS):
        Image.new("RGB", (size, size), colour).save(folder / f"img{index}.png")
        if captions:
            (folder / f"img{index}.txt").write_text(f"colour{index} square", encoding="utf-8")
    return folder


def lora_request(data_dir: Path, output_name: str, method: str = "lora", **settings: Any):
    """A small LoRA run on the tiny SD1 checkpoint at 64x64 (settings override the defaults)."""
    body = {"base_model": "tiny-sd15", "data_dir": str(data_dir), "output_name": output_name, "resolution": 64,
            "max_train_steps": 4, "learning_rate": 1e-2, "rank": 8, "alpha": 8, **settings}
    return from_dict(body, method=method)


def train(services: Services, request, timeout: float = 300) -> dict[str, Any]:
    """Start a run, wait for it to end, return the service's report of it."""
    job_id = services.training.start(request)
    services.queue.get(job_id).wait_done(timeout)
    return services.training.get(job_id)
