"""Stopping inside a denoising step: forward pre-hooks on the UNet's blocks, attached for one run.

A step at 2048x2048 on a CPU takes about a minute; the step callback alone would see an Interrupt only after it.
The hooks ask the job before each down, mid and up block and raise ``Interrupted`` when it is stopped; the
pipeline runner catches it and returns what the batch has finished. They are removed when the run ends, however
it ends, so the shared UNet is left as it was (one job at a time runs on a device's models).
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from webui.models import fast_path

_BLOCK = re.compile(r"(^|\.)((down|up)_blocks\.\d+|mid_block)$")


class Interrupted(Exception):
    """Raised inside the UNet when the job was interrupted or skipped; caught by the pipeline runner."""


def blocks(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """The UNet's down, mid and up blocks (found by name, so a wrapping module works as well)."""
    return [module for name, module in unet.named_modules() if _BLOCK.search(name)]


@contextmanager
def inside_steps(unet: torch.nn.Module, should_stop: Callable[[], bool]) -> Iterator[None]:
    def check(_module, _args) -> None:
        if should_stop():
            raise Interrupted

    # A compiled UNet (--compile) runs as one graph: hooks added per job would be ignored or force a recompile, and
    # its steps take milliseconds on a GPU, so the step callback's check at each step's end is enough there.
    handles = [] if fast_path.is_compiled(unet) else [block.register_forward_pre_hook(check) for block in blocks(unet)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
