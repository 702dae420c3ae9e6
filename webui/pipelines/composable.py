"""A1111's composable prompts (``a cat :1.2 AND a dog``): one guidance term per sub-prompt, each with its weight.

A1111 (sd_samplers_cfg_denoiser ``combine_denoised``) denoises with every sub-prompt and mixes
``uncond + sum_i weight_i * cfg * (cond_i - uncond)``. diffusers' pipelines compute ``uncond + cfg * (cond - uncond)``
from one UNet call over ``[uncond, cond]``; :class:`ComposableUNet` stands in for the job's UNet, evaluates the
other sub-prompts in one more call and returns ``cond = uncond + sum_i weight_i * (cond_i - uncond)``, so the
pipeline's own formula gives A1111's result (the mix is linear, so it holds for eps and v outputs alike). Without
guidance (CFG 1) it computes the unconditional output itself and returns the mix. Each sub-prompt follows its own
prompt-editing schedule; SDXL sub-prompts bring their own pooled embeddings, as in A1111.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from webui.pipelines.conditioning import Conditioning, ScheduledPair


class StepSource(Protocol):
    step: int  # the 0-based sampler step whose embeddings apply


class ComposableUNet(torch.nn.Module):
    """The job's UNet with A1111's composable guidance; everything else (config, dtype, device) is the UNet's.

    The UNet is held outside the module tree: the wrapper owns no weights and never moves them.
    """

    def __init__(self, unet: torch.nn.Module, pair: ScheduledPair, images: int, steps: StepSource):
        super().__init__()
        object.__setattr__(self, "_unet", unet)
        self._pair = pair
        self._images = images
        self._steps = steps

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_unet"), name)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                added_cond_kwargs: dict | None = None, return_dict: bool = True, **kwargs):
        unet, n, step = self._unet, self._images, self._steps.step
        out = unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                   added_cond_kwargs=added_cond_kwargs, return_dict=False, **kwargs)[0]
        guided = sample.shape[0] == 2 * n
        x = sample[n:] if guided else sample
        conds: list[Conditioning] = [sub.at(step) for sub in self._pair.extra]
        if not guided:  # the unconditional output is needed for the mix even without guidance
            conds.append(self._pair.unconds[self._pair.indexes_at(step)[1]])
        uncond, first = (out[:n], out[n:]) if guided else (None, out)
        outputs: list[torch.Tensor] = []
        if conds:
            embeds = torch.cat([c.embeds.to(encoder_hidden_states.device, encoder_hidden_states.dtype)
                                .repeat(n, 1, 1) for c in conds])
            extra_added = None
            if added_cond_kwargs is not None:
                time_ids = added_cond_kwargs["time_ids"][-n:]
                extra_added = {"text_embeds": torch.cat([c.pooled.to(time_ids.device, encoder_hidden_states.dtype)
                                                         .repeat(n, 1) for c in conds]),
                               "time_ids": time_ids.repeat(len(conds), 1)}
            repeat = (len(conds),) + (1,) * (x.dim() - 1)
            outputs = list(unet(x.repeat(repeat), timestep, encoder_hidden_states=embeds,
                                added_cond_kwargs=extra_added, return_dict=False, **kwargs)[0].chunk(len(conds)))
        if not guided:
            uncond = outputs.pop()
        mixed = uncond + self._pair.weight * (first - uncond)
        for sub, output in zip(self._pair.extra, outputs):
            mixed = mixed + sub.weight * (output - uncond)
        result = torch.cat([uncond, mixed]) if guided else mixed
        return UNet2DConditionOutput(sample=result) if return_dict else (result,)
