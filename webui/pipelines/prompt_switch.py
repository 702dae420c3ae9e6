"""Prompt editing during sampling: hands diffusers the embeddings of the scheduled text that applies at each step.

diffusers concatenates the prompt embeddings once before its loop ([uncond x n, cond x n] with guidance, SDXL's
pooled embeddings likewise) and lets ``callback_on_step_end`` replace them; :meth:`PromptSwitch.outputs` returns
the replacement for the next step whenever the schedule changes. Steps are counted as A1111's denoiser counts them:
one per model evaluation, starting at 0. A composable prompt (``AND``) also needs the job's UNet wrapped
(:meth:`PromptSwitch.install`, webui/pipelines/composable.py); its sub-prompts switch on the same steps.
"""

from __future__ import annotations

import torch

from webui.errors import InvalidRequest
from webui.models.embeddings import JobEmbeddings
from webui.pipelines import conditioning


class PromptSwitch:
    """The schedule of one job's prompt pair, for ``num_images`` images per batch."""

    def __init__(self, pair: conditioning.ScheduledPair, family: str, num_images: int):
        self.pair = pair
        self._xl = family == "sdxl"
        self._images = num_images
        self._current = pair.indexes_at(0)
        self.step = 0  # the step whose embeddings apply now (read by the composable UNet)

    @classmethod
    def encode(cls, runner, family: str, prompt: str, negative: str, clip_skip: int, steps: int,
               num_images: int, hires_steps: int | None = None,
               embeddings: JobEmbeddings | None = None) -> PromptSwitch:
        """``embeddings``: the job's textual-inversion embeddings (LoadedModel.embeddings)."""
        pair = conditioning.encode_scheduled_pair(runner, prompt, negative, clip_skip, runner._execution_device,
                                                  steps, hires_steps, embeddings)
        return cls(pair, family, num_images)

    def install(self, runner) -> None:
        """Wrap the job pipeline's UNet for a composable prompt (nothing to do otherwise)."""
        if self.pair.composable:
            from webui.pipelines.composable import ComposableUNet

            runner.unet = ComposableUNet(runner.unet, self.pair, self._images, self)

    def refuse_switching(self, why: str) -> None:
        """For pipelines whose loop cannot take new embeddings: a schedule is an error, never silently dropped."""
        if self.pair.composable:
            raise InvalidRequest("prompt", f"composable prompts (AND, or a \":weight\" at the end) are not "
                                           f"supported {why}; write \"and\" in lower case to mean the word")
        if self.pair.switches:
            raise InvalidRequest("prompt", f"prompt editing ([from:to:when], [a|b]) is not supported {why}")

    def kwargs(self) -> dict:
        """The pipeline's prompt arguments for the first step."""
        cond_index, uncond_index = self._current
        cond, uncond = self.pair.conds[cond_index], self.pair.unconds[uncond_index]
        kwargs = {"prompt_embeds": cond.embeds, "negative_prompt_embeds": uncond.embeds}
        if self._xl:
            kwargs.update(pooled_prompt_embeds=cond.pooled, negative_pooled_prompt_embeds=uncond.pooled)
        return kwargs

    def outputs(self, pipeline, next_step: int) -> dict:
        """Tensors for ``callback_on_step_end`` to return: new embeddings when ``next_step`` uses other texts."""
        self.step = next_step
        indexes = self.pair.indexes_at(next_step)
        if indexes == self._current:
            return {}
        self._current = indexes
        cond, uncond = self.pair.conds[indexes[0]], self.pair.unconds[indexes[1]]
        guided = pipeline.do_classifier_free_guidance
        result = {"prompt_embeds": self._batch(cond.embeds, uncond.embeds, guided)}
        if self._xl:
            result["add_text_embeds"] = self._batch(cond.pooled, uncond.pooled, guided)
        return result

    def _batch(self, cond: torch.Tensor, uncond: torch.Tensor, guided: bool) -> torch.Tensor:
        # The same layout diffusers builds from prompt_embeds / negative_prompt_embeds before the loop.
        repeat = (self._images,) + (1,) * (cond.dim() - 1)
        positive = cond.repeat(repeat)
        return torch.cat([uncond.repeat(repeat), positive]) if guided else positive
