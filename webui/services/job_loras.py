"""The LoRAs a generation job's prompt names: found in ``models/Lora``, applied for the job, recorded in infotext.

A1111's rules: ``<lora:name:...>`` (and ``<lyco:...>``) in the prompt name a file by stem (or its alias); a name
with no file is a warning in the result (``LoRA not found: name``) and the job still runs; the infotext gets
``Lora hashes: "name: abcdef123456, ..."`` with the name as the prompt wrote it. Weights that are not numbers and
``dyn=`` are refused when the job is submitted (422 naming the prompt).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from webui.extra_networks import format_lora_hashes, prompt_networks, rename_by_hash
from webui.models.loader import LoadedModel
from webui.models.loras import LoraRegistry
from webui.pipelines.lora_apply import JobLora, LoraFiles, applied_loras


class JobLoras:
    def __init__(self, registry: LoraRegistry | None, *, allow_pickle: bool = False):
        self._registry = registry
        self._files = LoraFiles(allow_pickle=allow_pickle)

    @property
    def files(self) -> LoraFiles:
        return self._files

    def check(self, request: Any) -> None:
        """Refuse malformed tags before the job is queued (InvalidRequest naming the prompt)."""
        prompt_networks(request.prompt, request.negative_prompt)
        if getattr(request, "hr_prompt", ""):
            prompt_networks(request.hr_prompt, field_name="hr_prompt")

    @contextmanager
    def applied(self, model: LoadedModel, request: Any, warnings: list[str]) -> Iterator[dict[str, str]]:
        """The job's LoRAs on ``model`` for the ``with`` body; yields the infotext parameters they add."""
        wanted = prompt_networks(request.prompt, request.negative_prompt)
        warnings.extend(w for w in wanted.warnings if w not in warnings)
        hr_prompt = getattr(request, "hr_prompt", "") if getattr(request, "enable_hr", False) else ""
        if hr_prompt and prompt_networks(hr_prompt).loras != wanted.loras:
            warnings.append("The hires prompt names other LoRAs than the prompt; the prompt's LoRAs apply to "
                            "both passes")
        loras: list[JobLora] = []
        hashes: list[tuple[str, str]] = []
        if self._registry is not None and any(self._registry.find(u.name) is None for u in wanted.loras):
            self._registry.refresh()  # as A1111: a file copied in since the last scan is found without a restart
        for use in wanted.loras:
            info = self._registry.find(use.name) if self._registry is not None else None
            if info is None:
                message = f"LoRA not found: {use.name}"
                if message not in warnings:
                    warnings.append(message)
                continue
            loras.append(JobLora(use.name, info.path, use.te_weight, use.unet_weight))
            if info.short_hash:
                hashes.append((use.name, info.short_hash))
        with applied_loras(model.pipe, model.family, loras, self._files, warnings) as done:
            names = {lora.name for lora in done}
            used = [(name, short_hash) for name, short_hash in hashes if name in names]
            yield {"Lora hashes": format_lora_hashes(used)} if used else {}


def rename_pasted_loras(prompt: str, lora_hashes: str | None, registry: LoraRegistry | None) -> str:
    """A1111's paste rule (lora_script.infotext_pasted): a ``<lora:NAME:`` whose hash in the infotext's
    ``Lora hashes`` belongs to a local file is renamed to that file, so an image made with a LoRA of another
    name still finds it here."""
    if not lora_hashes or registry is None:
        return prompt
    by_hash = {info.short_hash: info.name for info in registry.list() if info.short_hash}
    return rename_by_hash(prompt, lora_hashes, by_hash.get)
