"""Checkpoint merging as a job: checked when submitted, written on the queue, listed when done.

Everything that can be wrong is found before the job is queued (names, architectures, shapes, the output name,
the VAE and LoRAs, RAM and disk), so a queued merge fails only on I/O or when cancelled. The job runs at LONG
priority and reaches a safe point between keys, where waiting generations run first; it uses CPU RAM and files,
never the device. The result is a single-file ``.safetensors`` in the inputs' LDM layout in
``models/Stable-diffusion``, with A1111's ``sd_merge_recipe``/``sd_merge_models`` metadata, and the checkpoint
registry is refreshed so it is listed (and hashed) like any other.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from webui.atomic import atomic_write_bytes, remove_stale_temp_files
from webui.errors import Cancelled, InvalidRequest, ModelNotFound, StudioError
from webui.models import detect, lora_weights, merge
from webui.models.loras import LoraRegistry
from webui.models.merge_bake import empty_pipe, ldm_deltas, read_vae
from webui.models.registry import ModelRegistry
from webui.models.vae import VaeFiles
from webui.services.jobs import LONG, Job, JobContext, JobKind, JobQueue
from webui.services.listings import ram_report
from webui.services.merge_request import ADD_DIFFERENCE, NO_VAE, WEIGHTED_SUM, MergeRequest
from webui.types import CheckpointInfo, text_problem

log = logging.getLogger(__name__)

KIND = "merge"
SUFFIX = ".safetensors"
RAM_HEADROOM = 512 * 1024 * 1024  # the process itself, safetensors' buffers, the rest of the server
# Per key: A, B, C, an fp32 copy of each and the result are alive at once.
TENSORS_PER_KEY = 6

# (LoRA file, te_weight, unet_weight, the checkpoint's spec) -> deltas keyed by diffusers parameter names.
LoraDeltas = Callable[[Path, float, float, detect.ModelSpec], dict[str, torch.Tensor]]


def _lora_weights_deltas(allow_pickle: bool) -> LoraDeltas:
    def deltas(path: Path, te_weight: float, unet_weight: float, spec: detect.ModelSpec) -> dict[str, torch.Tensor]:
        lora = lora_weights.read_lora(path, allow_pickle=allow_pickle)
        problem = lora_weights.family_problem(lora, path.stem, spec.family)
        if problem:
            raise InvalidRequest("loras", problem)
        # The layers a LoRA's names can mean are read off the model; names and shapes are all it needs.
        targets = lora_weights.LoraTargets(empty_pipe(spec), spec.family)
        return lora_weights.module_deltas(lora, te_weight=te_weight, unet_weight=unet_weight,
                                          family=spec.family, targets=targets)
    return deltas


@dataclass(frozen=True)
class MergeResult:
    """The saved checkpoint: its title as listed, where it is, and how many tensors it holds."""

    title: str
    path: Path
    keys: int
    bytes: int


@dataclass
class PreparedMerge:
    """A checked merge, ready to write (the job's request; the history records its fields)."""

    request: MergeRequest
    output: Path
    plan: merge.MergePlan
    metadata: dict[str, str]


class MergeService:
    def __init__(self, registry: ModelRegistry, queue: JobQueue, *, vaes: VaeFiles | None = None,
                 loras: LoraRegistry | None = None, allow_pickle: bool = False,
                 lora_deltas: LoraDeltas | None = None,
                 available_ram: Callable[[], int | None] = lambda: ram_report().get("free")):
        self._registry = registry
        self._queue = queue
        self._vaes = vaes
        self._loras = loras
        self._allow_pickle = allow_pickle
        self._lora_deltas = lora_deltas or _lora_weights_deltas(allow_pickle)
        self._available_ram = available_ram
        queue.register(JobKind(KIND, self._run, priority=LONG))

    # ------------------------------------------------------------------------------------- lists for the form

    def checkpoint_titles(self) -> list[str]:
        return [info.title for info in self._registry.list()]

    def refresh(self) -> list[str]:
        self._registry.refresh()
        return self.checkpoint_titles()

    def vae_choices(self) -> list[str]:
        return [NO_VAE, *(p.name for p in self._vaes.files())] if self._vaes is not None else [NO_VAE]

    def lora_names(self) -> list[str]:
        return [info.name for info in self._loras.list()] if self._loras is not None else []

    def position(self, job: Job) -> int | None:
        """1 for the next job to start, None once it has started."""
        return self._queue.position(job)

    def cancel_all(self) -> int:
        """Cancel every merge queued or running (the tab's Cancel); returns how many were asked to stop."""
        jobs = [job for job in self._queue.jobs() if job.kind == KIND and not job.finished]
        for job in jobs:
            job.interrupt()
        return len(jobs)

    # ------------------------------------------------------------------------------------- submitting

    def submit(self, request: MergeRequest) -> Job:
        """Check everything and queue the merge; InvalidRequest naming the field when something is wrong."""
        prepared = self.prepare(request)
        return self._queue.submit(KIND, prepared)

    def merge(self, request: MergeRequest, timeout: float | None = None) -> MergeResult:
        return self.submit(request).wait(timeout)

    def prepare(self, request: MergeRequest) -> PreparedMerge:
        a_info = self._find(request.primary, "primary_model")
        b_info = self._find(request.secondary, "secondary_model") if request.method != merge.NO_INTERPOLATION \
            else None
        c_info = self._find(request.tertiary, "tertiary_model") if request.method == ADD_DIFFERENCE else None
        if b_info is not None and b_info.path == a_info.path:
            raise InvalidRequest("secondary_model", f"{b_info.title} is also the primary model; choose another")
        if c_info is not None and c_info.path == b_info.path:
            raise InvalidRequest("tertiary_model", f"{c_info.title} is also the secondary model: B - C would be zero")
        output = self._output_path(request, a_info, b_info, c_info)
        a = merge.TensorSource(a_info.path, "primary_model", allow_pickle=self._allow_pickle)
        b = merge.TensorSource(b_info.path, "secondary_model", allow_pickle=self._allow_pickle) if b_info else None
        c = merge.TensorSource(c_info.path, "tertiary_model", allow_pickle=self._allow_pickle) if c_info else None
        spec = a.spec()
        for source in (b, c):
            if source is not None and (other := source.spec()).family != spec.family:
                raise InvalidRequest(source.label, f"{a.path.name} is {spec.label} but {source.path.name} is "
                                                   f"{other.label}: merging needs checkpoints of one architecture")
        vae = self._vae(request.bake_vae, spec)
        deltas = self._deltas(request.loras, spec, a.shapes)
        plan = merge.plan_merge(a, b, c, method=request.method, multiplier=request.multiplier,
                                fp16=request.save_as_half, vae=vae, discard=request.discard_weights or None,
                                deltas=deltas)
        if not request.output_name.strip():  # A1111 marks generated names of inpainting/ip2p results
            stem = output.name.removesuffix(SUFFIX)
            stem += ".inpainting" if plan.is_inpainting else ""
            stem += ".instruct-pix2pix" if plan.is_instruct_pix2pix else ""
            output = output.with_name(stem + SUFFIX)
            self._check_free(output, request, (a_info, b_info, c_info))
        self._check_resources(plan, output)
        metadata = _metadata(request, plan, a_info, b_info, c_info)
        return PreparedMerge(request, output, plan, metadata)

    def _find(self, query: str, field: str) -> CheckpointInfo:
        try:
            return self._registry.find(query)
        except ModelNotFound as exc:
            raise InvalidRequest(field, str(exc)) from None

    def _output_path(self, request: MergeRequest, a: CheckpointInfo, b: CheckpointInfo | None,
                     c: CheckpointInfo | None) -> Path:
        name = request.output_name.strip()
        if name:
            lowered = name.lower()
            if lowered.endswith((".ckpt", ".pt", ".bin")):
                raise InvalidRequest("output_name", "merges are saved as .safetensors only (pickles can run code)")
            name = name[: -len(SUFFIX)] if lowered.endswith(SUFFIX) else name
            if (problem := text_problem(name)) or any(ch in name for ch in '/\\:*?"<>|') or name.startswith(".") \
                    or len(name) > 200:
                raise InvalidRequest("output_name", problem or "a file name without / \\ : * ? \" < > |, not "
                                                               "starting with a dot, at most 200 characters")
        else:  # A1111's generated names
            m = request.multiplier
            if request.method == WEIGHTED_SUM:
                name = f"{round(1 - m, 2)}({a.model_name}) + {round(m, 2)}({b.model_name})"
            elif request.method == ADD_DIFFERENCE:
                name = f"{a.model_name} + {round(m, 2)}({b.model_name} - {c.model_name})"
            else:
                name = a.model_name
        output = self._registry.directory / f"{name}{SUFFIX}"
        self._check_free(output, request, (a, b, c))
        return output

    @staticmethod
    def _check_free(output: Path, request: MergeRequest, inputs: tuple[CheckpointInfo | None, ...]) -> None:
        if output.resolve() in {info.path.resolve() for info in inputs if info is not None}:
            raise InvalidRequest("output_name", f"{output.name} is one of the models being merged; choose "
                                                "another name")
        if output.exists() and not request.overwrite:
            raise InvalidRequest("output_name", f"{output.name} already exists in {output.parent.name}; choose "
                                                "another name or tick overwrite")

    def _vae(self, choice: str, spec) -> dict[str, torch.Tensor]:
        if not choice or choice == NO_VAE:
            return {}
        path = self._vaes.find(choice) if self._vaes is not None else None
        if path is None:
            choices = ", ".join(self.vae_choices())
            raise InvalidRequest("bake_vae", f"no VAE named '{choice}' in models/VAE; choose one of: {choices}")
        return read_vae(path, spec, allow_pickle=self._allow_pickle)

    def _deltas(self, loras: tuple[tuple[str, float], ...], spec, shapes) -> dict[str, torch.Tensor]:
        if not loras:
            return {}
        total: dict[str, torch.Tensor] = {}
        for name, weight in loras:
            info = self._loras.find(name) if self._loras is not None else None
            if info is None:
                known = ", ".join(self.lora_names()) or "none (put LoRA files in models/Lora)"
                raise InvalidRequest("loras", f"no LoRA named '{name}'. Available: {known}")
            try:
                raw = self._lora_deltas(info.path, weight, weight, spec)
            except InvalidRequest:
                raise
            except StudioError as exc:  # the LoRA reader's own refusal (damaged file, pickle): name the field
                raise InvalidRequest("loras", str(exc)) from None
            except (OSError, ValueError, KeyError, RuntimeError) as exc:  # a damaged or unknown LoRA file
                raise InvalidRequest("loras", f"{info.path.name} could not be read as a LoRA: {exc}") from None
            placed = ldm_deltas(raw, spec, shapes)
            for key, delta in placed.items():
                total[key] = total[key] + delta if key in total else delta
        return total

    def _check_resources(self, plan: merge.MergePlan, output: Path) -> None:
        free_disk = shutil.disk_usage(output.parent).free
        if plan.output_bytes > free_disk:
            raise InvalidRequest("output_name", f"the merged checkpoint needs {_gib(plan.output_bytes)} but "
                                                f"{output.parent} has {_gib(free_disk)} free")
        # Streamed: a few copies of the largest tensor; pickles, a baked VAE and LoRA deltas are held whole.
        held = sum(s.data_bytes for s in (plan.a, plan.b, plan.c) if s is not None and s.path.suffix != SUFFIX)
        held += sum(t.numel() * t.element_size() for t in (*plan.vae.values(), *plan.deltas.values()))
        need = plan.largest_tensor_bytes * TENSORS_PER_KEY + held + RAM_HEADROOM
        free = self._available_ram()
        if free is not None and need > free:
            raise InvalidRequest("primary_model", f"this merge needs about {_gib(need)} of RAM but "
                                                  f"{_gib(free)} is available; close other programs or merge "
                                                  "fewer models or LoRAs at once")

    # ------------------------------------------------------------------------------------- the job

    def _run(self, ctx: JobContext, prepared: PreparedMerge) -> MergeResult:
        folder = prepared.output.parent
        remove_stale_temp_files(folder)  # what a killed merge left behind
        if prepared.output.exists() and not prepared.request.overwrite:  # another merge saved it meanwhile
            raise InvalidRequest("output_name", f"{prepared.output.name} was saved by another job while this one "
                                                "waited; choose another name or tick overwrite")
        total = len(prepared.plan.keys)
        ctx.begin_image(0, 1, total, f"Merging into {prepared.output.name}")

        def on_key(done: int, total: int) -> None:
            ctx.safe_point()  # waiting generations run here first
            if ctx.interrupted:
                raise Cancelled(f"Merge cancelled; {prepared.output.name} was not written.")
            ctx.on_step(done, total)

        try:
            merge.write_merged(prepared.plan, prepared.output, prepared.metadata, on_key=on_key)
        finally:
            prepared.plan.release()
        _copy_config(prepared)
        listed = {info.path.resolve(): info for info in self._registry.refresh()}
        info = listed.get(prepared.output.resolve())
        if info is None:
            raise InvalidRequest("output_name", f"{prepared.output.name} was written but the checkpoint list "
                                                "skipped it; see the server log")
        log.info("Merged checkpoint saved to %s", prepared.output)
        return MergeResult(title=info.title, path=prepared.output, keys=total,
                           bytes=prepared.output.stat().st_size)


def _copy_config(prepared: PreparedMerge) -> None:
    """A1111's "Copy config from: A, B or C": the first input's ``<name>.yaml`` goes beside the result (an SD 2.x
    768-v model's yaml is what says it predicts velocity). A yaml left from a file this merge replaced goes."""
    target = prepared.output.with_suffix(".yaml")
    sources = [s.path.with_suffix(".yaml") for s in (prepared.plan.a, prepared.plan.b, prepared.plan.c) if s]
    found = next((p for p in sources if p.is_file()), None)
    try:
        if found is not None:
            atomic_write_bytes(target, found.read_bytes())
        elif prepared.request.overwrite and target.is_file():
            target.unlink()
    except OSError as exc:  # the checkpoint is saved; a missing config only loses what the yaml said
        log.warning("Could not copy the config %s to %s: %s", found, target, exc)


def _gib(n: int) -> str:
    return f"{n / 1024**3:.1f} GiB"


def _input_metadata(info: CheckpointInfo) -> dict[str, Any]:
    if info.path.suffix.lower() != SUFFIX:
        return {}
    try:
        return merge.TensorSource(info.path, "model").metadata
    except InvalidRequest:
        return {}


def _json_or_none(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return None


def _metadata(request: MergeRequest, plan: merge.MergePlan, a: CheckpointInfo, b: CheckpointInfo | None,
              c: CheckpointInfo | None) -> dict[str, str]:
    """A1111's header: the inputs' metadata copied, ``format: pt``, ``sd_merge_recipe`` and ``sd_merge_models``
    (each input's sha256 -> name, legacy hash and own recipe, plus the models it was merged from)."""
    inputs = [info for info in (a, b, c) if info is not None]
    metadata: dict[str, str] = {}
    sources = {info.path: _input_metadata(info) for info in inputs}
    for info in inputs:
        metadata.update({k: v for k, v in sources[info.path].items() if isinstance(v, str)})
    metadata["format"] = "pt"
    recipe = {
        "type": "webui",  # A1111's value: merged with the built-in merger
        "primary_model_hash": a.sha256,
        "secondary_model_hash": b.sha256 if b else None,
        "tertiary_model_hash": c.sha256 if c else None,
        "interp_method": request.method,
        "multiplier": request.multiplier,
        "save_as_half": request.save_as_half,
        "custom_name": request.output_name,
        "config_source": 0,
        "bake_in_vae": request.bake_vae,
        "discard_weights": request.discard_weights,
        "is_inpainting": plan.is_inpainting,
        "is_instruct_pix2pix": plan.is_instruct_pix2pix,
    }
    if request.loras:
        recipe["bake_loras"] = [[name, weight] for name, weight in request.loras]
    models: dict[str, Any] = {}
    for info in inputs:
        own = sources[info.path]
        models[info.sha256] = {"name": info.name, "legacy_hash": merge.legacy_hash(info.path),
                               "sd_merge_recipe": _json_or_none(own.get("sd_merge_recipe"))}
        earlier = _json_or_none(own.get("sd_merge_models"))
        if isinstance(earlier, dict):
            models.update(earlier)
    metadata["sd_merge_recipe"] = json.dumps(recipe)
    metadata["sd_merge_models"] = json.dumps(models)
    return metadata
