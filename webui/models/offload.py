"""Text encoders that live in RAM and visit the GPU only to encode the prompt.

The middle way between everything resident and diffusers' model CPU offload (which moves the UNet too, 2.4x the
time for SDXL under an 8 GiB cap in ../shared/PERF.md): the UNet and VAE stay on the GPU, the text encoders (1.6
GiB for SDXL in fp16) come over when they are first called in a job and go back when the UNet next runs, so the
two never take GPU memory at the same time. Plain forward pre-hooks on the modules, set once when the memory plan
places the pipeline (webui/models/memory.py); nothing of diffusers or accelerate is changed.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


class TextEncoderVisits:
    """Hooks ``encoders`` so that each one is moved to ``device`` before its forward, and all of them back to
    ``home`` before ``unet``'s forward. ``visits`` counts the moves to the device (for tests and the log)."""

    def __init__(self, encoders: list[torch.nn.Module], unet: torch.nn.Module, device: torch.device,
                 home: torch.device | str = "cpu"):
        self.encoders = list(encoders)
        self.device = torch.device(device)
        self.home = torch.device(home)
        self.visits = 0
        self.handles = [encoder.register_forward_pre_hook(self._arrive) for encoder in self.encoders]
        # Moving weights is no part of a compiled UNet's graph (--compile): run this hook eagerly.
        self.handles.append(unet.register_forward_pre_hook(torch.compiler.disable(self._send_home)))

    def _arrive(self, module: torch.nn.Module, args):
        if _device_of(module) != self.device:
            module.to(self.device)
            self.visits += 1
        # Inputs made on another device follow the module (the prompt ids are made on the execution device).
        return tuple(a.to(self.device) if isinstance(a, torch.Tensor) else a for a in args)

    def _send_home(self, _module: torch.nn.Module, _args) -> None:
        for encoder in self.encoders:
            if _device_of(encoder) != self.home:
                encoder.to(self.home)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
