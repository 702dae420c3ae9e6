"""The training loop every method shares, run as a job on the shared queue.

It builds the method's trainer on the CPU, places it on the job's device through ``DeviceOwner.resident`` (and
evicts it at the end, whatever happens), then runs steps with a safe point before each (pause, resume and
generations that asked to run in between happen there), reports each step's figures, takes sample images and
resume states every N steps, and writes the artifact atomically at the end. Cancelling stops at the next step
boundary and keeps a resume state at the last completed step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
from PIL import Image

from webui.errors import Cancelled, InvalidRequest, OutOfMemory, StudioError
from webui.training import state_file
from webui.training.protocol import Artifact, Trainer, TrainingMethod, TrainingResources, TrainState

STEP_KEY = "studio_runner_step"      # the completed steps, stored in the resume state's values
METHOD_KEY = "studio_runner_method"


class RunContext(Protocol):
    """What the runner needs of its job (``webui.services.jobs.JobContext`` provides it)."""

    job_id: str
    device: Any  # DeviceOwner

    @property
    def interrupted(self) -> bool: ...
    def safe_point(self, *, inline: bool = True) -> None: ...
    def on_step(self, step: int, steps: int, preview: Any = None, **metrics: float) -> None: ...
    def show_preview(self, image: Image.Image) -> None: ...
    def report(self, text: str | None = None, **metrics: float) -> None: ...


class RunEvents(Protocol):
    """Where the runner tells its service what happened (history for the UI's plot, files written)."""

    def started(self, total_steps: int, steps_per_epoch: int, first_step: int) -> None: ...
    def stepped(self, step: int, figures: dict[str, float]) -> None: ...
    def sampled(self, step: int, images: list[Image.Image]) -> None: ...
    def state_saved(self, step: int, path: Path) -> None: ...
    def artifact_written(self, path: Path) -> None: ...


@dataclass(frozen=True)
class RunPlan:
    """One run: the method, its checked request, where its resume states go, and the runner's own settings
    (read from the request when it has them)."""

    method: TrainingMethod
    request: Any
    resources: TrainingResources
    state_dir: Path
    resume: TrainState | None = None

    def setting(self, name: str, default: Any) -> Any:
        return getattr(self.request, name, default)


@dataclass(frozen=True)
class RunResult:
    steps: int
    output: str | None        # the artifact's path
    state: str | None         # the last resume state's path


def write_artifact(artifact: Artifact) -> Path:
    """Write the artifact atomically into its folder (temp file, fsync, rename)."""
    state_file.write_tensors(artifact.path, artifact.tensors, dict(artifact.metadata))
    return artifact.path


def write_result(trainer: Trainer, events: RunEvents) -> Path:
    """Write every file of the result (a CycleGAN run has two generators: ``artifacts()``; other methods one:
    ``artifact()``), each atomically; returns the first."""
    many = getattr(trainer, "artifacts", None)
    paths = [write_artifact(a) for a in (many() if callable(many) else [trainer.artifact()])]
    for path in paths:
        events.artifact_written(path)
    return paths[0]


def run(ctx: RunContext, plan: RunPlan, events: RunEvents) -> RunResult:
    name = f"train:{ctx.job_id}"
    ctx.report("Loading the base model and the training images")
    trainer: Trainer | None = ctx.device.resident(name, lambda: plan.method.create(plan.request, plan.resources),
                                                  kind="training")
    progress = [0]
    failure: BaseException
    try:
        with ctx.device.pinned(name):
            return _loop(ctx, plan, events, trainer, progress)
    except torch.OutOfMemoryError:
        failure = OutOfMemory(f"out of memory at step {progress[0] + 1}: lower batch size or resolution, or enable "
                              "gradient checkpointing")
    except StudioError as exc:
        failure = exc.with_traceback(None)  # its frames hold the trainer: the job record must not keep them
    finally:
        trainer = None
        ctx.device.evict(name)  # frees the device memory whether the run ended, failed or was cancelled
    raise failure


def _loop(ctx: RunContext, plan: RunPlan, events: RunEvents, trainer: Trainer, progress: list[int]) -> RunResult:
    device = ctx.device.device
    trainer.on_device(device)
    first = 0
    if plan.resume is not None:
        saved_method = plan.resume.values.get(METHOD_KEY)
        if saved_method != plan.method.name:
            raise InvalidRequest("resume_from", f"the resume state is from a {saved_method} run, not "
                                                f"{plan.method.name}")
        trainer.load_state(plan.resume)
        first = int(plan.resume.values[STEP_KEY])
    total = trainer.total_steps
    if first > total:
        raise InvalidRequest("resume_from", f"the resume state is at step {first}, past this run's {total} steps")
    sample_every = int(plan.setting("sample_every", 0))
    save_every = int(plan.setting("save_every", 0))
    keep = int(plan.setting("keep_states", 2))
    inline = bool(plan.setting("allow_generation_between_steps", True))
    events.started(total, trainer.steps_per_epoch, first)
    last_state: Path | None = None

    def save_state(done: int) -> Path:
        state = trainer.state()
        state.values.update({STEP_KEY: done, METHOD_KEY: plan.method.name})
        path = state_file.save_step(plan.state_dir, done, state, keep)
        events.state_saved(done, path)
        return path

    def take_samples(done: int) -> None:
        images = trainer.samples()
        if images:
            events.sampled(done, images)
            ctx.show_preview(images[0])

    done = first
    ctx.report(f"Training from step {first}" if first else "Training")
    for step in range(first, total):
        ctx.safe_point(inline=inline)
        if ctx.interrupted:
            break
        progress[0] = step  # named in an out-of-memory message
        figures = {k: float(v) for k, v in trainer.step(step).items()}
        if not math.isfinite(figures.get("loss", 0.0)):
            raise InvalidRequest("learning_rate", f"the loss became {figures['loss']} at step {step + 1}: lower "
                                                  "the learning rate")
        done = step + 1
        figures.setdefault("epoch", float(step // max(1, trainer.steps_per_epoch) + 1))
        events.stepped(done, figures)
        ctx.on_step(done, total, **figures)
        if sample_every and done % sample_every == 0 and done < total:
            take_samples(done)
        if save_every and done % save_every == 0 and done < total:
            last_state = save_state(done)
    if done < total:  # cancelled: keep where it got to, so the run can be resumed
        if done > first or last_state is None:
            last_state = save_state(done)
        output = None
        if plan.setting("save_on_cancel", False) and done > 0:
            output = write_result(trainer, events)
        kept = f" {output.name} was saved as it stood." if output else ""
        raise Cancelled(f"Training cancelled at step {done} of {total}; resume state kept.{kept}")
    last_state = save_state(done)
    take_samples(done)
    ctx.report("Writing the result")
    output = write_result(trainer, events)
    ctx.report(f"Wrote {output.name}")
    return RunResult(steps=done, output=str(output), state=str(last_state))


Runner = Callable[[RunContext, RunPlan, RunEvents], RunResult]
